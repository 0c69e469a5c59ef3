"""Config and identity parsing: every bad input gives one message naming the field (no root needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quicether.config import ConfigError, parse
from quicether.identity import IdentityError, decode_node_id, encode_node_id, generate, load

KEY = encode_node_id(bytes(range(32)))


def _cfg(text: str) -> str:
    return f'[node]\nlisten = "127.0.0.1:4433"\n\n{text}'


def test_node_id_round_trip_and_errors() -> None:
    assert KEY.startswith("qe1")
    assert decode_node_id(KEY) == bytes(range(32))
    assert decode_node_id(KEY.upper().replace("QE1", "qe1")) == bytes(range(32))
    with pytest.raises(IdentityError, match="start with"):
        decode_node_id("xx" + KEY)
    with pytest.raises(IdentityError, match="wrong length"):
        decode_node_id(KEY[:-8])
    with pytest.raises(IdentityError, match="base32"):
        decode_node_id("qe1!!!!")


def test_valid_config_parses() -> None:
    cfg = parse(_cfg(f'[[peer]]\nname = "gw"\nkey = "{KEY}"\nendpoint = "198.18.0.2:4433"\n'
                     'allowed_ips = ["10.99.0.2/32"]\n'), Path("t.toml"))
    assert cfg.listen == "127.0.0.1:4433" and cfg.tun == "qe0" and cfg.path_mtu == 1500
    assert cfg.io_threads is None, "auto unless set"
    assert parse('[node]\nio_threads = 3\n', Path("t.toml")).io_threads == 3
    assert cfg.peers[0].key == bytes(range(32)) and cfg.peers[0].allowed_ips == ["10.99.0.2/32"]


@pytest.mark.parametrize("text,field", [
    ("[node\n", "not valid TOML"),
    ('[node]\nlisten = "0.0.0.0:4433"\ncolour = "blue"\n', "node.colour: unknown setting"),
    ('[node]\nlisten = "nowhere"\n', "node.listen"),
    ('[node]\ntun = "a-name-far-too-long-for-linux"\n', "node.tun"),
    ('[node]\npath_mtu = 100\n', "node.path_mtu"),
    ('[node]\nio_threads = 0\n', "node.io_threads: must be \"auto\" or an integer from 1 to 8"),
    ('[node]\nio_threads = "two"\n', "node.io_threads"),
    ('[node]\nio_threads = true\n', "node.io_threads"),
    ('[node]\naddress = "10.0.0.300/24"\n', "node.address"),
    ('[[peer]]\nname = "x"\n', "peer[0].key: missing"),
    ('[[peer]]\nkey = "qe1aaaa"\n', "peer[0].key"),
    (f'[[peer]]\nkey = "{KEY}"\nendpoint = "1.2.3.4"\n', "peer[0].endpoint"),
    (f'[[peer]]\nkey = "{KEY}"\nallowed_ips = ["banana"]\n', "peer[0].allowed_ips"),
    (f'[[peer]]\nkey = "{KEY}"\nmtu = 3\n', "peer[0].mtu: unknown setting"),
    (f'[[peer]]\nkey = "{KEY}"\n[[peer]]\nkey = "{KEY}"\n', "peer[1].key: the same peer is listed twice"),
])
def test_bad_config_names_the_field(text: str, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse(text, Path("bad.toml"))


def test_keygen_writes_private_file_and_refuses_overwrite(tmp_path: Path) -> None:
    key_path = tmp_path / "state" / "node.key"
    made = generate(key_path)
    assert os.stat(key_path).st_mode & 0o777 == 0o600
    assert load(key_path) == made
    with pytest.raises(IdentityError, match="already exists"):
        generate(key_path)


def test_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    key_path = tmp_path / "node.key"
    generate(key_path)
    os.chmod(key_path, 0o644)
    with pytest.raises(IdentityError, match="readable by others"):
        load(key_path)


def test_damaged_key_is_refused(tmp_path: Path) -> None:
    key_path = tmp_path / "node.key"
    key_path.write_text("c2hvcnQ=\n")
    os.chmod(key_path, 0o600)
    with pytest.raises(IdentityError, match="expected a 32-byte"):
        load(key_path)
    with pytest.raises(IdentityError, match="no node key"):
        load(tmp_path / "missing.key")


def test_wans_modes_and_class_rules_parse() -> None:
    cfg = parse(_cfg(
        '[[wan]]\ndevice = "eth1"\ngateway = "192.0.2.1"\n'
        '[[wan]]\ndevice = "eth2"\nname = "lte"\nrole = "backup"\naddress = "198.51.100.7"\n'
        f'[[peer]]\nkey = "{KEY}"\nmode = "lowest-rtt"\nrealtime_mode = "aggregate"\n'
        '[[peer.class]]\nprotocol = "udp"\nport = 5060\nmode = "redundant"\n'
        '[[peer.class]]\ndscp = 46\nmode = "redundant"\n'), Path("t.toml"))
    assert [(w.name, w.device, w.gateway, w.address, w.backup) for w in cfg.wans] == [
        ("eth1", "eth1", "192.0.2.1", None, False), ("lte", "eth2", None, "198.51.100.7", True)]
    peer = cfg.peers[0]
    assert (peer.mode, peer.realtime_mode) == ("lowest-rtt", "aggregate")
    assert [(c.protocol, c.port, c.dscp, c.mode) for c in peer.classes] == [
        (17, 5060, None, "redundant"), (None, None, 46, "redundant")]
    assert cfg.congestion == "loss-tolerant"


@pytest.mark.parametrize("text,field", [
    ('[[wan]]\nname = "x"\n', "wan[0].device"),
    ('[[wan]]\ndevice = "eth1"\nrole = "spare"\n', "wan[0].role"),
    ('[[wan]]\ndevice = "eth1"\ngateway = "nope"\n', "wan[0].gateway"),
    ('[[wan]]\ndevice = "eth1"\n[[wan]]\ndevice = "eth1"\n', "wan[1].name"),
    (f'[[peer]]\nkey = "{KEY}"\nmode = "fastest"\n', "peer[0].mode"),
    (f'[[peer]]\nkey = "{KEY}"\n[[peer.class]]\nport = 70000\nmode = "redundant"\n', r"peer[0].class[0].port"),
    (f'[[peer]]\nkey = "{KEY}"\n[[peer.class]]\nprotocol = "sctp"\nmode = "redundant"\n', "class[0].protocol"),
    (f'[[peer]]\nkey = "{KEY}"\n[[peer.class]]\nport = 53\n', "class[0].mode: missing"),
    ('[node]\ncongestion = "reno"\n', "node.congestion"),
    # Rate caps the kernel's tbf cannot take used to kill the daemon at start (division by zero, u32).
    ('[[wan]]\ndevice = "eth1"\nrate_mbit = 0.0001\n', "wan[0].rate_mbit"),
    ('[[wan]]\ndevice = "eth1"\nrate_mbit = 40000\n', "wan[0].rate_mbit"),
    # "*" is an nftables wildcard: a port named so would match every port, the LAN included.
    ('[[wan]]\ndevice = "*"\n', "wan[0].device"),
    ('[[wan]]\ndevice = "eth*"\n', "wan[0].device"),
    ('[[wan]]\ndevice = "eth1:0"\n', "wan[0].device"),
    ('[[wan]]\ndevice = "eth1"\n[[wan]]\ndevice = "eth1"\nname = "other"\n', "wan[1].device"),
    ('[node]\ntun = "qe 0"\n', "node.tun"),
    ('[lan]\ndevice = "*"\n', "lan.device"),
    # A DHT server on a random port could not be reached through the firewall.
    ('[discovery]\nserver = true\n', "discovery.server: a DHT server needs a fixed port"),
    ('[nat]\nport_mapping = "no"\n', "nat.port_mapping: must be true or false"),
    ('[nat]\nupnp = true\n', "nat.upnp: unknown setting"),
    ('nat = true\n', "nat: [nat] must be a table"),
])
def test_bad_wan_and_mode_settings_name_the_field(text: str, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse(text, Path("bad.toml"))


def test_port_mapping_is_on_unless_turned_off() -> None:
    assert parse("", Path("a.toml")).nat.port_mapping
    assert parse("[nat]\n", Path("a.toml")).nat.port_mapping
    assert not parse("[nat]\nport_mapping = false\n", Path("a.toml")).nat.port_mapping
