"""The local JSON API on a unix socket: root and the web UI's user (quicether-web) talk to the daemon.

One request per connection: a JSON object with "cmd" (and the command's arguments) on one line, at most
MAX_REQUEST_BYTES; the answer is one JSON line.
    {"cmd": "status"} → {"ok": true, "node": {"node_id", ...}, "peers": [...], "router": {...}}
    {"cmd": "events"} → {"ok": true, "events": [{"time", "level", "message"}, ...]}  (the recent log)
    {"cmd": "reload"} → the config file is re-read and what changed is applied, then
                        {"ok": true, "reloading": false, "changes": ["peer x added", …]};
                        {"ok": true, "reloading": true, "restart": [fields]} if a setting of the node itself
                        changed (listen, tun, address…): the daemon restarts its services just after answering;
                        {"ok": false, "error": "<file>: <field>: ..."} if the file is not valid (nothing changes)
    {"cmd": "config"} → {"ok": true, "text": "<the config file>", "path": "<where it is>"}
    {"cmd": "apply_config", "text": "<TOML>"} → the text is checked like the file (a bad one changes nothing:
                        {"ok": false, "error": "<file>: <field>: ..."}), written in place of the config file and
                        applied as "reload" does, with its answer; a file that cannot be written (disk full,
                        read-only) answers {"ok": false, "saved": false, "error": "..."} and nothing changes
Unknown commands answer {"ok": false, "error": "..."}.

Limits: a request must arrive within REQUEST_TIMEOUT_S of connecting; at most MAX_WAITING connections wait
for theirs, and one more closes the oldest of them (counted: `api_evicted_waiting`), so connections that
say nothing or half a request cannot lock the API out (a real client sends its request as it connects);
at most MAX_CONNECTIONS requests are answered at once, more are answered "busy" (`api_refused_busy`).

Who may ask: the socket is 0660 with the group quicether-web (0600 where that group does not exist), and
every connection's peer credentials (SO_PEERCRED) are checked as well: only uid 0, the daemon's own uid and
the quicether-web user are answered; anyone else gets {"ok": false, "error": "refused: ..."}.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import inspect
import json
import logging
import os
import pwd
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

Answer = dict[str, Any] | Awaitable[dict[str, Any]]
# A handler takes no argument, or the request (the JSON object, "cmd" included).
Handler = Callable[[], Answer] | Callable[[dict[str, Any]], Answer]
log = logging.getLogger("quicether")


class Refused(ValueError):
    """A handler refusing a request, with more fields for the answer than the error (e.g. "saved": false)."""

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.fields = fields


REQUEST_TIMEOUT_S = 5.0
# A reload waits for what it changes (a web UI or dnsmasq restart takes seconds on a small board).
COMMAND_TIMEOUTS_S = {"reload": 30.0, "apply_config": 30.0}
# A request line (a config file as JSON text is the largest; quicether.config files are a few KiB).
MAX_REQUEST_BYTES = 1024 * 1024
# Requests answered at once (a reload takes seconds): more are answered "busy" and closed at once, counted.
MAX_CONNECTIONS = 32
# Connections whose request has not fully arrived (each may hold up to MAX_REQUEST_BYTES while it is read):
# a new one closes the oldest, counted. Oldest first, since a real client sends its request as it connects:
# those that waited longest are the ones that say nothing (refusing the newest instead let 32 idle
# connections answer every status "busy" until they timed out).
MAX_WAITING = 32
# How much of a waiting connection's unread bytes are looked at for a whole request (a status, events or
# reload request is a few dozen bytes; a larger one that has not been read yet may be closed for a newer).
PEEK_BYTES = 4096
# A client's pause before it tries again (the daemon's listen queue was full, or it closed the connection
# before reading the request).
RETRY_PAUSE_S = 0.01
# The largest config apply_config takes (the web UI's uploads are smaller still).
MAX_CONFIG_BYTES = 256 * 1024
# The unprivileged user the daemon runs the web UI as (also the API socket's group).
WEBUI_USER = "quicether-web"
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def webui_ids() -> tuple[int, int] | None:
    """(uid, gid) of the web UI's user, or None where it does not exist."""
    try:
        user = pwd.getpwnam(WEBUI_USER)
    except KeyError:
        return None
    return user.pw_uid, user.pw_gid


