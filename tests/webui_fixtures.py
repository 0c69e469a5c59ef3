"""Helpers for the web UI's Flask test-client tests: an app on a temporary state directory and a stand-in
daemon API (the real ApiServer on a unix socket, answering with a recorded status), so the UI's pages
can be checked without root. The real daemon behind the real UI is covered by the browser test."""

from __future__ import annotations

import asyncio
import copy
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from quicether import setup_code
from quicether.atomic import write_private
from quicether.config import ConfigError, parse
from quicether.daemon.api import ApiServer, Refused
from quicether.identity import KEY_FILE_NAME
from quicether.identity import load as load_identity
from webui import create_app, wizard

SAMPLE_STATUS: dict[str, Any] = {
    "node": {"node_id": "qe1site", "listen": "0.0.0.0:4433", "tun": "qe0", "mtu": 1415, "address": "10.99.0.7/24",
             "nat": {"wan0": "symmetric, random ports"},
             "no_route_drops": 0, "punch": {"attempts": 4, "successes": 1, "forwarded": 2, "refused": 0,
                                                "skipped": 5, "probes_sent": 310, "probe_sockets": 0,
                                                "probe_hits": 1, "probe_misses": 2}},
    "peers": [{
        "name": "gw", "node_id": "qe1gateway", "connected": True, "endpoint": "203.0.113.5:4433", "rtt_ms": 12.5,
        "last_handshake": 0, "rx_bytes": 0, "tx_bytes": 0, "rx_packets": 0, "tx_packets": 0, "rx_dropped": 0,
        "tx_dropped": 0, "tx_dropped_no_path": 0, "tx_dropped_queue_full": 0, "tx_dropped_refused": 0,
        "resend_evicted": 0, "retransmitted": 0, "reorder": {}, "punch_attempts": 3,
        "paths": [
            {"wan": "wan0", "local": "10.10.0.2", "public": "192.0.2.44:40001", "remote": "203.0.113.5:4433",
             "up": True, "backup": False, "kind": "direct",
             "rtt_ms": 11.0, "loss": 0.0, "tx_rate_bps": 40e6, "rx_rate_bps": 5e6, "tx_bytes": 3000, "rx_bytes": 10},
            {"wan": "wan1", "local": "10.11.0.2", "public": None, "remote": "203.0.113.5:4433", "up": False,
             "backup": True, "kind": "relayed", "via": "qe1relay",
             "rtt_ms": 31.0, "loss": 0.25, "tx_rate_bps": 0.0, "rx_rate_bps": 0.0, "tx_bytes": 1000, "rx_bytes": 0},
        ]}],
    "router": {"role": "site", "outside": ["wan0", "wan1"], "lan": {
        "device": "lan", "address": "10.0.50.1/24", "dhcp": True, "dns": True, "exit_peer": "gw", "exit_active": True,
        "kill_switch": False, "leases": [{"ip": "10.0.50.100", "mac": "aa", "hostname": "pc", "expiry": 0}]}},
    "time": 0.0,
}


