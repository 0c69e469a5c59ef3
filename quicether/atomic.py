"""Writing a state or config file so that a crash, a power cut or a full disk leaves either the old file or
the new one, never half of one: write a temporary file next to it (private from the first byte), fsync it,
rename it over the old one, fsync the directory so the rename itself survives a power cut."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_private(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    """Replaces `path` with `data` atomically and durably; the file is created with `mode` (0600: only
    its owner reads it). On any error (OSError: disk full, read-only directory) `path` is unchanged and
    the temporary file is gone."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.tmp")
    # A temporary left by a crash goes first: O_EXCL then creates ours with `mode` (an old file would keep
    # its own mode), and O_NOFOLLOW never writes through a link someone put there.
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
