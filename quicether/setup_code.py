"""The one-time setup code that guards the web UI's first admin password.

Without it, whoever reaches the LAN address first (or a web page a LAN user visits, by DNS rebinding) would
choose the password. The code is made at first boot (by the appliance's firstboot, or by the web UI when it
starts with no password and no code) and kept 0600 in the state directory. It is shown only where the owner
can look and the network cannot: copies written on request (the appliance puts one on its FAT/EFI partition,
readable from the computer that flashed the card, and one in the console's login banner) and
`quicether setup-code` over SSH. The web UI never shows it; the wizard asks for it, compares it in constant
time and deletes it, with every copy, once the password is set.

The state file records where its copies are, so whoever consumes the code removes them too:

    {"code": "K7QD-M2XA-PN4R", "copies": ["/boot/efi/quicether-setup-code.txt"]}
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import secrets
import tempfile
from pathlib import Path

from quicether import atomic

CODE_FILE = "webui-setup-code.json"
# The web UI's password record (webui/auth.py writes it): once it exists, no setup code is needed.
ADMIN_PASSWORD_FILE = "webui-admin.json"
# 32 symbols without the look-alikes 0/O and 1/I: 12 of them are 60 bits, read off a console and typed.
ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
CODE_SYMBOLS = 12
GROUP = 4


def _code_path(state_dir: Path) -> Path:
    return state_dir / CODE_FILE


def is_set_up(state_dir: Path) -> bool:
    """Whether the admin password exists (and the setup code is no longer needed)."""
    return (state_dir / ADMIN_PASSWORD_FILE).exists()


def new_code() -> str:
    symbols = "".join(secrets.choice(ALPHABET) for _ in range(CODE_SYMBOLS))
    return "-".join(symbols[i:i + GROUP] for i in range(0, CODE_SYMBOLS, GROUP))


def normalise(text: str) -> str:
    """What the user typed, as the stored code is spelled: case, spaces and dashes do not matter."""
    return "".join(c for c in text.upper() if c not in " -\t")


def copy_text(code: str) -> str:
    return (f"QuicEther setup code: {code}\n"
            "Enter it in the router's web UI (http://192.168.50.1/ unless you changed the LAN address)\n"
            "together with the admin password you choose. It works once: this file is deleted then.\n")


def _create_private(path: Path, text: str) -> bool:
    """Creates `path` (0600) with `text`, atomically and only if it does not exist yet (False then): the
    firstboot and the web UI may race to make the first code."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(tmp)


def _read_record(state_dir: Path) -> dict[str, object] | None:
    try:
        record = json.loads(_code_path(state_dir).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("code"), str) else None


def read(state_dir: Path) -> str | None:
    """The current setup code, or None if there is none."""
    record = _read_record(state_dir)
    return str(record["code"]) if record else None


def _copies(record: dict[str, object]) -> list[str]:
    copies = record.get("copies", [])
    return [str(c) for c in copies] if isinstance(copies, list) else []


def ensure(state_dir: Path, copies: tuple[Path, ...] = ()) -> str | None:
    """The setup code, made now if there is none, with a copy written at each of `copies` (recorded, so
    `consume` removes them). None once the admin password is set: leftovers are removed then."""
    if is_set_up(state_dir):
        consume(state_dir)
        return None
    record = _read_record(state_dir)
    if record is None:
        record = {"code": new_code(), "copies": []}
        if not _create_private(_code_path(state_dir), json.dumps(record)):
            record = _read_record(state_dir) or record  # another process made one first: use that one
    code = str(record["code"])
    known = _copies(record)
    for copy in copies:
        # Rewritten every time: /run is empty after a reboot, and a FAT copy may have been deleted by hand.
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(copy_text(code))
        if str(copy) not in known:
            known.append(str(copy))
    if known != _copies(record):
        atomic.write_private(_code_path(state_dir), json.dumps({"code": code, "copies": known}))
    return code


def matches(state_dir: Path, given: str) -> bool:
    """Whether `given` is the setup code (compared in constant time; False if there is no code)."""
    code = read(state_dir)
    if code is None:
        return False
    return hmac.compare_digest(normalise(given).encode(), normalise(code).encode())


def consume(state_dir: Path) -> None:
    """Deletes the setup code and every copy of it (the password is set: it must never work again)."""
    record = _read_record(state_dir)
    for copy in _copies(record) if record else []:
        with contextlib.suppress(OSError):
            os.unlink(copy)
    with contextlib.suppress(FileNotFoundError):
        _code_path(state_dir).unlink()
