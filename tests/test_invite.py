"""Invite codes and config edits (no root): what the wizard and `quicether invite/join/add-peer` rely on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from quicether import config_edit
from quicether.config import ConfigError, load
from quicether.identity import encode_node_id, generate
from quicether.invite import Invite, InviteError, decode

KEY = encode_node_id(bytes(range(32)))


def _invite(**changes: object) -> Invite:
    fields: dict[str, object] = {"key": KEY, "endpoints": ["203.0.113.5:4433"], "network": "10.99.0.0/24",
                                 "name": "gw", "exit": True, "peer_address": "10.99.0.1/24", **changes}
    return Invite(**fields)  # type: ignore[arg-type]


def test_invite_round_trips_and_survives_line_breaks() -> None:
    code = _invite().encode()
    assert code.startswith("qei1.")
    assert decode(code) == _invite()
    assert decode(code[:20] + "\n  " + code[20:]) == _invite()


@pytest.mark.parametrize(("code", "message"), [
    ("", "empty"),
    ("qe1abcdef", "not an invite code"),
    ("qei1.!!!!", "damaged"),
    ("qei1.AAAA", "damaged or incomplete"),
])
def test_bad_codes_say_what_is_wrong(code: str, message: str) -> None:
    with pytest.raises(InviteError, match=message):
        decode(code)


def test_a_changed_character_is_caught_by_the_checksum() -> None:
    code = _invite().encode()
    i = len(code) // 2
    damaged = code[:i] + ("A" if code[i] != "A" else "B") + code[i + 1:]
    with pytest.raises(InviteError, match="damaged"):
        decode(damaged)


def test_an_invite_with_a_bad_key_or_endpoint_is_refused() -> None:
    with pytest.raises(InviteError, match="node id"):
        decode(_invite(key="qe1zzz").encode())
    with pytest.raises(InviteError, match="endpoint"):
        decode(_invite(endpoints=["gateway.example:4433"]).encode())


def test_joining_adds_the_peer_and_the_exit_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "q.toml"
    path.write_text('[node]\nstate_dir = "/tmp/x"\n[lan]\ndevice = "eth0"\n[[wan]]\ndevice = "eth1"\n'
                    '[[peer]]\nname = "other"\nkey = "' + encode_node_id(bytes(32)) + '"\n'
                    '[[peer.class]]\nprotocol = "udp"\nport = 5060\nmode = "redundant"\n')
    doc = config_edit.add_invited_peer(config_edit.load_document(path), _invite(), address="10.99.0.7/24")
    config = config_edit.save(doc, path)
    assert config.address == "10.99.0.7/24" and config.lan is not None and config.lan.exit_peer == "gw"
    gw = next(p for p in config.peers if p.name == "gw")
    assert gw.endpoint == "203.0.113.5:4433" and gw.allowed_ips == ["10.99.0.0/24", "0.0.0.0/0"]
    other = next(p for p in config.peers if p.name == "other")
    assert other.classes[0].port == 5060  # nested tables survive the rewrite
    assert load(path) == config and oct(path.stat().st_mode & 0o777) == "0o600"


def test_a_bad_edit_never_reaches_the_disk(tmp_path: Path) -> None:
    path = tmp_path / "q.toml"
    path.write_text('[node]\naddress = "10.99.0.5/24"\n')
    with pytest.raises(ConfigError, match="not inside the invite's network"):
        config_edit.add_invited_peer({}, _invite(), address="10.1.0.1/24")
    with pytest.raises(ConfigError, match="node.path_mtu"):
        config_edit.save({"node": {"path_mtu": 10}}, path)
    assert path.read_text() == '[node]\naddress = "10.99.0.5/24"\n'


def test_suggested_address_is_in_the_network_and_not_the_inviters() -> None:
    invite = _invite(network="10.99.0.0/29", peer_address="10.99.0.1/29")
    for key in (bytes(32), bytes([255] * 32), bytes(range(32))):
        address = config_edit.suggest_address(invite, key)
        assert address.endswith("/29") and address != "10.99.0.1/29"
        assert address.split("/")[0] not in ("10.99.0.0", "10.99.0.7")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "quicether", *args], capture_output=True, text=True, timeout=30)


def test_invite_join_and_add_peer_commands(tmp_path: Path) -> None:
    gw_dir, site_dir = tmp_path / "gw", tmp_path / "site"
    gw_id = generate(gw_dir / "node.key").node_id
    site_id = generate(site_dir / "node.key").node_id
    gw_conf, site_conf = gw_dir / "q.toml", site_dir / "q.toml"
    gw_conf.write_text(f'[node]\nrole = "gateway"\naddress = "10.99.0.1/24"\nstate_dir = "{gw_dir}"\n'
                       '[gateway]\ninternet = "eth0"\n')
    site_conf.write_text(f'[node]\nstate_dir = "{site_dir}"\n[lan]\ndevice = "eth0"\n')
    refused = _cli("invite", "-c", str(gw_conf))
    assert refused.returncode == 1 and "--endpoint" in refused.stderr
    made = _cli("invite", "-c", str(gw_conf), "--endpoint", "198.51.100.7:4433")
    assert made.returncode == 0, made.stderr
    code = made.stdout.strip()
    assert decode(code).key == gw_id and decode(code).exit
    bad = _cli("join", "qei1.nonsense", "-c", str(site_conf))
    assert bad.returncode == 1 and "damaged" in bad.stderr
    # The exit is an explicit choice: joining alone does not route the LAN's internet traffic anywhere.
    plain = _cli("join", code, "-c", str(site_conf))
    assert plain.returncode == 0 and "--exit" in plain.stdout, plain.stderr
    site = load(site_conf)
    assert site.lan is not None and site.lan.exit_peer is None and "0.0.0.0/0" not in site.peers[0].allowed_ips
    joined = _cli("join", code, "--exit", "-c", str(site_conf))
    assert joined.returncode == 0, joined.stderr
    site = load(site_conf)
    assert len(site.peers) == 1  # the same node joined again: updated, not doubled
    assert site.peers[0].node_id == decode(code).key and site.lan is not None and site.lan.exit_peer == "gateway"
    assert site.address is not None and site.address.startswith("10.99.0.")
    assert f"quicether add-peer SITE-NAME {site_id} --allowed-ips {site.address.split('/')[0]}/32,192.168.50.0/24" \
        in joined.stdout
    added = _cli("add-peer", "site-a", site_id, "--allowed-ips", "10.99.0.9/32,192.168.50.0/24", "-c", str(gw_conf))
    assert added.returncode == 0, added.stderr
    assert load(gw_conf).peers[0].allowed_ips == ["10.99.0.9/32", "192.168.50.0/24"]
    wrong = _cli("add-peer", "site-b", "qe1bad", "-c", str(gw_conf))
    assert wrong.returncode == 1 and "peer[1].key" in wrong.stderr
    # A second node under an existing name is refused (it would take over site-a's routes and ACLs) ...
    other_id = encode_node_id(bytes([7] * 32))
    clash = _cli("add-peer", "site-a", other_id, "--allowed-ips", "10.99.0.10/32", "-c", str(gw_conf))
    assert clash.returncode == 1 and "already named 'site-a'" in clash.stderr and "--replace" in clash.stderr
    assert [p.node_id for p in load(gw_conf).peers] == [site_id]
    # ... unless asked; a name that an ACL rule would read as something else is refused outright.
    assert _cli("add-peer", "site-a", other_id, "--replace", "-c", str(gw_conf)).returncode == 0
    assert [p.node_id for p in load(gw_conf).peers] == [other_id]
    for bad in ("group:x", "0.0.0.0/0", "lan", "10.0.0.1", "a b"):
        refused_name = _cli("add-peer", bad, site_id, "-c", str(gw_conf))
        assert refused_name.returncode == 1 and "peer name" in refused_name.stderr, bad


@pytest.mark.parametrize("name", ["0.0.0.0/0", "group:x", "lan", "10.0.0.1", "gw\nquicether: WARNING", "x" * 40])
def test_an_invite_whose_name_would_change_acl_rules_or_logs_is_refused(name: str) -> None:
    with pytest.raises(InviteError, match="name"):
        decode(_invite(name=name).encode())


def test_a_second_invite_with_a_taken_name_is_refused_unless_replacing(tmp_path: Path) -> None:
    doc = config_edit.add_invited_peer({}, _invite(), address="10.99.0.7/24")
    impostor = _invite(key=encode_node_id(bytes([9] * 32)), exit=True)
    with pytest.raises(ConfigError, match="already named 'gw'"):
        config_edit.add_invited_peer(doc, impostor, address=None)
    replaced = config_edit.add_invited_peer(doc, impostor, address=None, replace=True)
    assert [p["key"] for p in replaced["peer"]] == [impostor.key]


@pytest.mark.parametrize(("changes", "message"), [
    ({"network": "0.0.0.0/1"}, "not a private IPv4 network"),   # would route half the internet to the inviter
    ({"network": "8.8.8.0/24"}, "not a private IPv4 network"),
    ({"network": "fd00::/64"}, "not a private IPv4 network"),
    ({"peer_address": "10.1.0.1/24"}, "not inside 10.99.0.0/24"),
    ({"peer_address": "nonsense"}, "not inside"),
])
def test_an_invite_with_a_network_no_overlay_should_have_is_refused(changes: dict[str, str], message: str) -> None:
    with pytest.raises(InviteError, match=message):
        decode(_invite(**changes).encode())


def test_a_network_invite_round_trips_and_bad_ones_say_what_is_wrong() -> None:
    from quicether.invite import NetworkInvite, decode_network, is_network_invite

    good = NetworkInvite(network="home", network_key=KEY, admin_key=KEY, endpoints=["203.0.113.5:4433"],
                         secret="A" * 43, expires_at=1_800_000_000, name="site-a")
    code = good.encode()
    assert is_network_invite(code) and not is_network_invite(_invite().encode())
    assert decode_network(code[:40] + "\n" + code[40:]) == good and len(good.seed) == 32
    for changes, message in [({"secret": "AAAA"}, "secret is damaged"), ({"endpoints": []}, "no endpoint"),
                             ({"admin_key": "qe1nope"}, "admin node id is invalid"),
                             ({"name": "Site A"}, "member name"), ({"endpoints": ["nowhere"]}, "not an IP address")]:
        with pytest.raises(InviteError, match=message):
            decode_network(NetworkInvite(**{**good.__dict__, **changes}).encode())  # type: ignore[arg-type]
    with pytest.raises(InviteError, match="should start with 'qej1.'"):
        decode_network(_invite().encode())
