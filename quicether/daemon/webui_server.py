"""The web UI as a child process of the daemon: `python -m webui` (waitress, a production WSGI server)
bound to the LAN address only, never a WAN port, and answering only to that address and router.lan. It
dies with the daemon (PR_SET_PDEATHSIG: it keeps its user, so the signal stays armed) and is restarted with
it on a config reload, when the LAN address may have changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time
from pathlib import Path

from quicether.daemon.children import die_with_parent, terminate
from quicether.daemon.dnsmasq import LOCAL_DOMAIN

log = logging.getLogger("quicether")
# Importing Flask and binding takes about a second on a Raspberry Pi class CPU.
STARTUP_TIMEOUT_S = 10.0


def _listening(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


class WebUiServer:
    def __init__(self, config_path: Path, state_dir: Path, host: str, port: int) -> None:
        # The UI answers only to its own names (DNS rebinding): the address and the name dnsmasq gives it.
        self.args = [sys.executable, "-m", "webui", "--config", str(config_path), "--state-dir", str(state_dir),
                     "--bind", f"{host}:{port}", "--host-name", f"router.{LOCAL_DOMAIN}"]
        self.host, self.port = host, port
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(*self.args, stdin=asyncio.subprocess.DEVNULL,
                                                          preexec_fn=die_with_parent(signal.SIGTERM))
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.returncode is not None:
                log.error("web UI exited %d at start; the router keeps running without it", self._proc.returncode)
                return
            if await asyncio.to_thread(_listening, self.host, self.port):
                log.info("web UI on http://%s:%d/", self.host, self.port)
                return
            await asyncio.sleep(0.1)
        log.error("web UI did not answer on %s:%d within %.0f s", self.host, self.port, STARTUP_TIMEOUT_S)

    async def stop(self) -> None:
        await terminate(self._proc)
