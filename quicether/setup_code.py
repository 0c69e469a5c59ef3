"""The one-time setup code that guards the web UI's first admin password, and the web UI's own state.

Without the code, whoever reaches the LAN address first (or a web page a LAN user visits, by DNS rebinding)
would choose the password. The code is made at first boot (by the appliance's firstboot, or by the web UI
when it starts with no password and no code). It is shown only where the owner can look and the network
cannot: copies written on request (the appliance puts one on its FAT/EFI partition, readable from the
computer that flashed the card, and one in the console's login banner) and `quicether setup-code` over SSH.
The web UI never shows it; the wizard asks for it, compares it in constant time and deletes it once the
password is set; the copies (root's) are deleted by root: the daemon, when the UI tells it the password is
set and whenever it starts the UI, or the next `quicether setup-code` (firstboot runs it on every boot).

The web UI runs as the unprivileged user quicether-web. Its state (admin password record, sessions, the
setup code) lives in <state_dir>/webui/, owned by that user, mode 0700; the daemon prepares it
(`prepare_ui_dir`: made, given to the user, files from the old places in <state_dir> moved in). Root never
trusts that directory's contents: the list of copies is kept apart, root's (setup-code-copies.json in
<state_dir>), so a compromised UI cannot name files for root to delete, and root writes, reads or chowns
there only through new files or descriptors opened without following links.

    <state_dir>/webui/webui-setup-code.json   {"code": "K7QD-M2XA-PN4R"}             (the UI's, 0600)
    <state_dir>/setup-code-copies.json        ["/boot/efi/quicether-setup-code.txt"]  (root's, 0600)
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import pwd
import secrets
import stat
import tempfile
from pathlib import Path

from quicether import atomic

log = logging.getLogger("quicether")

UI_DIR = "webui"
UI_USER = "quicether-web"
CODE_FILE = "webui-setup-code.json"
# The web UI's password record (webui/auth.py writes it): once it exists, no setup code is needed.
ADMIN_PASSWORD_FILE = "webui-admin.json"
SESSIONS_FILE = "webui-sessions.json"
COPIES_FILE = "setup-code-copies.json"
# 32 symbols without the look-alikes 0/O and 1/I: 12 of them are 60 bits, read off a console and typed.
ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
CODE_SYMBOLS = 12
GROUP = 4


def ui_dir(state_dir: Path) -> Path:
    """The web UI's own state directory."""
    return state_dir / UI_DIR


def ui_ids() -> tuple[int, int] | None:
    """(uid, gid) of the web UI's user, or None where it does not exist."""
    try:
        user = pwd.getpwnam(UI_USER)
    except KeyError:
        return None
    return user.pw_uid, user.pw_gid


def _give(fd: int, ids: tuple[int, int] | None) -> None:
    """Hands a file root opened to the UI's user (nothing unless root and the user exists)."""
    if ids is not None and os.geteuid() == 0:
        os.fchown(fd, *ids)


def prepare_ui_dir(state_dir: Path) -> Path:
    """Root, before the UI starts (and `quicether setup-code`): <state_dir>/webui made (0700) and given to
    the UI's user with every file in it, the old files moved in from <state_dir>, and <state_dir> made
    traversable for the user's group (nothing else in it becomes readable). Without the user, root's."""
    ids = ui_ids() if os.geteuid() == 0 else None
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    directory = ui_dir(state_dir)
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=0o700)
    if ids is not None:
        mode = stat.S_IMODE(os.stat(state_dir).st_mode)
        if not mode & 0o001:  # others cannot pass: let the UI's group pass (x only)
            os.chown(state_dir, -1, ids[1])
            os.chmod(state_dir, (mode & 0o7707) | 0o010)
        os.chown(directory, *ids)  # the entry is in root's state_dir: nobody can swap it
    os.chmod(directory, 0o700)
    for name in (ADMIN_PASSWORD_FILE, SESSIONS_FILE, CODE_FILE):
        old = state_dir / name
        if not old.is_file() or old.is_symlink():
            continue
        if name == CODE_FILE:
            _move_copies(old, state_dir)
        if (directory / name).exists():
            old.unlink()  # the new place wins
        else:
            os.replace(old, directory / name)
    if ids is not None:
        for entry in os.scandir(directory):
            _give_entry(Path(entry.path), ids)
    return directory


