"""The daemon's local API: commands with arguments (apply_config with a good, a broken and an oversized
config), the request size limit, and who may connect (SO_PEERCRED: another user is refused even when the
socket's mode would let it in)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from quicether.config import load
from quicether.daemon import api
from quicether.daemon.api import ApiServer
from quicether.daemon.service import Daemon
from quicether.identity import generate

CONFIG = '[node]\nlisten = "0.0.0.0:4433"\ntun = "qe9"\naddress = "10.99.0.7/24"\nstate_dir = "{state}"\n'


@pytest.fixture
def state() -> Iterator[Path]:
    # Under /tmp itself (not pytest's 0700 tree), so another user can reach the socket in the refusal test.
    path = Path(tempfile.mkdtemp(prefix="qe-api-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _daemon(state: Path) -> Daemon:
    path = state / "quicether.toml"
    path.write_text(CONFIG.format(state=state))
    os.chmod(path, 0o600)
    return Daemon(load(path), generate(state / "node.key"))


async def _serving(daemon: Daemon, *asks: dict[str, Any]) -> list[dict[str, Any]]:
    server = ApiServer(daemon.config.api_socket, {"status": daemon.status, "config": daemon.config_text,
                                                  "apply_config": daemon.apply_config, "setup_done": daemon.setup_done})
    await server.start()
    try:
        return [await asyncio.to_thread(api.request, daemon.config.api_socket, **ask) for ask in asks]
    finally:
        await server.stop()


def test_config_and_apply_config(state: Path) -> None:
    daemon = _daemon(state)
    path = daemon.config.path
    before = path.read_text()
    good = before.replace("10.99.0.7/24", "10.99.0.8/24")
    broken = before + "path_mtu = 10\n"
    shown, bad, not_text, applied = asyncio.run(_serving(
        daemon, {"cmd": "config"}, {"cmd": "apply_config", "text": broken}, {"cmd": "apply_config"},
        {"cmd": "apply_config", "text": good}))
    assert shown == {"ok": True, "text": before, "path": str(path)}
    # A config that does not parse changes nothing; the answer names the field.
    assert bad["ok"] is False and "node.path_mtu" in bad["error"] and str(path) in bad["error"]
    assert not_text["ok"] is False and '"text"' in not_text["error"]
    # A good one is written (root's, 0600) and applied as a reload: here a node setting, so a restart.
    assert applied == {"ok": True, "reloading": True, "restart": ["address"]}
    assert path.read_text() == good and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert daemon.reload_with is not None and daemon.reload_with.address == "10.99.0.8/24"


def test_an_oversized_config_or_request_is_refused(state: Path) -> None:
    daemon = _daemon(state)
    before = daemon.config.path.read_text()
    padding = "# " + "x" * api.MAX_CONFIG_BYTES + "\n"
    big, = asyncio.run(_serving(daemon, {"cmd": "apply_config", "text": before + padding}))
    assert big["ok"] is False and f"larger than {api.MAX_CONFIG_BYTES} bytes" in big["error"]
    huge, = asyncio.run(_serving(daemon, {"cmd": "apply_config", "text": "#" * (api.MAX_REQUEST_BYTES + 10)}))
    assert huge["ok"] is False and "request too large" in huge["error"]
    assert daemon.config.path.read_text() == before
    # The server still answers after both.
    status, = asyncio.run(_serving(daemon, {"cmd": "status"}))
    assert status["ok"] is True and status["node"]["node_id"] == daemon.identity.node_id


def test_the_socket_is_for_root_and_the_web_uis_group(state: Path) -> None:
    async def scenario() -> os.stat_result:
        server = ApiServer(state / "api.sock", {})
        await server.start()
        try:
            return os.stat(state / "api.sock")
        finally:
            await server.stop()

    mode = asyncio.run(scenario())
    ids = api.webui_ids()
    if ids is None:
        assert stat.S_IMODE(mode.st_mode) == 0o600
    else:
        assert stat.S_IMODE(mode.st_mode) == 0o660 and mode.st_gid == ids[1]


CLIENT = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(b'{"cmd": "status"}\\n')
print(s.makefile().readline(), end="")
"""


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/python3").exists(), reason="needs root to be nobody")
def test_another_user_is_refused_even_if_the_socket_lets_it_connect(state: Path) -> None:
    path = state / "api.sock"

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        server = ApiServer(path, {"status": lambda: {"x": 1}})
        await server.start()
        try:
            os.chmod(state, 0o755)
            os.chmod(path, 0o666)  # a mistake elsewhere must not open the API: the peer's uid decides
            child = await asyncio.create_subprocess_exec(
                "/usr/bin/python3", "-c", CLIENT, str(path), user="nobody", group="nogroup", extra_groups=[],
                stdout=asyncio.subprocess.PIPE, cwd="/")
            out, _ = await child.communicate()
            own = await asyncio.to_thread(api.request, path, "status")
            return json.loads(out), own
        finally:
            await server.stop()

    refused, own = asyncio.run(scenario())
    assert refused["ok"] is False and refused["error"].startswith("refused: uid 65534 may not use the QuicEther API")
    assert own == {"ok": True, "x": 1}


