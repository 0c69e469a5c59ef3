"""The web UI through Flask's test client (no root, no browser): first-boot wizard, login, CSRF, every
page and form with its validation messages, and what ends up in the config file (joining a mesh network
from the wizard: test_webui_network.py; the fixtures: conftest.py)."""

from __future__ import annotations

import base64
import concurrent.futures
import html.parser
import io
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from quicether import metrics, setup_code
from quicether.config import load
from quicether.identity import encode_node_id
from quicether.invite import Invite
from tests import webui_fixtures
from tests.test_metrics import samples_of
from tests.webui_fixtures import (
    PASSWORD,
    SAMPLE_STATUS,
    FakeDaemon,
    csrf_token,
    ports_step,
    post_form,
    set_up,
    setup_code_of,
    web_app,
)
from webui import auth, create_app, sessions, throttle

GW_KEY = encode_node_id(bytes(range(32)))
INVITE = Invite(key=GW_KEY, endpoints=["198.18.0.2:4433"], network="10.99.0.0/24", name="gw", exit=True,
                peer_address="10.99.0.1/24").encode()


def test_first_boot_leads_every_page_to_the_password_step(client: FlaskClient, state: Path) -> None:
    for path in ("/", "/settings/", "/setup/ports", "/login", "/api/summary"):
        response = client.get(path)
        assert response.status_code == 302 and response.headers["Location"].endswith("/setup/"), path
    assert client.get("/healthz").get_json() == {"ok": True}
    assert not (setup_code.ui_dir(state) / auth.PASSWORD_FILE).exists()


def test_password_rules_and_the_stored_hash(client: FlaskClient, state: Path) -> None:
    code = setup_code_of(client)
    short = post_form(client, "/setup/", {"setup_code": code, "password": "short", "confirm": "short"})
    assert short.status_code == 400 and "at least 10 characters" in short.get_data(as_text=True)
    differ = post_form(client, "/setup/", {"setup_code": code, "password": PASSWORD, "confirm": PASSWORD + "x"})
    assert differ.status_code == 400 and "differ" in differ.get_data(as_text=True)
    set_up(client)
    stored = (setup_code.ui_dir(state) / auth.PASSWORD_FILE).read_text()
    assert PASSWORD not in stored and json.loads(stored)["algorithm"] == "scrypt"
    assert oct((setup_code.ui_dir(state) / auth.PASSWORD_FILE).stat().st_mode & 0o777) == "0o600"
    # Once set, the wizard's first step cannot replace the password for someone without a session.
    other = client.application.test_client()
    again = post_form(other, "/login", {"password": "x"}, page="/login")
    assert again.status_code == 401
    replaced = other.post("/setup/", data={"setup_code": code, "password": "new password 123",
                                           "confirm": "new password 123", "csrf_token": csrf_token(other, "/login")})
    assert replaced.status_code == 302 and "/login" in replaced.headers["Location"]
    assert (setup_code.ui_dir(state) / auth.PASSWORD_FILE).read_text() == stored


def test_forms_without_the_csrf_token_are_refused(client: FlaskClient) -> None:
    response = client.post("/setup/", data={"password": PASSWORD, "confirm": PASSWORD})
    assert response.status_code == 400 and "expired or did not come from this page" in response.get_data(as_text=True)
    set_up(client)
    assert client.post("/settings/acls", data={"action": "deny"}).status_code == 400
    assert client.post("/logout").status_code == 400
    assert client.post("/settings/acls", data={"action": "deny", "csrf_token": "forged"}).status_code == 400


def test_login_wrong_password_rate_limit_and_safe_redirect(client: FlaskClient, app: Flask) -> None:
    set_up(client)
    other = app.test_client()
    assert other.get("/settings/").headers["Location"].endswith("/login?next=/settings/")
    for _ in range(throttle.MAX_FAILURES):
        wrong = post_form(other, "/login", {"password": "wrong password"})
        assert wrong.status_code == 401 and "Wrong password." in wrong.get_data(as_text=True)
    locked = post_form(other, "/login", {"password": PASSWORD})
    assert locked.status_code == 429 and "Too many wrong guesses" in locked.get_data(as_text=True)
    app.extensions["qe_throttle"].clear()
    fresh = app.test_client()
    token = csrf_token(fresh, "/login")
    ok = fresh.post("/login?next=//evil.example/", data={"password": PASSWORD, "csrf_token": token})
    assert ok.status_code == 302 and ok.headers["Location"] == "/"
    other = app.test_client()
    backslash = other.post("/login?next=/%5Cevil.example/", data={"password": PASSWORD,
                                                                   "csrf_token": csrf_token(other, "/login")})
    assert backslash.headers["Location"] == "/"
    cookie = ok.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie


def test_security_headers(client: FlaskClient) -> None:
    headers = client.get("/healthz").headers
    assert headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert headers["X-Frame-Options"] == "DENY"


def _setup_form(code: str) -> dict[str, str]:
    return {"setup_code": code, "password": PASSWORD, "confirm": PASSWORD}