def _group_id() -> int | None:
    try:
        return grp.getgrnam(WEBUI_USER).gr_gid
    except KeyError:
        return None


def _takes_request(handler: Handler) -> bool:
    try:
        return bool(inspect.signature(handler).parameters)
    except (TypeError, ValueError):
        return False


class ApiServer:
    def __init__(self, path: Path, handlers: dict[str, Handler], allowed_uids: frozenset[int] | None = None) -> None:
        self.path = path
        self.handlers = handlers
        self._with_request = {name for name, h in handlers.items() if _takes_request(h)}
        ui = webui_ids()
        self.allowed_uids = allowed_uids if allowed_uids is not None else frozenset(
            {0, os.geteuid(), *([ui[0]] if ui else [])})
        self._server: asyncio.AbstractServer | None = None
        self.open_connections = 0  # requests being answered
        self.refused_busy = 0  # connections answered "busy" (MAX_CONNECTIONS requests were being answered)
        # Connections whose request is being read, oldest first (a dict keeps insertion order).
        self._waiting: dict[asyncio.StreamWriter, None] = {}
        self.evicted_waiting = 0  # connections closed for a newer one (MAX_WAITING were waiting)

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.path.exists():
            # A socket left by a crashed daemon: refuse if a live daemon still answers on it.
            if _answers(self.path):
                raise OSError(f"another daemon is running (its API answers on {self.path})")
            self.path.unlink()
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path),
                                                           limit=MAX_REQUEST_BYTES)
        except OSError as exc:  # bind's error names no file: a read-only or missing state directory
            raise OSError(exc.errno, f"cannot create the API socket {self.path}: {exc.strerror or exc}") from None
        finally:
            os.umask(old_umask)
        gid = _group_id()
        if gid is not None:  # the web UI's user reaches the socket through its group
            os.chown(self.path, -1, gid)
            os.chmod(self.path, 0o660)
        else:
            os.chmod(self.path, 0o600)

    def _refusal(self, writer: asyncio.StreamWriter) -> str | None:
        """Why this connection's peer may not use the API, or None if it may."""
        sock = writer.get_extra_info("socket")
        try:
            _pid, uid, _gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
        except (OSError, AttributeError, struct.error):
            return "refused: the peer's credentials are unknown"
        if uid in self.allowed_uids:
            return None
        return f"refused: uid {uid} may not use the QuicEther API (only root and {WEBUI_USER})"

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {"ok": False, "error": "request is not JSON"}
        cmd = request.get("cmd", "") if isinstance(request, dict) else None
        handler = self.handlers.get(cmd) if isinstance(cmd, str) else None
        if handler is None:
            return {"ok": False, "error": f"unknown command; known: {sorted(self.handlers)}"}
        try:
            result = handler(request) if cmd in self._with_request else handler()  # type: ignore[call-arg]
            return {"ok": True, **(await result if inspect.isawaitable(result) else result)}
        except ValueError as exc:  # a handler refusing the request (e.g. reload with a bad config)
            return {"ok": False, "error": str(exc), **(exc.fields if isinstance(exc, Refused) else {})}
        except Exception as exc:  # noqa: BLE001 - a failing handler still answers (and is logged)
            log.exception("API command %s failed", cmd)
            return {"ok": False, "error": f"{cmd} failed: {exc}"}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.open_connections >= MAX_CONNECTIONS:
            self.refused_busy += 1
            with contextlib.suppress(ConnectionError):
                writer.write(json.dumps({"ok": False, "error": f"busy: {MAX_CONNECTIONS} requests in progress"
                                         }).encode() + b"\n")
            writer.close()
            return
        # The request is read (bounded in size, time and in connections doing so) before anything else, so a
        # refused client gets its answer rather than a broken pipe.
        line = await self._read_request(reader, writer)
        if writer.transport.is_closing():  # evicted for a newer connection, timed out, or gone
            writer.close()
            return
        self.open_connections += 1
        try:
            refusal = self._refusal(writer)
            if refusal is not None:
                answer: dict[str, Any] = {"ok": False, "error": refusal}
            elif line is None:
                answer = {"ok": False, "error": f"request too large (at most {MAX_REQUEST_BYTES} bytes)"}
            else:
                answer = await self._answer(line)
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.open_connections -= 1
            writer.close()

    async def _read_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes | None:
        """The request line; None if it is larger than MAX_REQUEST_BYTES. The connection is closed if no line
        came within REQUEST_TIMEOUT_S, or if MAX_WAITING newer connections came while it waited."""
        if not self._make_room():
            self.refused_busy += 1
            writer.transport.abort()
            return b""
        self._waiting[writer] = None
        try:
            return await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT_S)
        except ValueError:  # no newline within the limit
            return None
        except (TimeoutError, ConnectionError):
            writer.transport.abort()
            return b""
        finally:
            self._waiting.pop(writer, None)

    def _make_room(self) -> bool:
        """Closes the oldest waiting connection whose request has not arrived if MAX_WAITING wait; False if
        every one of them has its request in hand (read by the next turns of the loop, and answered)."""
        if len(self._waiting) < MAX_WAITING:
            return True
        for waiting in self._waiting:
            # A connection's request can be in its socket, not yet read: connections are accepted by the
            # hundred in one turn of the loop and read in a later one. Closing it would reset a client
            # that did send its request (seen in the lab: `quicether status` reset under a flood).
            if not _request_arrived(waiting):
                del self._waiting[waiting]
                waiting.transport.abort()  # its readline ends (EOF); its _serve sees it closing
                self.evicted_waiting += 1
                return True
        return False

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:  # a state directory gone read-only: the next start replaces the stale socket
            log.warning("cannot remove the API socket %s: %s", self.path, exc.strerror or exc)