def _closed_unanswered(sock: socket.socket) -> bool:
    """Whether the server closed `sock` without an answer (a reset if it left unread bytes of a request)."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def test_connections_that_say_nothing_cannot_lock_the_api_out(state: Path) -> None:
    """Past MAX_WAITING connections waiting for their request, each new one closes the oldest (counted), so
    a client that sends its request is answered whatever number of idle connections are held."""
    path = state / "api.sock"

    async def scenario() -> tuple[list[dict[str, Any]], int, list[bool], int, int]:
        server = ApiServer(path, {"status": lambda: {"x": 1}})
        await server.start()
        idle = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3 * api.MAX_WAITING)]
        try:
            # Clients that connect and say nothing, or half a request (fewer than the listen backlog: the
            # server accepts them when this coroutine waits).
            for i, sock in enumerate(idle):
                sock.connect(str(path))
                if i % 2:
                    sock.sendall(b'{"cmd": "sta')
            await asyncio.sleep(0.2)
            answers = [await asyncio.to_thread(api.request, path, "status") for _ in range(3)]
            # The oldest idle connections were closed (EOF, no answer); the newest still wait.
            for sock in idle:
                sock.settimeout(1)
            oldest = [_closed_unanswered(sock) for sock in idle[:api.MAX_WAITING]]
            waiting = len(server._waiting)
            return answers, server.evicted_waiting, oldest, waiting, server.refused_busy
        finally:
            for sock in idle:
                sock.close()
            await asyncio.sleep(0.1)  # the waiting connections see EOF and end
            await server.stop()

    answers, evicted, oldest, waiting, busy = asyncio.run(scenario())
    assert answers == [{"ok": True, "x": 1}] * 3
    # The first status request closed one more idle connection; the next found a free place.
    assert evicted == 2 * api.MAX_WAITING + 1 and all(oldest)
    assert waiting == api.MAX_WAITING - 1 and busy == 0


def test_requests_beyond_the_limit_are_answered_busy_and_counted(state: Path) -> None:
    path = state / "api.sock"

    async def scenario() -> tuple[list[dict[str, Any]], dict[str, Any], int, int]:
        release = asyncio.Event()

        async def slow() -> dict[str, Any]:
            await release.wait()
            return {"slow": True}

        server = ApiServer(path, {"status": lambda: {"x": 1}, "slow": slow})
        await server.start()
        try:
            # Requests whose answers take long (a reload) hold their connection until they are answered.
            slow_clients = [await asyncio.open_unix_connection(str(path)) for _ in range(api.MAX_CONNECTIONS)]
            for _, writer in slow_clients:
                writer.write(b'{"cmd": "slow"}\n')
            while server.open_connections < api.MAX_CONNECTIONS:
                await asyncio.sleep(0.01)
            extra = [await asyncio.to_thread(api.request, path, "status") for _ in range(3)]
            release.set()
            slow_answers = [json.loads(await reader.readline()) for reader, _ in slow_clients]
            assert slow_answers == [{"ok": True, "slow": True}] * api.MAX_CONNECTIONS
            after = await asyncio.to_thread(api.request, path, "status")
            return extra, after, server.refused_busy, server.open_connections
        finally:
            await server.stop()

    extra, after, busy, still_open = asyncio.run(scenario())
    assert all(a == {"ok": False, "error": f"busy: {api.MAX_CONNECTIONS} requests in progress"} for a in extra)
    assert busy == 3 and after == {"ok": True, "x": 1} and still_open == 0


def test_requests_carry_their_arguments(state: Path) -> None:
    seen: list[dict[str, Any]] = []

    async def scenario() -> dict[str, Any]:
        server = ApiServer(state / "api.sock", {"echo": lambda req: seen.append(req) or {"got": req.get("n")}})
        await server.start()
        try:
            return await asyncio.to_thread(api.request, state / "api.sock", "echo", n=7)
        finally:
            await server.stop()

    assert asyncio.run(scenario()) == {"ok": True, "got": 7}
    assert seen == [{"cmd": "echo", "n": 7}]


def test_setup_done_removes_the_codes_copies_once_the_password_is_set(state: Path) -> None:
    from quicether import setup_code

    daemon = _daemon(state)
    esp = state / "esp" / "quicether-setup-code.txt"
    code = setup_code.ensure(state, (esp,))
    assert code is not None and code in esp.read_text()
    early, = asyncio.run(_serving(daemon, {"cmd": "setup_done"}))
    assert early == {"ok": True, "removed": []} and esp.exists()  # no password yet: the copies stay
    (setup_code.ui_dir(state) / setup_code.ADMIN_PASSWORD_FILE).write_text("{}")
    done, = asyncio.run(_serving(daemon, {"cmd": "setup_done"}))
    assert done == {"ok": True, "removed": [str(esp)]} and not esp.exists()
