"""The local JSON API on a unix socket (mode 0600: only root talks to the daemon).

One request per connection: a JSON object with "cmd" on one line; the answer is one JSON line.
    {"cmd": "status"} → {"ok": true, "node": {...}, "peers": [...], "router": {...}}
    {"cmd": "events"} → {"ok": true, "events": [{"time", "level", "message"}, ...]}  (the recent log)
    {"cmd": "reload"} → the config file is re-read and what changed is applied, then
                        {"ok": true, "reloading": false, "changes": ["peer x added", …]};
                        {"ok": true, "reloading": true, "restart": [fields]} if a setting of the node itself
                        changed (listen, tun, address…): the daemon restarts its services just after answering;
                        {"ok": false, "error": "<file>: <field>: ..."} if the file is not valid (nothing changes)
Unknown commands answer {"ok": false, "error": "..."}.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

Handler = Callable[[], dict[str, Any] | Awaitable[dict[str, Any]]]
REQUEST_TIMEOUT_S = 5.0
# A reload waits for what it changes (a web UI or dnsmasq restart takes seconds on a small board).
COMMAND_TIMEOUTS_S = {"reload": 30.0}


class ApiServer:
    def __init__(self, path: Path, handlers: dict[str, Handler]) -> None:
        self.path = path
        self.handlers = handlers
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.path.exists():
            # A socket left by a crashed daemon: refuse if a live daemon still answers on it.
            if _answers(self.path):
                raise OSError(f"another daemon is running (its API answers on {self.path})")
            self.path.unlink()
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT_S)
            try:
                request = json.loads(line)
                handler = self.handlers.get(request.get("cmd", "")) if isinstance(request, dict) else None
                if handler is None:
                    answer: dict[str, Any] = {"ok": False, "error": f"unknown command; known: {sorted(self.handlers)}"}
                else:
                    result = handler()
                    answer = {"ok": True, **(await result if inspect.isawaitable(result) else result)}
            except json.JSONDecodeError:
                answer = {"ok": False, "error": "request is not JSON"}
            except ValueError as exc:  # a handler refusing the request (e.g. reload with a bad config)
                answer = {"ok": False, "error": str(exc)}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def request(path: Path, cmd: str, timeout: float | None = None) -> dict[str, Any]:
    """Client side: sends one command, returns the answer. Raises OSError if no daemon answers."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout or COMMAND_TIMEOUTS_S.get(cmd, REQUEST_TIMEOUT_S))
        s.connect(str(path))
        s.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    answer: dict[str, Any] = json.loads(data)
    return answer