def test_first_password_needs_the_one_time_setup_code(client: FlaskClient, state: Path) -> None:
    code = setup_code_of(client)
    assert code not in client.get("/setup/").get_data(as_text=True)  # shown nowhere in the UI
    wrong_codes = ("", code[:-1], code + "A", "é")  # fewer than the guessing limit
    assert len(wrong_codes) < throttle.MAX_FAILURES
    for wrong in wrong_codes:
        refused = post_form(client, "/setup/", _setup_form(wrong))
        assert refused.status_code == 403 and "Wrong setup code" in refused.get_data(as_text=True), wrong
    assert not (setup_code.ui_dir(state) / auth.PASSWORD_FILE).exists()
    # Typed by hand: case and spacing do not matter.
    accepted = post_form(client, "/setup/", _setup_form(f" {code.lower().replace('-', ' ')} "))
    assert accepted.status_code == 302 and accepted.headers["Location"].endswith("/setup/ports")
    assert (setup_code.ui_dir(state) / auth.PASSWORD_FILE).exists()
    # Consumed: gone from the state dir, never made again, and the wizard's first step is closed.
    assert setup_code.read(state) is None and setup_code.ensure(state) is None
    assert not (setup_code.ui_dir(state) / setup_code.CODE_FILE).exists()
    other = client.application.test_client()
    again = other.post("/setup/", data={**_setup_form(code), "csrf_token": csrf_token(other, "/login")})
    assert again.status_code == 302 and "/login" in again.headers["Location"]


def test_setting_the_password_removes_every_copy_of_the_code(client: FlaskClient, state: Path,
                                                              tmp_path: Path) -> None:
    esp = tmp_path / "boot-efi" / "quicether-setup-code.txt"  # as the appliance's firstboot writes it
    assert setup_code.ensure(state, (esp,)) == setup_code_of(client) and esp.exists()
    set_up(client)
    assert not esp.exists() and not (setup_code.ui_dir(state) / setup_code.CODE_FILE).exists()


def test_wrong_setup_codes_count_against_the_login_limit(client: FlaskClient) -> None:
    code = setup_code_of(client)
    for _ in range(throttle.MAX_FAILURES):
        assert post_form(client, "/setup/", _setup_form("WRNG-WRNG-WRNG")).status_code == 403
    locked = post_form(client, "/setup/", _setup_form(code))
    assert locked.status_code == 429 and "Too many wrong guesses" in locked.get_data(as_text=True)
    state = Path(client.application.config["QE_STATE"])
    # Still unused.
    assert not (setup_code.ui_dir(state) / auth.PASSWORD_FILE).exists() and setup_code.read(state) == code


