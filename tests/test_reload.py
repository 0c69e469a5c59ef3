"""What a reload changes, computed from the old and the new config (pure, no root)."""

from __future__ import annotations

from pathlib import Path

from quicether.config import Config, parse
from quicether.daemon.reload import diff
from quicether.identity import encode_node_id

A, B = encode_node_id(bytes(32)), encode_node_id(bytes([1] * 32))
BASE = f"""
[node]
address = "10.99.0.1/24"
detect_wans = true
[lan]
device = "eth0"
exit = "a"
[[peer]]
name = "a"
key = "{A}"
endpoint = "198.18.0.2:4433"
allowed_ips = ["10.99.0.2/32", "0.0.0.0/0"]
"""


def _config(text: str) -> Config:
    return parse(text, Path("q.toml"))


def test_the_same_config_changes_nothing() -> None:
    changes = diff(_config(BASE), _config(BASE))
    assert changes.changes == []


def test_a_new_peer_and_a_changed_mode_touch_only_the_peers_and_the_firewall() -> None:
    new = BASE.replace('allowed_ips = ["10.99.0.2/32", "0.0.0.0/0"]',
                       'allowed_ips = ["10.99.0.2/32", "0.0.0.0/0"]\nmode = "redundant"')
    new += f'[[peer]]\nname = "b"\nkey = "{B}"\nallowed_ips = ["10.99.0.3/32"]\n'
    changes = diff(_config(BASE), _config(new))
    assert [p.name for p in changes.peers_added] == ["b"] and [p.name for p in changes.peers_changed] == ["a"]
    assert not (changes.restart or changes.wans or changes.dnsmasq or changes.webui or changes.exit)
    assert changes.peers_changed[0].mode == "redundant"


def test_removing_the_exit_peer_changes_the_exit_and_keeps_the_node() -> None:
    new = BASE.replace('exit = "a"\n', "").replace('"0.0.0.0/0"', '"10.0.0.0/8"')
    changes = diff(_config(BASE), _config(new))
    assert changes.exit and changes.firewall and not changes.restart
    assert [p.name for p in changes.peers_changed] == ["a"]
    gone = diff(_config(new), _config(new.split("[[peer]]")[0]))
    assert [p.name for p in gone.peers_removed] == ["a"] and not gone.restart


def test_lan_wan_and_web_ui_settings_map_to_their_parts() -> None:
    old = _config(BASE)
    assert diff(old, _config(BASE.replace('device = "eth0"', 'device = "eth0"\ndns = false'))).dnsmasq
    moved = diff(old, _config(BASE.replace('device = "eth0"', 'device = "eth0"\naddress = "192.168.9.1/24"')))
    assert moved.lan_address and moved.dnsmasq and moved.webui and not moved.restart
    assert diff(old, _config(BASE + '[webui]\nport = 8080\n')).webui
    wans = diff(old, _config(BASE.replace("detect_wans = true", 'detect_wans = true\n[[wan]]\ndevice = "eth1"')))
    assert wans.wans and not wans.restart and not wans.dnsmasq


def test_settings_of_the_node_itself_need_a_restart() -> None:
    old = _config(BASE)
    assert diff(old, _config(BASE.replace("10.99.0.1/24", "10.99.0.5/24"))).restart == ["address"]
    assert diff(old, _config(BASE.replace("[node]", '[node]\nlisten = "0.0.0.0:4500"'))).restart == ["listen"]
    assert "lan" in diff(old, _config(BASE.split("[lan]")[0])).restart
    assert "wan" in diff(old, _config(BASE.replace("detect_wans = true", "detect_wans = false"))).restart
