"""The wizard joins a mesh network with a network invite code (`qej1.`), through the Flask test client: the
daemon (a stand-in) asks the admin for this node's certificate, routing the LAN chosen in the ports step;
the wizard writes the membership, the admin as a peer and, only when asked, as the LAN's exit; a failed
join is shown in words and writes nothing. Fixtures in conftest.py."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from quicether import _core
from quicether.config import load
from quicether.identity import generate
from tests.webui_fixtures import FakeDaemon, ports_step, post_form, set_up


def _network_invite(state: Path, tmp_path_factory: pytest.TempPathFactory,
                    exit_offered: bool = False) -> tuple[str, dict[str, Any]]:
    """A network invite and the answer a daemon would have got for it from the admin (a real certificate of
    the node in `state`; `exit_offered`: the admin is a gateway with an internet port)."""
    from quicether import joining, network
    from quicether.identity import load as load_identity

    admin_dir = tmp_path_factory.mktemp("admin")
    admin = generate(admin_dir / "node.key")
    net = network.create(admin_dir, "home", admin, admin_name="gw")
    code = network.invite(net, admin, ["198.18.0.2:4433"]).encode()
    member = network.issue(net, load_identity(state / "node.key").public_key, "office")
    joined = joining.Joined(network="home", certificate=base64.b64decode(member.certificate), name="office",
                            address=f"{member.ipv4}/16", admin_name="gw", admin_address="100.64.0.1",
                            bootstrap=["198.18.0.2:6881"], dht=True, exit_offered=exit_offered)
    return code, joining.as_dict(joined)


def test_the_wizard_joins_a_network_through_the_daemon_and_writes_the_membership(
        client: FlaskClient, daemon: FakeDaemon, state: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    code, daemon.join_answer = _network_invite(state, tmp_path_factory)
    set_up(client)
    assert ports_step(client).status_code == 302
    response = post_form(client, "/setup/connect", {"invite": code, "member_name": "office", "mode": "aggregate"})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert daemon.join_requests[-1]["code"] == code and daemon.join_requests[-1]["name"] == "office"
    config = load(state / "quicether.toml")
    assert config.network is not None and config.network.name == "office"
    assert config.address == config.network.address  # from the certificate
    # The admin node's overlay addresses: its IPv4 and its ULA (from the network's and its key).
    assert [(p.name, p.endpoint, p.allowed_ips) for p in config.peers] == [("gw", "198.18.0.2:4433", [
        "100.64.0.1/32", f"{_core.member_ula(config.network.network_key, p.key)}/128"])
        for p in config.peers]
    assert config.discovery.bootstrap == ["198.18.0.2:6881"]
    # The LAN chosen in the ports step is the one the node asks to route; no exit unless asked for.
    assert daemon.join_requests[-1]["lan"] == ["192.168.7.0/24"]
    assert config.lan is not None and config.lan.exit_peer is None


def test_the_wizard_routes_the_lan_through_a_gateway_admin_only_when_asked(
        client: FlaskClient, daemon: FakeDaemon, state: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    code, daemon.join_answer = _network_invite(state, tmp_path_factory, exit_offered=True)
    set_up(client)
    assert ports_step(client).status_code == 302
    response = post_form(client, "/setup/connect", {"invite": code, "mode": "aggregate", "use_exit": "on"})
    assert response.status_code == 200, response.get_data(as_text=True)
    config = load(state / "quicether.toml")
    assert config.lan is not None and config.lan.exit_peer == "gw"
    assert [p.allowed_ips[-1] for p in config.peers] == ["0.0.0.0/0"]


@pytest.mark.parametrize(("code", "refusal", "shown"), [
    ("", "the admin node refused: this invite was already used (on 2026-12-01 10:00 UTC)", "already used"),
    ("", "this invite expired on 2026-11-30 10:00 UTC; ask the admin for a new one", "expired on"),
    ("", "this invite is for network 'home', but this node is a member of another network", "another network"),
    ("damaged", "", "the invite code is damaged"),
])
def test_the_wizard_shows_why_a_network_invite_failed_and_writes_nothing(
        client: FlaskClient, daemon: FakeDaemon, state: Path, tmp_path_factory: pytest.TempPathFactory,
        code: str, refusal: str, shown: str) -> None:
    good, _ = _network_invite(state, tmp_path_factory)
    daemon.join_answer = refusal
    before = (state / "quicether.toml").read_text()
    set_up(client)
    assert ports_step(client).status_code == 302
    pasted = good[:-8] + "AAAAAAAA" if code == "damaged" else good
    response = post_form(client, "/setup/connect", {"invite": pasted, "mode": "aggregate"})
    assert response.status_code == 400
    assert "Invite code: " in response.get_data(as_text=True) and shown in response.get_data(as_text=True)
    assert "apply_config" not in daemon.commands and (state / "quicether.toml").read_text() == before
    assert ("join_network" in daemon.commands) == (code != "damaged"), "a damaged code is refused before asking"
