"""The web UI as a child process of the daemon: `python -m webui` (waitress, a production WSGI server) on
the LAN address only, never a WAN port, answering only to that address and router.lan.

It runs unprivileged, as the user quicether-web: the daemon (root) binds its listening socket (port 80 on
the LAN address) and passes it as an inherited descriptor, prepares its state directory
(<state_dir>/webui, see quicether.setup_code) and answers its API requests (the config file stays root's).
It dies with the daemon (PR_SET_PDEATHSIG, armed after the change of user, so the kernel keeps it) and is
restarted with it on a config reload that moves it.

A router is never left without its UI: where the user does not exist, or cannot reach the interpreter, the
code or the state directory (a directory on the way closed to it), or the UI exits at once as that user, the
daemon logs an error saying so and runs it as root, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import ipaddress
import logging
import os
import signal
import socket
import stat
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

from quicether import setup_code
from quicether.daemon.children import die_with_parent, terminate
from quicether.daemon.dnsmasq import LOCAL_DOMAIN

log = logging.getLogger("quicether")
# Importing Flask takes about a second on a Raspberry Pi class CPU.
STARTUP_TIMEOUT_S = 10.0


def _healthy(host: str, port: int) -> bool:
    """Whether the UI answers HTTP (the socket accepts connections from the moment the daemon binds it)."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5) as conn:
        conn.sendall(f"GET /healthz HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        return conn.recv(16).startswith(b"HTTP/1.")
    return False


def listening_socket(host: str, port: int) -> socket.socket:
    """The UI's socket, bound by root (port 80 needs it) and listening."""
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock


def closed_to(paths: list[Path], uid: int, gid: int) -> Path | None:
    """The first directory on the way to one of `paths` that the user cannot pass (no x for it), or None."""
    for path in paths:
        for directory in [*reversed(path.resolve().parents), path.resolve()]:
            try:
                info = os.stat(directory)
            except OSError:
                return directory
            if not stat.S_ISDIR(info.st_mode):
                continue
            mode = info.st_mode
            if info.st_uid == uid:
                ok = bool(mode & stat.S_IXUSR)
            elif info.st_gid == gid:
                ok = bool(mode & stat.S_IXGRP)
            else:
                ok = bool(mode & stat.S_IXOTH)
            if not ok:
                return directory
    return None


def _code_paths() -> list[Path]:
    """What the UI's interpreter must reach: itself, the standard library, and the webui and quicether code."""
    paths = [Path(sys.executable).parent, Path(sysconfig.get_paths()["stdlib"])]
    for name in ("webui", "quicether", "flask", "waitress"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            paths.append(Path(spec.origin).parent)
    return paths


def ui_user(state_dir: Path) -> tuple[int, int] | None:
    """(uid, gid) to run the UI as, or None (root) with the reason logged as an error."""
    ids = setup_code.ui_ids()
    if os.geteuid() != 0:
        return None  # the daemon is not root (a test): the UI runs as the daemon's user
    if ids is None:
        log.error("web UI: the user %s does not exist; running the web UI as root (create it: useradd --system "
                  "--no-create-home --shell /usr/sbin/nologin %s)", setup_code.UI_USER, setup_code.UI_USER)
        return None
    closed = closed_to([*_code_paths(), setup_code.ui_dir(state_dir)], *ids)
    if closed is not None:
        log.error("web UI: %s is closed to the user %s (the interpreter, its code or the state directory is "
                  "behind it); running the web UI as root", closed, setup_code.UI_USER)
        return None
    return ids


class WebUiServer:
    def __init__(self, config_path: Path, state_dir: Path, host: str, port: int) -> None:
        # The UI answers only to its own names (DNS rebinding): the address and the name dnsmasq gives it.
        self.args = [sys.executable, "-m", "webui", "--config", str(config_path), "--state-dir", str(state_dir),
                     "--bind", f"{host}:{port}", "--host-name", f"router.{LOCAL_DOMAIN}"]
        self.state_dir = state_dir
        self.host, self.port = host, port
        self._proc: asyncio.subprocess.Process | None = None
        self.user: str = "root"

    async def _spawn(self, ids: tuple[int, int] | None) -> None:
        sock = await asyncio.to_thread(listening_socket, self.host, self.port)
        fd = sock.fileno()
        as_user: dict[str, Any] = {"user": ids[0], "group": ids[1], "extra_groups": []} if ids else {}
        try:
            # user/group are set in the child before preexec_fn runs: the parent-death signal survives them.
            self._proc = await asyncio.create_subprocess_exec(
                *self.args, "--listen-fd", str(fd), stdin=asyncio.subprocess.DEVNULL, pass_fds=(fd,), cwd="/",
                preexec_fn=die_with_parent(signal.SIGTERM), **as_user)
        finally:
            sock.close()  # the UI has its copy; a restart binds anew
        self.user = setup_code.UI_USER if ids else "root"

    async def start(self) -> None:
        await asyncio.to_thread(setup_code.prepare_ui_dir, self.state_dir)
        # A password set while the daemon was down (or a lost request): its code's copies go now.
        await asyncio.to_thread(setup_code.remove_copies_if_set_up, self.state_dir)
        ids = await asyncio.to_thread(ui_user, self.state_dir)
        try:
            await self._spawn(ids)
        except PermissionError as exc:  # changing the user refused (the daemon lacks CAP_SETUID/CAP_SETGID)
            if ids is None:
                raise
            log.error("web UI: cannot start it as %s (%s); running it as root", setup_code.UI_USER, exc)
            await self._spawn(None)
            await self._wait()
            return
        if await self._wait() or ids is None:
            return
        log.error("web UI exited at start as %s; running it as root", setup_code.UI_USER)
        await self._spawn(None)
        await self._wait()

    async def _wait(self) -> bool:
        """Waits for the UI to answer; False if it exited first (logged)."""
        assert self._proc is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.returncode is not None:
                log.error("web UI exited %d at start; the router keeps running without it", self._proc.returncode)
                return False
            if await asyncio.to_thread(_healthy, self.host, self.port):
                log.info("web UI on http://%s:%d/ (as %s)", self.host, self.port, self.user)
                return True
            await asyncio.sleep(0.1)
        log.error("web UI did not answer on %s:%d within %.0f s", self.host, self.port, STARTUP_TIMEOUT_S)
        return True

    async def stop(self) -> None:
        await terminate(self._proc)