def _request_arrived(writer: asyncio.StreamWriter) -> bool:
    """Whether a whole request line (of a command without arguments, e.g. status) waits unread in the
    connection's socket. A peek: the bytes stay for the connection's StreamReader."""
    fd = writer.get_extra_info("socket").fileno()
    if fd < 0:
        return False
    # A socket object over the transport's descriptor, detached before it could close it.
    peek = socket.socket(fileno=fd)
    try:
        return b"\n" in peek.recv(PEEK_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except OSError:  # nothing to read (BlockingIOError), or the connection is gone
        return False
    finally:
        peek.detach()


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def request(path: Path, cmd: str, timeout: float | None = None, **args: Any) -> dict[str, Any]:
    """Client side: sends one command with its arguments, returns the answer. Raises OSError if no daemon
    answers, ValueError if the answer is not JSON.

    Under a flood of connections the daemon's listen queue can be full (connect fails at once with EAGAIN)
    or the daemon can close a connection before reading its request (MAX_WAITING newer ones came first):
    either is tried again until the timeout. A connection closed without an answer was never acted on: the
    daemon answers every request it reads."""
    deadline = time.monotonic() + (timeout or COMMAND_TIMEOUTS_S.get(cmd, REQUEST_TIMEOUT_S))
    message = json.dumps({**args, "cmd": cmd}).encode() + b"\n"
    while True:
        try:
            data = _exchange(path, message, deadline)
        except (BlockingIOError, ConnectionResetError):
            data = b""
            if time.monotonic() + RETRY_PAUSE_S >= deadline:
                raise
        if data or time.monotonic() + RETRY_PAUSE_S >= deadline:
            break
        time.sleep(RETRY_PAUSE_S)
    answer: dict[str, Any] = json.loads(data)
    return answer


def _exchange(path: Path, message: bytes, deadline: float) -> bytes:
    """One connection: sends `message`, returns what the daemon answered (b"" if it closed at once).
    ConnectionResetError if it reset the connection before answering anything."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(max(deadline - time.monotonic(), 0.001))
        s.connect(str(path))
        with contextlib.suppress(BrokenPipeError):  # answered before all was read (too large): read that
            s.sendall(message)
        data = b""
        while not data.endswith(b"\n"):
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                if not data:
                    raise
                break
            if not chunk:
                break
            data += chunk
    return data