def test_setup_code_copies_the_cli_and_their_removal(state: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from quicether.__main__ import main

    esp, banner = tmp_path / "esp" / "quicether-setup-code.txt", tmp_path / "run" / "setup-code.issue"
    assert main(["setup-code", "--state-dir", str(state), "--copy-to", str(esp), "--copy-to", str(banner)]) == 0
    code = capsys.readouterr().out.strip()
    assert setup_code.read(state) == code and len(setup_code.normalise(code)) == setup_code.CODE_SYMBOLS
    assert oct((setup_code.ui_dir(state) / setup_code.CODE_FILE).stat().st_mode & 0o777) == "0o600"
    assert code in esp.read_text() and code in banner.read_text()
    banner.unlink()  # /run after a reboot: the next call writes it again, with the same code
    assert main(["setup-code", "--state-dir", str(state), "--copy-to", str(banner)]) == 0
    assert capsys.readouterr().out.strip() == code and code in banner.read_text()
    setup_code.consume(state)
    assert not esp.exists() and not banner.exists() and setup_code.read(state) is None


def test_the_setup_code_left_after_the_password_is_removed(state: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from quicether.__main__ import main

    esp = tmp_path / "quicether-setup-code.txt"
    setup_code.ensure(state, (esp,))
    # Set meanwhile (the code file was left by a crash).
    (setup_code.ui_dir(state) / auth.PASSWORD_FILE).write_text("{}")
    assert main(["setup-code", "--state-dir", str(state)]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "already set" in captured.err
    assert not esp.exists() and setup_code.read(state) is None


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "192.168.50.1.evil.example", "192.168.50.10",
                                  "router.lan.evil.example", "", "[::1]:80"])
def test_requests_for_other_host_names_are_refused(state: Path, host: str) -> None:
    app = create_app(state / "quicether.toml", state, {"TESTING": True}, hosts=["192.168.50.1", "router.lan"])
    client = app.test_client()
    for path in ("/", "/setup/", "/login", "/healthz", "/static/app.css", "/api/summary"):
        response = client.get(path, headers={"Host": host})
        assert response.status_code == 400 and "only to its own address" in response.get_data(as_text=True), path
    code = setup_code.read(state)
    assert code is not None
    # A rebound page cannot set the password even with the code (it can read nothing, not even the token).
    posted = client.post("/setup/", data=_setup_form(code), headers={"Host": host})
    assert posted.status_code == 400 and not (setup_code.ui_dir(state) / auth.PASSWORD_FILE).exists()


@pytest.mark.parametrize("host", ["192.168.50.1", "192.168.50.1:80", "ROUTER.LAN", "router.lan.", "router.lan:8080"])
def test_requests_for_the_routers_own_names_are_served(state: Path, host: str) -> None:
    app = create_app(state / "quicether.toml", state, {"TESTING": True}, hosts=["192.168.50.1", "router.lan"])
    response = app.test_client().get("/healthz", headers={"Host": host})
    assert response.status_code == 200 and response.get_json() == {"ok": True}


def _session_id(client: FlaskClient) -> str:
    cookie = client.get_cookie("qe_session")
    assert cookie is not None
    return cookie.value


def _log_in(app: Flask) -> FlaskClient:
    other = app.test_client()
    assert post_form(other, "/login", {"password": PASSWORD}).status_code == 302
    return other


def _with_session(app: Flask, sid: str) -> FlaskClient:
    other = app.test_client()
    other.set_cookie("qe_session", sid)
    return other


def test_sessions_are_server_side_and_revoked_by_logout(client: FlaskClient, app: Flask, state: Path) -> None:
    set_up(client)
    admin = _log_in(app)
    sid = _session_id(admin)
    assert len(sid) >= 40 and "admin" not in sid  # a random id, not signed data
    assert sid not in (setup_code.ui_dir(state) / "webui-sessions.json").read_text()  # the file holds digests only
    assert oct((setup_code.ui_dir(state) / "webui-sessions.json").stat().st_mode & 0o777) == "0o600"
    # The session survives the UI's restart (a config reload), and a copy of the cookie works…
    restarted = create_app(state / "quicether.toml", state, {"TESTING": True}, hosts=["localhost"])
    assert _with_session(restarted, sid).get("/settings/").status_code == 200
    # …until logout: then the id is worthless, for a copy of the cookie too, and after a restart.
    assert post_form(admin, "/logout", {}, page="/settings/").status_code == 302
    assert _with_session(app, sid).get("/settings/").status_code == 302
    restarted = create_app(state / "quicether.toml", state, {"TESTING": True}, hosts=["localhost"])
    assert _with_session(restarted, sid).get("/settings/").status_code == 302


def test_login_gets_a_new_session_id(client: FlaskClient, app: Flask) -> None:
    set_up(client)
    other = app.test_client()
    token = csrf_token(other, "/login")
    before = _session_id(other)  # an id an attacker could have planted (fixation)
    assert other.post("/login", data={"password": PASSWORD, "csrf_token": token}).status_code == 302
    assert _session_id(other) != before
    assert _with_session(app, before).get("/settings/").status_code == 302


def test_a_password_change_ends_every_session(client: FlaskClient, app: Flask) -> None:
    set_up(client)
    first, second = _log_in(app), _log_in(app)
    with app.app_context():
        auth.set_password("another good password")
    for old in (client, first, second):
        assert old.get("/settings/").status_code == 302


def test_changing_the_password_in_the_settings_ends_the_other_sessions(client: FlaskClient, app: Flask) -> None:
    set_up(client)
    changer, other = _log_in(app), _log_in(app)
    before = _session_id(changer)
    form = {"current": PASSWORD, "password": "a new admin password", "confirm": "a new admin password"}
    wrong = post_form(changer, "/account/password", {**form, "current": "not the password"}, page="/settings/")
    assert wrong.status_code == 302 and "current password is wrong" in changer.get("/settings/").get_data(as_text=True)
    weak = post_form(changer, "/account/password", {**form, "confirm": "different"}, page="/settings/")
    assert weak.status_code == 302 and "two passwords differ" in changer.get("/settings/").get_data(as_text=True)
    assert other.get("/settings/").status_code == 200  # nothing changed yet
    changed = post_form(changer, "/account/password", form, page="/settings/")
    assert changed.status_code == 302 and changed.headers["Location"].endswith("/settings/#password")
    assert "Every other session was logged out" in changer.get("/settings/").get_data(as_text=True)
    assert _session_id(changer) != before
    assert other.get("/settings/").status_code == 302 and client.get("/settings/").status_code == 302
    assert post_form(app.test_client(), "/login", {"password": PASSWORD}).status_code == 401
    assert post_form(app.test_client(), "/login", {"password": "a new admin password"}).status_code == 302


def test_sessions_expire_when_idle_and_after_the_absolute_lifetime(client: FlaskClient, app: Flask) -> None:
    now = [1_000_000.0]
    app.session_interface.clock = lambda: now[0]  # type: ignore[attr-defined]
    set_up(client)
    admin = _log_in(app)
    now[0] += sessions.IDLE_LIFETIME_S - 5
    assert admin.get("/settings/").status_code == 200  # used in time: the idle clock starts again
    now[0] += sessions.IDLE_LIFETIME_S + 5
    assert admin.get("/settings/").status_code == 302
    admin = _log_in(app)
    started = now[0]
    while now[0] - started < sessions.ABSOLUTE_LIFETIME_S - 60:
        now[0] += sessions.IDLE_LIFETIME_S / 2
        assert admin.get("/settings/").status_code == 200
    now[0] = started + sessions.ABSOLUTE_LIFETIME_S + 1
    assert admin.get("/settings/").status_code == 302  # busy all along, but too old


def test_anonymous_sessions_cannot_push_the_admin_out(client: FlaskClient, app: Flask) -> None:
    set_up(client)
    admin = _log_in(app)
    for _ in range(sessions.MAX_SESSIONS * 2):
        app.test_client().get("/login")  # each gets a session for the form's CSRF token
    assert len(app.extensions["qe_sessions"]) <= sessions.MAX_SESSIONS
    assert admin.get("/settings/").status_code == 200


def test_logging_in_past_the_session_limit_evicts_the_oldest_and_counts_it(
        client: FlaskClient, app: Flask, state: Path) -> None:
    """The limit on web sessions (MAX_SESSIONS = 64): 9 logins past it (the set-up's, `first` and 71 more)
    evict the 9 least recently used sessions, counted in /metrics; then 2000 login forms (anonymous
    sessions) keep the store at the bound and the process's RSS within 20 MB."""
    set_up(client)
    first = _log_in(app)
    rest = [_log_in(app) for _ in range(sessions.MAX_SESSIONS + 7)]
    store = app.extensions["qe_sessions"]
    assert len(store) <= sessions.MAX_SESSIONS
    assert first.get("/settings/").status_code == 302, "the oldest session was evicted"
    assert rest[-1].get("/settings/").status_code == 200
    # The set-up client's session and `first` were the oldest; each login past the limit evicted one.
    assert store.counters()["sessions_evicted_logged_in"] == 9
    stored = json.loads((setup_code.ui_dir(state) / sessions.SESSIONS_FILE).read_text())
    assert len(stored) <= sessions.MAX_SESSIONS, "evicted sessions leave the file too"
    rss_before = metrics.system_health()["process_rss_bytes"]
    for _ in range(2000):
        app.test_client().get("/login")
    rss_grown = metrics.system_health()["process_rss_bytes"] - rss_before
    print(f"web sessions: {len(store)} kept, {store.counters()}, RSS grew {rss_grown / 1e6:.1f} MB")
    assert len(store) <= sessions.MAX_SESSIONS and rss_grown < 20e6
    counted = store.counters()
    assert counted["sessions_evicted_anonymous"] >= 2000 - sessions.MAX_SESSIONS
    # The first form found only logged-in sessions and evicted the least recently used; every later one
    # evicted an anonymous session (they go first).
    assert counted["sessions_evicted_logged_in"] == 10
    assert rest[-1].get("/settings/").status_code == 200
    scraped = samples_of(rest[-1].get("/metrics").get_data(as_text=True))
    assert scraped['quicether_dropped_total{area="web_session",cause="evicted_logged_in"}'] == 10
    assert scraped['quicether_dropped_total{area="web_session",cause="evicted_anonymous"}'] >= \
        counted["sessions_evicted_anonymous"]


@pytest.mark.parametrize("target", [
    "/%09/evil.example", "/%0a/evil.example", "/%0d/evil.example", "%09//evil.example", "//evil.example",
    "///evil.example", "/%5Cevil.example", "/%5C/evil.example", "https://evil.example/", "http:evil.example",
    "javascript:alert(1)", "%20//evil.example", "evil.example", "/%00/evil.example", "/.//evil.example",
])
def test_login_never_redirects_to_another_site(client: FlaskClient, app: Flask, target: str) -> None:
    set_up(client)
    other = app.test_client()
    token = csrf_token(other, "/login")
    response = other.post(f"/login?next={target}", data={"password": PASSWORD, "csrf_token": token})
    assert response.status_code == 302 and response.headers["Location"] == "/"


def test_login_returns_to_the_page_asked_for(client: FlaskClient, app: Flask) -> None:
    set_up(client)
    other = app.test_client()
    token = csrf_token(other, "/login")
    response = other.post("/login?next=/settings/%3Fx%3D1", data={"password": PASSWORD, "csrf_token": token})
    assert response.headers["Location"] == "/settings/?x=1"


def test_parallel_guesses_get_exactly_the_limit(client: FlaskClient, app: Flask) -> None:
    set_up(client)
    guessers = [app.test_client() for _ in range(20)]
    tokens = [csrf_token(g, "/login") for g in guessers]
    start = threading.Barrier(len(guessers))

    def guess(i: int) -> int:
        start.wait()
        return guessers[i].post("/login", data={"password": f"wrong guess {i}", "csrf_token": tokens[i]}).status_code

    with concurrent.futures.ThreadPoolExecutor(len(guessers)) as pool:
        codes = sorted(pool.map(guess, range(len(guessers))))
    assert codes.count(401) == throttle.MAX_FAILURES and codes.count(429) == len(guessers) - throttle.MAX_FAILURES


def test_the_throttle_forgets_old_addresses_and_has_a_global_limit() -> None:
    limit = throttle.Throttle()
    for i in range(throttle.MAX_TRACKED_ADDRESSES * 3):
        limit.attempt(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", now=i * throttle.FAILURE_WINDOW_S)
    assert limit.tracked() <= throttle.MAX_TRACKED_ADDRESSES
    limit = throttle.Throttle()
    for i in range(throttle.MAX_GLOBAL_FAILURES):  # many addresses, each below its own limit
        assert limit.attempt(f"192.168.50.{i + 2}", now=100.0) is not None
    assert limit.attempt("192.168.50.250", now=101.0) is None  # a fresh address: the router's limit
    assert limit.attempt("192.168.50.250", now=100.0 + throttle.FAILURE_WINDOW_S + 1) is not None
    limit = throttle.Throttle()
    for _ in range(throttle.MAX_FAILURES):
        assert limit.attempt("192.168.50.9", now=0.0) is not None
    assert limit.attempt("192.168.50.9", now=1.0) is None
    assert limit.attempt("192.168.50.9", now=throttle.FAILURE_WINDOW_S + 1) is not None


@pytest.mark.parametrize("token", ["é", "\u2603" * 43, "ü" + "a" * 42])
def test_a_non_ascii_csrf_token_is_a_400(client: FlaskClient, token: str) -> None:
    first_boot = client.post("/setup/", data={"csrf_token": token, "password": PASSWORD})
    assert first_boot.status_code == 400
    set_up(client)
    other = client.application.test_client()
    other.get("/login")
    login = other.post("/login", data={"csrf_token": token, "password": PASSWORD})
    assert login.status_code == 400 and "expired or did not come from this page" in login.get_data(as_text=True)
    assert other.post("/login", headers={"X-CSRF-Token": token}, data={"password": "x"}).status_code == 400


@pytest.mark.parametrize(("changes", "message"), [
    ({"role_eth0": "unused"}, "Choose the LAN port"),
    ({"role_eth1": "lan"}, "Choose one LAN port"),
    ({"role_eth1": "unused", "role_eth2": "unused"}, "at least one WAN port"),
    ({"rate_eth1": "fast"}, "eth1: the rate cap must be a number"),
    ({"rate_eth1": "-5"}, "between 0.1 and 10000"),
    ({"rate_eth1": "0.0001"}, "between 0.1 and 10000"),  # tbf's rate would round to 0: a crash at start
    ({"rate_eth1": "40000"}, "between 0.1 and 10000"),   # over tbf's 32-bit bytes/s
    ({"lan_address": "192.168.7.0/24"}, "not a usable host address"),
    ({"lan_address": "router"}, "is not like 192.168.50.1/24"),
])
def test_wizard_ports_step_explains_bad_choices(client: FlaskClient, changes: dict[str, str], message: str) -> None:
    set_up(client)
    response = ports_step(client, **changes)
    assert response.status_code == 400
    assert message in response.get_data(as_text=True)


def test_wizard_bad_invite_is_shown_on_the_page(client: FlaskClient, daemon: FakeDaemon) -> None:
    set_up(client)
    assert ports_step(client).status_code == 302
    response = post_form(client, "/setup/connect", {"invite": INVITE[:-6], "mode": "aggregate"})
    assert response.status_code == 400
    assert "Invite code: the invite code is damaged" in response.get_data(as_text=True)
    assert "apply_config" not in daemon.commands


def test_wizard_writes_the_cli_config_and_reloads_the_daemon(client: FlaskClient, daemon: FakeDaemon,
                                                             state: Path) -> None:
    set_up(client)
    assert ports_step(client).status_code == 302
    response = post_form(client, "/setup/connect", {"invite": INVITE, "mode": "lowest-rtt", "use_exit": "on"})
    page = response.get_data(as_text=True)
    assert response.status_code == 200 and "daemon is applying the new settings" in page
    config = load(state / "quicether.toml")
    assert [(w.device, w.backup, w.rate_mbit) for w in config.wans] == [("eth1", False, 40.0), ("eth2", True, None)]
    assert config.lan is not None and config.lan.device == "eth0" and config.lan.address == "192.168.7.1/24"
    assert config.lan.exit_peer == "gw" and not config.detect_wans
    assert config.peers[0].node_id == GW_KEY and config.peers[0].mode == "lowest-rtt"
    assert config.address is not None and config.address.startswith("10.99.0.") and config.address != "10.99.0.1/24"
    assert [c for c in daemon.commands if c != "config"] == ["status", "apply_config", "status"]
    assert f"--allowed-ips {config.address.split('/')[0]}/32,192.168.7.0/24" in page


def test_the_wizard_routes_internet_traffic_through_the_gateway_only_when_asked(client: FlaskClient,
                                                                                daemon: FakeDaemon,
                                                                                state: Path) -> None:
    set_up(client)
    assert ports_step(client).status_code == 302
    assert post_form(client, "/setup/connect", {"invite": INVITE, "mode": "aggregate"}).status_code == 200
    config = load(state / "quicether.toml")
    # The invite offers an exit, but the box was not ticked: the gateway is a peer, not the exit.
    assert config.lan is not None and config.lan.exit_peer is None
    assert config.peers[0].node_id == GW_KEY and "0.0.0.0/0" not in config.peers[0].allowed_ips


@pytest.mark.parametrize(("answer", "shown", "waits"), [
    ({"reloading": False, "changes": ["peer gw added", "lan eth0 192.168.7.1/24"]},
     "The daemon applied the new settings.", False),
    ({"reloading": False, "changes": []}, "Nothing the daemon runs had to change.", False),
    ({"reloading": True, "restart": ["node.address"]}, "it restarts its services for node.address", True),
    ({}, "it restarts its services", True),  # a daemon from before reloads were applied as a diff
])
def test_the_applying_page_shows_the_daemons_answer(client: FlaskClient, daemon: FakeDaemon, answer: dict[str, Any],
                                                     shown: str, waits: bool) -> None:
    set_up(client)
    daemon.reload_answer = answer
    assert ports_step(client).status_code == 302
    page = post_form(client, "/setup/connect", {"invite": INVITE, "mode": "aggregate"}).get_data(as_text=True)
    assert shown in page
    for change in answer.get("changes", []):
        assert f"<li>{change}</li>" in page
    # Only a restarting daemon takes this UI down: only then does the page wait for it to come back.
    assert ('id="waiting"' in page) == waits and ("applying.js" in page) == waits
    assert 'id="to-dashboard"' in page


def test_the_applying_page_says_when_the_daemon_refuses(client: FlaskClient, daemon: FakeDaemon) -> None:
    set_up(client)
    daemon.reload_error = "q.toml: lan.device: eth9 does not exist"
    assert ports_step(client).status_code == 302
    page = post_form(client, "/setup/connect", {"invite": "", "mode": "aggregate"}).get_data(as_text=True)
    assert "Settings saved, not applied" in page and "refused to reload: q.toml: lan.device: eth9" in page
    assert 'id="waiting"' not in page


def test_the_applying_page_says_not_saved_when_the_daemon_cannot_write_the_config(
        client: FlaskClient, daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch) -> None:
    set_up(client)
    before = daemon.config.read_bytes() if daemon.config.exists() else None

    def disk_full(path: Path, data: bytes | str, mode: int = 0o600) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(webui_fixtures, "write_private", disk_full)
    assert ports_step(client).status_code == 302
    page = post_form(client, "/setup/connect", {"invite": "", "mode": "aggregate"}).get_data(as_text=True)
    # Not "Saved, but the daemon refused to reload" (the wording before issue 15): nothing was written.
    assert "Settings not saved" in page and "No space left on device; the previous config is kept" in page, page
    assert (daemon.config.read_bytes() if daemon.config.exists() else None) == before


def test_dashboard_shows_wans_peers_and_events(client: FlaskClient, daemon: FakeDaemon) -> None:
    set_up(client)
    page = client.get("/").get_data(as_text=True)
    assert 'data-wan="wan0"' in page and 'data-wan="wan1"' in page and "40.0" in page
    assert '<dd data-field="public">192.0.2.44</dd>' in page
    assert '<dd data-field="nat">symmetric, random ports</dd>' in page and '<dd data-field="nat">-</dd>' in page
    # Each path's kind as the core reports it.
    assert "gw" in page and "wan0 (direct, up)" in page and "wan1 (relayed via qe1relay, down)" in page
    # The punch view: this node's hole punching, and the punches towards each peer.
    assert ("Hole punching: 4 attempt(s), 1 punched path(s) up,\n     2 forwarded for other members, 0 refused,\n"
            "     5 not tried (both NATs random), birthday probes 1 hit /\n     2 missed") in page
    assert '<td data-field="punches">3</td>' in page
    assert client.get("/api/summary").get_json()["punch"] == {"attempts": 4, "successes": 1, "forwarded": 2,
                                                                "refused": 0, "skipped": 5,
                                                                "probes_sent": 310, "probe_sockets": 0,
                                                                "probe_hits": 1, "probe_misses": 2}
    assert "1 DHCP lease(s)" in page
    assert "path on WAN wan1 down" in page
    summary = client.get("/api/summary").get_json()
    wan0, wan1 = summary["wans"]
    assert (wan0["state"], wan0["share"], wan1["state"], wan1["loss"]) == ("up", 0.75, "down", 0.25)
    assert summary["total"]["tx_bps"] == 40e6
    assert [e["message"] for e in summary["events"]] == ["peer gw: path on WAN wan1 down: silent"]


def test_dashboard_shows_the_tcp_lane_and_each_wans_share_of_its_subflows(client: FlaskClient,
                                                                         daemon: FakeDaemon) -> None:
    set_up(client)
    page = client.get("/").get_data(as_text=True)
    assert '<p id="lane" data-field="lane" hidden></p>' in page, "no lane, no line"
    assert client.get("/api/summary").get_json()["lane"] is None
    daemon.status["node"]["lane"] = {"site_connections": 12, "site_active": 3, "site_bytes_out": 2_500_000,
                                     "site_bytes_in": 1_200_000_000, "site_refused": 0, "site_failed": 1,
                                     "site_at_cap": 0}
    daemon.status["node"]["lane_subflows"] = {
        "wan1": {"subflows": 3, "bytes_sent": 100, "bytes_received": 149_900},
        "wan0": {"subflows": 3, "bytes_sent": 300, "bytes_received": 349_700}}
    line = ("TCP lane: site end: 12 connection(s), 3 active, 2.5 MB out, 1.2 GB in, 0 refused, 1 failed,"
            " 0 closed at the cap; subflows wan0 3 (70 %), wan1 3 (30 %)")
    assert f'<p id="lane" data-field="lane" >{line}</p>' in client.get("/").get_data(as_text=True)
    # MPTCP stripped on the way to a peer: the lane fell back, the peer's TCP goes through the bond meanwhile.
    daemon.status["node"]["lane"]["site_fallback"] = 2
    daemon.status["node"]["lane_bypassed"] = {"gw\n": 1_900_000_000.0}
    assert ("0 closed at the cap, 2 fell back to plain TCP; subflows wan0 3 (70 %), wan1 3 (30 %);"
            " MPTCP stripped on the way to gw\\u000a: its TCP goes through the QUIC bond") in \
        client.get("/api/summary").get_json()["lane"]["line"]
    del daemon.status["node"]["lane"]["site_fallback"], daemon.status["node"]["lane_bypassed"]
    lane = client.get("/api/summary").get_json()["lane"]
    assert lane["line"] == line and lane["ends"]["site"]["connections"] == 12
    assert [(f["wan"], f["subflows"], f["share"]) for f in lane["subflows"]] == [("wan0", 3, 0.7), ("wan1", 3, 0.3)]


def test_dashboard_lists_the_mesh_members_how_each_was_found_and_its_record(client: FlaskClient,
                                                                            daemon: FakeDaemon) -> None:
    set_up(client)
    assert "Mesh network" not in client.get("/").get_data(as_text=True), "a node in no network shows none"
    now = 1_900_000_000
    daemon.status["time"] = now
    daemon.status["node"]["network"] = {
        "key": "", "name": "home", "address": "100.64.0.3/16", "not_after": now + 90 * 86400, "revoked": 1,
        "members_known": 2, "news_refused": 0,
        "members": [{"name": "office", "node_id": GW_KEY, "ipv4": "100.64.0.4", "connected": True, "found": "dht",
                     "record_seen": now - 12, "not_after": now + 86400},
                    {"name": "cabin\n<b>", "node_id": encode_node_id(bytes(32)), "ipv4": "100.64.0.5",
                     "connected": False, "found": "news", "record_seen": None, "not_after": now}]}
    page = client.get("/").get_data(as_text=True)
    assert "Mesh network" in page and "member home 100.64.0.3/16" in page
    assert time.strftime("%Y-%m-%d", time.gmtime(now + 90 * 86400)) in page
    row = page.split('data-member-key="')[1]
    assert all(x in row.split("</tr>")[0] for x in ("office", "100.64.0.4", "connected", "dht", "12 s ago"))
    assert "cabin\\u000a&lt;b&gt;" in page and "cabin\n" not in page, "a name is shown, never obeyed"
    summary = client.get("/api/summary").get_json()
    assert [m["found"] for m in summary["network"]["members"]] == ["dht", "news"]


def test_dashboard_shows_the_systems_health(client: FlaskClient, daemon: FakeDaemon) -> None:
    set_up(client)
    assert "<p data-field=\"system\">-</p>" in client.get("/").get_data(as_text=True), "no health reported"
    daemon.status["health"] = {"cpu_load": [0.12, 0.5], "memory_total_bytes": 4 << 30,
                               "memory_available_bytes": 3 << 30, "temperatures_c": {"thermal_zone0:cpu": 51.4},
                               "uptime_s": 7200, "process_rss_bytes": 40 << 20, "process_open_fds": 23}
    expected = "CPU 12% 50% · memory 3072 of 4096 MiB free · 51 °C · up 2.0 h · daemon 40 MiB, 23 fds"
    assert expected in client.get("/").get_data(as_text=True)
    assert client.get("/api/summary").get_json()["system"] == expected


HOSTILE_NAMES = ["wan0\r\n", "wan0\n", "wan0\r", "a\x00b", "<img src=x onerror=alert(1)>", 'x" data-wan-key="w0',
                 "wan0,wan1", "\u202eevil", "w" * 500]


class _Attributes(html.parser.HTMLParser):
    """Collects the values of one attribute as a browser's parser would read them."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name, self.values = name, []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.values += [value or "" for key, value in attrs if key == self.name]


def test_dashboard_survives_any_wan_name_a_peer_sends(client: FlaskClient, daemon: FakeDaemon) -> None:
    set_up(client)
    template = daemon.status["peers"][0]["paths"][0]
    daemon.status["peers"][0]["paths"] = [{**template, "wan": name} for name in HOSTILE_NAMES]
    daemon.events = [{"time": 1.0, "level": "info", "message": "peer gw: path on WAN x\nwarning forged line"}]
    summary = client.get("/api/summary").get_json()
    keys = [w["key"] for w in summary["wans"]]
    assert len(set(keys)) == len(HOSTILE_NAMES)  # one card per name, even for names a parser would merge
    assert all(re.fullmatch(r"w[0-9a-f]{16}", key) for key in keys)
    for wan in summary["wans"]:
        assert not any(ord(c) < 0x20 or c == "\u202e" for c in wan["name"]) and len(wan["name"]) <= 40
    assert "\n" not in summary["log"][0]["message"] and "\\u000awarning" in summary["log"][0]["message"]
    page = client.get("/").get_data(as_text=True)
    assert "<img src=x" not in page and 'data-wan-key="w0"' not in page
    # dashboard.js finds the cards by these keys: what the browser reads from the page equals the JSON.
    found = _Attributes("data-wan-key")
    found.feed(page)
    assert sorted(v for v in found.values if v) == sorted(keys)
    graphs = _Attributes("data-graph")
    graphs.feed(page)
    assert sorted(v for v in graphs.values if v != "total" and v) == sorted(keys)


def test_without_a_daemon_pages_say_so_and_nothing_changes(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = web_app(state, monkeypatch).test_client()
    set_up(client)
    response = client.get("/")
    page = response.get_data(as_text=True)
    assert response.status_code == 503 and "daemon is not answering" in page
    assert 'id="daemon-down" data-summary-url="/api/summary"' in page  # dashboard.js loads it again later
    assert client.get("/api/summary").status_code == 503
    # The config is the daemon's: without it the settings cannot be shown or changed.
    before = _config_text(state)
    settings_page = client.get("/settings/")
    assert settings_page.status_code == 503 and "daemon is not answering" in settings_page.get_data(as_text=True)
    assert client.get("/setup/ports").status_code == 503
    assert _config_text(state) == before


def _config_text(state: Path) -> str:
    return (state / "quicether.toml").read_text()


def test_settings_forms_change_the_config_or_explain_why_not(client: FlaskClient, daemon: FakeDaemon,
                                                             state: Path) -> None:
    set_up(client)
    ports_step(client)
    post_form(client, "/setup/connect", {"invite": INVITE, "mode": "aggregate"})
    page = "/settings/"
    assert client.get(page).status_code == 200
    bad_lan = post_form(client, "/settings/lan", {"address": "300.1.1.1/24", "dhcp": "on"}, page)
    assert bad_lan.status_code == 400 and "lan.address" in bad_lan.get_data(as_text=True)
    assert post_form(client, "/settings/lan", {"address": "192.168.7.1/24", "kill_switch": "on",
                                           "direct": "192.168.1.0/24, 10.9.9.9"}, page).status_code == 302
    lan = load(state / "quicether.toml").lan
    assert lan is not None and lan.kill_switch and not lan.dhcp
    assert lan.direct == ["192.168.1.0/24", "10.9.9.9/32"]
    assert post_form(client, "/settings/acls", {"action": "deny", "from": "gw", "to": "lan", "protocol": "tcp",
                                            "port": "22"}, page).status_code == 302
    bad_acl = post_form(client, "/settings/acls", {"action": "deny", "port": "22"}, page)
    assert bad_acl.status_code == 400 and "a port needs protocol" in bad_acl.get_data(as_text=True)
    assert load(state / "quicether.toml").acls[0].port == 22
    assert post_form(client, "/settings/classes", {"peer": "0", "protocol": "udp", "port": "5060",
                                               "mode": "redundant"}, page).status_code == 302
    bad_class = post_form(client, "/settings/classes", {"peer": "0", "port": "sip", "mode": "redundant"}, page)
    assert bad_class.status_code == 400 and "not a whole number" in bad_class.get_data(as_text=True)
    assert load(state / "quicether.toml").peers[0].classes[0].port == 5060
    assert post_form(client, "/settings/wans", {"role_0": "backup", "rate_0": "", "role_1": "primary",
                                            "remove_1": "on"}, page).status_code == 302
    assert [(w.device, w.backup) for w in load(state / "quicether.toml").wans] == [("eth1", True)]
    before = _config_text(state)
    # Only ports this router has can become WANs: "*" would be an nftables wildcard matching every port.
    for device in ("*", "eth9"):
        refused = post_form(client, "/settings/wans", {"role_0": "backup", "add_device": device}, page)
        assert refused.status_code == 400 and "not a port of this router" in refused.get_data(as_text=True)
    assert _config_text(state) == before
    bad_toml = post_form(client, "/settings/toml", {"toml": "[node]\npath_mtu = 10\n"}, page)
    assert bad_toml.status_code == 400 and "node.path_mtu" in bad_toml.get_data(as_text=True)
    assert _config_text(state) == before
    download = client.get("/settings/config.toml")
    assert download.get_data(as_text=True) == before and "attachment" in download.headers["Content-Disposition"]
    restore = client.post("/settings/restore", data={"csrf_token": csrf_token(client, page), "config": (
        io.BytesIO(b"[node\n"), "broken.toml")}, content_type="multipart/form-data")
    assert restore.status_code == 400 and "not valid TOML" in restore.get_data(as_text=True)
    # The ACL names the peer: removing the peer first is refused with the ACL's field.
    still_used = post_form(client, "/settings/peers/0", {"action": "remove"}, page)
    assert still_used.status_code == 400 and "acl[0].from" in still_used.get_data(as_text=True)
    assert post_form(client, "/settings/acls", {"remove": "0"}, page).status_code == 302
    assert post_form(client, "/settings/peers/0", {"action": "remove"}, page).status_code == 302
    after = load(state / "quicether.toml")
    assert after.peers == [] and after.lan is not None and after.lan.exit_peer is None
    assert daemon.commands.count("apply_config") >= 6 and "reload" not in daemon.commands


def test_a_daemon_refusing_the_reload_is_reported(client: FlaskClient, daemon: FakeDaemon) -> None:
    set_up(client)
    daemon.reload_error = "q.toml: lan.device: eth9 does not exist"
    response = post_form(client, "/settings/acls", {"acl_default": "deny"}, "/settings/")
    assert response.status_code == 302
    assert "daemon refused to reload: q.toml: lan.device" in client.get("/settings/").get_data(as_text=True)


def test_the_uis_state_moves_into_its_own_directory(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    esp = tmp_path / "esp" / "quicether-setup-code.txt"
    esp.parent.mkdir()
    esp.write_text("code")
    # As a web UI from before kept them: in the state dir itself, the code record listing its copies.
    (state / auth.PASSWORD_FILE).write_text('{"algorithm": "scrypt"}')
    (state / "webui-sessions.json").write_text("{}")
    (state / setup_code.CODE_FILE).write_text(json.dumps({"code": "AAAA-BBBB-CCCC", "copies": [str(esp)]}))
    ui = setup_code.prepare_ui_dir(state)
    assert ui == state / "webui" and sorted(p.name for p in ui.iterdir()) == sorted(
        [auth.PASSWORD_FILE, "webui-sessions.json", setup_code.CODE_FILE])
    assert not (state / auth.PASSWORD_FILE).exists() and setup_code.read(state) == "AAAA-BBBB-CCCC"
    assert oct(ui.stat().st_mode & 0o777) == "0o700"
    ids = setup_code.ui_ids()
    if ids is not None:  # the UI's user owns its directory and files; the state dir only lets its group pass
        assert all((p.stat().st_uid, p.stat().st_gid) == ids for p in [ui, *ui.iterdir()])
        assert state.stat().st_gid == ids[1] and oct(state.stat().st_mode & 0o777) == "0o710"
    # The copies went to root's own list: consuming the code (as root) still deletes them.
    assert setup_code.remove_copies_if_set_up(state) == [str(esp)] and not esp.exists()
    assert setup_code.prepare_ui_dir(state) == ui  # again: nothing to move, nothing changes


def test_root_trusts_nothing_the_uis_directory_says(tmp_path: Path) -> None:
    state = tmp_path / "state"
    ui = setup_code.prepare_ui_dir(state)
    victim = tmp_path / "precious"
    victim.write_text("root's")
    # A compromised UI names a file for root to delete, and links another into its directory.
    (ui / setup_code.CODE_FILE).write_text(json.dumps({"code": "AAAA-BBBB-CCCC", "copies": [str(victim)]}))
    (ui / auth.PASSWORD_FILE).write_text("{}")
    linked = tmp_path / "root-owned"
    linked.write_text("x")
    (ui / "link").hardlink_to(linked)
    (ui / "symlink").symlink_to(victim)
    setup_code.prepare_ui_dir(state)
    assert setup_code.ensure(state) is None  # set up: root consumes the code
    assert victim.read_text() == "root's" and linked.stat().st_uid == 0 and victim.stat().st_uid == 0
    assert not (ui / setup_code.CODE_FILE).exists()


def test_web_ui_metrics_need_a_session_or_the_admin_password(client: FlaskClient, app: Flask,
                                                             daemon: FakeDaemon) -> None:
    assert client.get("/metrics").status_code == 401, "no password set yet: nothing to check against"
    set_up(client)
    anonymous = app.test_client()
    refused = anonymous.get("/metrics")
    assert refused.status_code == 401 and "Basic" in refused.headers["WWW-Authenticate"]
    wrong = base64.b64encode(b"prometheus:not-the-password").decode()
    assert anonymous.get("/metrics", headers={"Authorization": f"Basic {wrong}"}).status_code == 401
    right = base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode()
    scraped = anonymous.get("/metrics", headers={"Authorization": f"Basic {right}"})
    assert scraped.status_code == 200 and scraped.mimetype == "text/plain"
    assert samples_of(scraped.get_data(as_text=True))["quicether_refused_handshakes_total"] == \
        SAMPLE_STATUS["node"].get("refused_handshakes", 0)
    assert _log_in(app).get("/metrics").status_code == 200
    # Wrong passwords count against the login's guessing limit: after enough, even the right one waits.
    for _ in range(20):
        anonymous.get("/metrics", headers={"Authorization": f"Basic {wrong}"})
    assert anonymous.get("/metrics", headers={"Authorization": f"Basic {right}"}).status_code == 429