def _give_entry(path: Path, ids: tuple[int, int]) -> None:
    """Root gives a regular file in the UI's directory to the UI's user, through a descriptor opened
    without following links; a file with other names (a hard link to something else) is left alone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return
    try:
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and info.st_nlink == 1 and (info.st_uid, info.st_gid) != ids:
            os.fchown(fd, *ids)
    finally:
        os.close(fd)


def _read_nofollow(path: Path) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd) as file:
        try:
            return file.read(64 * 1024)
        except (OSError, UnicodeDecodeError):
            return None


def _move_copies(old_record: Path, state_dir: Path) -> None:
    """A code record from before the move listed its copies: they go to root's list."""
    try:
        record = json.loads(_read_nofollow(old_record) or "")
    except ValueError:
        return
    copies = record.get("copies") if isinstance(record, dict) else None
    if isinstance(copies, list) and copies:
        _write_copies(state_dir, sorted({*_read_copies(state_dir), *(str(c) for c in copies)}))


def _code_path(state_dir: Path) -> Path:
    return ui_dir(state_dir) / CODE_FILE


def _copies_path(state_dir: Path) -> Path:
    return state_dir / COPIES_FILE


def _read_copies(state_dir: Path) -> list[str]:
    try:
        copies = json.loads(_copies_path(state_dir).read_text())
    except (OSError, ValueError):  # the UI's user cannot read it: root's
        return []
    return [str(c) for c in copies] if isinstance(copies, list) else []


def _write_copies(state_dir: Path, copies: list[str]) -> None:
    atomic.write_private(_copies_path(state_dir), json.dumps(copies))


def is_set_up(state_dir: Path) -> bool:
    """Whether the admin password exists (and the setup code is no longer needed)."""
    return (ui_dir(state_dir) / ADMIN_PASSWORD_FILE).exists()


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
    """Creates `path` (0600, the UI user's) with `text`, atomically and only if it does not exist yet (False
    then): the firstboot and the web UI may race to make the first code. A new file under a random name
    (never one that exists, never through a link), then linked to its name: safe for root in the UI's
    directory."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600, O_EXCL
    try:
        _give(fd, ui_ids())
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
        record = json.loads(_read_nofollow(_code_path(state_dir)) or "")
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("code"), str) else None


def read(state_dir: Path) -> str | None:
    """The current setup code, or None if there is none."""
    record = _read_record(state_dir)
    return str(record["code"]) if record else None


def ensure(state_dir: Path, copies: tuple[Path, ...] = ()) -> str | None:
    """The setup code, made now if there is none, with a copy written at each of `copies` (root's list
    records them, so `remove_copies` deletes them). None once the admin password is set: leftovers are
    removed then. As root it prepares the UI's directory first (`prepare_ui_dir`)."""
    if os.geteuid() == 0:
        prepare_ui_dir(state_dir)
    else:  # the UI itself, run without the daemon (by hand): its directory is its own
        ui_dir(state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    if is_set_up(state_dir):
        consume(state_dir)
        return None
    record = _read_record(state_dir)
    path = _code_path(state_dir)
    if record is None and os.path.lexists(path):
        # Damaged (cut short, garbled): no code could ever match it, and the wizard would be locked for
        # good. A code is no identity, only a one-time secret for this directory's owner: make a new one.
        log.warning("the setup code in %s is damaged: replaced by a new one (`quicether setup-code` prints it)",
                    path)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    if record is None:
        record = {"code": new_code()}
        if not _create_private(path, json.dumps(record)):
            record = _read_record(state_dir) or record  # another process made one first: use that one
    code = str(record["code"])
    if copies:
        known = _read_copies(state_dir)
        for copy in copies:
            # Rewritten every time: /run is empty after a reboot, and a FAT copy may have been deleted by hand.
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_text(copy_text(code))
            if str(copy) not in known:
                known.append(str(copy))
        _write_copies(state_dir, known)
    return code


def matches(state_dir: Path, given: str) -> bool:
    """Whether `given` is the setup code (compared in constant time; False if there is no code)."""
    code = read(state_dir)
    if code is None:
        return False
    return hmac.compare_digest(normalise(given).encode(), normalise(code).encode())


def remove_copies(state_dir: Path) -> list[str]:
    """Root: deletes the copies of the code (root's list says where) and the list; returns what it deleted.
    The UI's user cannot read the list: nothing happens then (the daemon does it, see the module's doc)."""
    removed = []
    for copy in _read_copies(state_dir):
        with contextlib.suppress(OSError):
            os.unlink(copy)
            removed.append(copy)
    with contextlib.suppress(OSError):
        _copies_path(state_dir).unlink()
    return removed


def remove_copies_if_set_up(state_dir: Path) -> list[str]:
    """Root, when the UI says the password is set (and when it starts the UI): the copies go once the
    password record exists; before that, nothing."""
    return remove_copies(state_dir) if is_set_up(state_dir) else []


def consume(state_dir: Path) -> None:
    """Deletes the setup code and (as root) every copy of it: the password is set, it must never work again."""
    remove_copies(state_dir)
    with contextlib.suppress(FileNotFoundError):
        _code_path(state_dir).unlink()
