"""State and config files are replaced whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quicether.atomic import write_private


def test_a_write_replaces_the_file_privately(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("old")
    write_private(path, "new")
    assert path.read_text() == "new" and oct(path.stat().st_mode & 0o777) == "0o600"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                   ) -> None:
    path = tmp_path / "quicether.toml"
    path.write_text("[node]\n")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_private(path, "[node]\nlisten = 1\n")
    assert path.read_text() == "[node]\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["quicether.toml"]


def test_a_temporary_left_by_a_crash_does_not_give_its_mode_to_the_new_file(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    leftover = tmp_path / ".node.key.tmp"
    leftover.write_text("half")
    leftover.chmod(0o666)
    write_private(path, "whole")
    assert path.read_text() == "whole" and oct(path.stat().st_mode & 0o777) == "0o600" and not leftover.exists()
