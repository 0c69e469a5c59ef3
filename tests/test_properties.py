"""Property tests (Hypothesis) for the parsers that take text from outside: the config file, invite codes,
the local API's request lines and the web UI's forms. Whatever the input, each answers with its own clear
error (ConfigError, InviteError, an {"ok": false} answer, a 4xx page), never a crash or another exception."""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quicether import setup_code
from quicether.config import ConfigError, parse
from quicether.daemon.api import ApiServer
from quicether.identity import generate
from quicether.invite import INVITE_PREFIX, Invite, InviteError, decode
from tests.webui_fixtures import FakeDaemon
from webui import create_app

# Seconds in the test command; QE_HYPOTHESIS_PROFILE=long for a longer search.
settings.register_profile("ci", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("QE_HYPOTHESIS_PROFILE", "ci"))

SETTINGS = ["listen", "tun", "address", "path_mtu", "congestion", "role", "detect_wans", "acl_default", "device",
            "name", "key", "endpoint", "allowed_ips", "mode", "realtime_mode", "rate_mbit", "gateway", "exit",
            "kill_switch", "direct", "dhcp_range", "port", "protocol", "from", "to", "action", "open", "groups"]
TABLES = ["node", "lan", "gateway", "webui", "firewall"]
ARRAYS = ["wan", "peer", "acl", "gateway.forward", "peer.class"]
toml_values = st.one_of(
    st.integers(-10**12, 10**12), st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
    st.text(max_size=40), st.lists(st.text(max_size=20), max_size=4), st.lists(st.integers(-5, 70000), max_size=3),
)


def _toml_line(key: str, value: Any) -> str:
    return f"{key} = {json.dumps(value)}"


@st.composite
def config_texts(draw: st.DrawFn) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        header = draw(st.sampled_from(TABLES + ARRAYS))
        lines.append(f"[[{header}]]" if header in ARRAYS else f"[{header}]")
        for _ in range(draw(st.integers(0, 5))):
            lines.append(_toml_line(draw(st.sampled_from(SETTINGS)), draw(toml_values)))
    return "\n".join(lines) + "\n"


@given(config_texts())
def test_any_config_parses_or_names_what_is_wrong(text: str) -> None:
    try:
        parse(text, Path("fuzz.toml"))
    except ConfigError as exc:
        assert str(exc).startswith("fuzz.toml"), exc


@given(st.text(max_size=400))
def test_any_text_as_a_config_parses_or_names_the_file(text: str) -> None:
    try:
        parse(text, Path("fuzz.toml"))
    except ConfigError as exc:
        assert str(exc).startswith("fuzz.toml"), exc


def _valid_code() -> str:
    return Invite(key="qe1" + "q" * 52, endpoints=["198.51.100.7:4433"], network="10.99.0.0/24").encode()


@given(st.text(max_size=300))
def test_any_pasted_text_is_an_invite_or_a_clear_invite_error(text: str) -> None:
    for code in (text, INVITE_PREFIX + text):
        try:
            decode(code)
        except InviteError as exc:
            assert str(exc)


@given(st.integers(0, 200), st.characters(codec="ascii"))
def test_a_valid_code_with_one_character_changed_is_refused(position: int, replacement: str) -> None:
    code = _valid_code()
    index = len(INVITE_PREFIX) + position % (len(code) - len(INVITE_PREFIX))
    changed = code[:index] + replacement + code[index + 1:]
    if changed == code or replacement.isspace():
        return
    with pytest.raises(InviteError):
        decode(changed)


@settings(max_examples=100)
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=5))
def test_the_api_answers_any_request_line_with_json(lines: list[bytes]) -> None:
    async def scenario() -> list[dict[str, Any]]:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "api.sock"
            server = ApiServer(path, {"status": lambda: {"x": 1}})
            await server.start()
            answers = []
            try:
                for line in lines:
                    reader, writer = await asyncio.open_unix_connection(str(path))
                    writer.write(line.replace(b"\n", b" ") + b"\n")
                    await writer.drain()
                    answers.append(json.loads(await reader.readline()))
                    writer.close()
            finally:
                await server.stop()
            return answers

    for answer in asyncio.run(scenario()):
        assert answer["ok"] is True or isinstance(answer["error"], str)


FORM_FIELDS = ["invite", "address", "mode", "use_exit", "role_0", "rate_0", "remove_0", "add_device", "role_eth1",
               "wanrole_eth1", "rate_eth1", "role_eth0", "lan_address", "peer", "protocol", "port", "dscp", "remove",
               "action", "from", "to", "toml", "device", "dhcp", "dns", "dns_servers", "direct", "kill_switch",
               "exit", "password", "confirm", "current", "setup_code", "next"]
form_values = st.one_of(st.text(max_size=60), st.sampled_from(["0", "-1", "on", "eth1", "*", "lan", "1e9", "udp",
                                                               "aggregate", "[node]\npath_mtu = 1\n", "\x00"]))


@pytest.fixture(scope="module")
def logged_in() -> Iterator[tuple[FlaskClient, list[str]]]:
    """A set-up web UI (password set with its setup code) against a stand-in daemon, and its form paths."""
    ports = [{"name": n, "mac": "02:00:00:00:00:01", "up": True} for n in ("eth0", "eth1", "eth2")]
    with tempfile.TemporaryDirectory() as tmp, FakeDaemon(Path(tmp) / "api.sock"), pytest.MonkeyPatch.context() as mp:
        state = Path(tmp)
        generate(state / "node.key")
        config = state / "quicether.toml"
        config.write_text(f'[node]\nstate_dir = "{state}"\n[lan]\ndevice = "eth0"\n[[wan]]\ndevice = "eth1"\n')
        mp.setattr("webui.wizard.ports", lambda: ports)
        mp.setattr("webui.settings.ports", lambda: ports)
        app = create_app(config, state, {"TESTING": True}, hosts=["localhost"])
        client = app.test_client()
        password = "correct horse battery"
        client.post("/setup/", data={"setup_code": setup_code.read(state) or "", "password": password,
                                     "confirm": password, "csrf_token": _token(client, "/setup/")})
        # Every form but logout and the password change (either ends this session for the examples after it).
        posts = sorted(str(r.rule) for r in app.url_map.iter_rules() if "POST" in (r.methods or set())
                       and "<" not in str(r.rule) and str(r.rule) not in ("/logout", "/settings/password"))
        yield client, posts


def _token(client: FlaskClient, path: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).get_data(as_text=True))
    return found.group(1) if found else ""


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(form=st.dictionaries(st.sampled_from(FORM_FIELDS), form_values, max_size=8))
def test_every_web_form_answers_any_input_with_a_page_not_a_crash(logged_in: tuple[FlaskClient, list[str]],
                                                                   form: dict[str, str]) -> None:
    client, posts = logged_in
    assert "/settings/wans" in posts and "/setup/connect" in posts
    for path in posts:
        page = "/settings/" if path.startswith("/settings") else path
        response = client.post(path, data={**form, "csrf_token": _token(client, page)})
        assert response.status_code < 500, (path, form, response.get_data(as_text=True)[:300])