class FakeDaemon:
    """Answers status/events/reload/config/apply_config on `path` from a thread; records the commands it got.
    The config is the file `config` (by default quicether.toml next to the socket): apply_config checks the
    text as the daemon does and writes it there, so tests check the config on disk. Tests may change
    `status` and `events` while it runs (the next request answers with them)."""

    def __init__(self, path: Path, config: Path | None = None) -> None:
        self.path = path
        self.config = config or path.parent / "quicether.toml"
        self.commands: list[str] = []
        self.reload_error: str | None = None
        # A daemon that restarts to apply a reload; one that applies a diff answers {"reloading": false, …}.
        self.reload_answer: dict[str, Any] = {"reloading": True}
        # The answer to join_network: what the daemon got from the network's admin, or its refusal (a str).
        self.join_answer: dict[str, Any] | str = "the admin node refused: this invite was already used"
        self.join_requests: list[dict[str, Any]] = []
        self.status: dict[str, Any] = copy.deepcopy(SAMPLE_STATUS)
        self.events: list[dict[str, Any]] = [
            {"time": 1.0, "level": "warning", "message": "peer gw: path on WAN wan1 down: silent",
             "event": "path_down"},
            {"time": 2.0, "level": "info", "message": "something unrelated"}]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def _handler(self, name: str, answer: Callable[[], dict[str, Any]]) -> Any:
        def handle() -> dict[str, Any]:
            self.commands.append(name)
            if name == "reload" and self.reload_error:
                raise ValueError(self.reload_error)
            return answer()
        return handle

    def _config(self) -> dict[str, Any]:
        self.commands.append("config")
        return {"text": self.config.read_text() if self.config.exists() else "", "path": str(self.config)}

    def _apply_config(self, request: dict[str, Any]) -> dict[str, Any]:
        self.commands.append("apply_config")
        text = request.get("text")
        if not isinstance(text, str):
            raise ValueError('apply_config needs the new config as "text"')
        try:
            parse(text, self.config)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        try:
            write_private(self.config, text)
        except OSError as exc:  # as the daemon answers (Daemon.apply_config): nothing changed
            raise Refused(f"cannot save {self.config}: {exc.strerror}; the previous config is kept and still"
                          " applies", saved=False) from None
        if self.reload_error:
            raise ValueError(self.reload_error)
        return self.reload_answer

    def _join_network(self, request: dict[str, Any]) -> dict[str, Any]:
        self.commands.append("join_network")
        self.join_requests.append(request)
        if isinstance(self.join_answer, str):
            raise ValueError(self.join_answer)
        return {"joined": self.join_answer}

    def __enter__(self) -> FakeDaemon:
        key = self.path.parent / KEY_FILE_NAME
        if key.exists():  # the node's id, as the real daemon reports it (the wizard suggests an address from it)
            self.status["node"]["node_id"] = load_identity(key).node_id
        self._thread.start()
        self._server = ApiServer(self.path, {"status": self._handler("status", lambda: self.status),
                                             "events": self._handler("events", lambda: {"events": self.events}),
                                             "reload": self._handler("reload", lambda: self.reload_answer),
                                             "config": self._config, "apply_config": self._apply_config,
                                             "join_network": self._join_network})
        asyncio.run_coroutine_threadsafe(self._server.start(), self._loop).result(5)
        return self

    def __exit__(self, *_exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._server.stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def fake_daemon(state: Path) -> Iterator[FakeDaemon]:
    with FakeDaemon(state / "api.sock") as daemon:
        yield daemon


PASSWORD = "correct horse battery"
PORTS = [{"name": n, "mac": f"02:00:00:00:00:0{i}", "up": True} for i, n in enumerate(["eth0", "eth1", "eth2"])]


def web_app(state: Path, monkeypatch: pytest.MonkeyPatch) -> Flask:
    # The machine running the tests has its own ports; the wizard is shown three of a router's.
    monkeypatch.setattr(wizard, "ports", lambda: PORTS)
    monkeypatch.setattr("webui.settings.ports", lambda: PORTS)
    config = state / "quicether.toml"
    config.write_text(f'[node]\nstate_dir = "{state}"\n')
    # The test client asks for http://localhost/: the name this UI is "served" at here.
    return create_app(config, state, {"TESTING": True}, hosts=["localhost"])


def csrf_token(client: FlaskClient, path: str) -> str:
    page = client.get(path).get_data(as_text=True)
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


def post_form(client: FlaskClient, path: str, data: dict[str, Any], page: str | None = None) -> Any:
    return client.post(path, data={**data, "csrf_token": csrf_token(client, page or path)})


def setup_code_of(client: FlaskClient) -> str:
    """The code as its owner reads it (`quicether setup-code` over SSH reads the same file)."""
    code = setup_code.read(Path(client.application.config["QE_STATE"]))
    assert code is not None
    return code


def set_up(client: FlaskClient) -> None:
    response = post_form(client, "/setup/", {"setup_code": setup_code_of(client), "password": PASSWORD,
                                         "confirm": PASSWORD})
    assert response.status_code == 302 and response.headers["Location"].endswith("/setup/ports")


def ports_step(client: FlaskClient, **changes: str) -> Any:
    form = {"role_eth0": "lan", "role_eth1": "wan", "wanrole_eth1": "primary", "rate_eth1": "40",
            "role_eth2": "wan", "wanrole_eth2": "backup", "rate_eth2": "", "lan_address": "192.168.7.1/24", **changes}
    return post_form(client, "/setup/ports", form)
