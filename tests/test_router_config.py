"""The router part of the config ([lan], [gateway], [[acl]], node.role) and the dnsmasq command it gives,
without root."""

from __future__ import annotations

from pathlib import Path

import pytest

from quicether.config import Config, ConfigError, parse
from quicether.daemon.dnsmasq import build_args
from quicether.identity import encode_node_id

KEY = encode_node_id(bytes(32))
GW_PEER = f"""
[[peer]]
name = "gw"
key = "{KEY}"
allowed_ips = ["0.0.0.0/0"]
"""


def _parse(text: str) -> Config:
    return parse(text, Path("q.toml"))


def test_lan_defaults_are_the_appliance_defaults() -> None:
    lan = _parse('[lan]\ndevice = "eth0"\n').lan
    assert lan is not None
    assert (lan.address, lan.dhcp_range, lan.dhcp, lan.dns, lan.kill_switch) == (
        "192.168.50.1/24", ("192.168.50.100", "192.168.50.250"), True, True, False)
    assert lan.subnet == "192.168.50.0/24" and lan.exit_peer is None


def test_a_small_lan_gets_a_pool_inside_it() -> None:
    lan = _parse('[lan]\ndevice = "eth0"\naddress = "10.1.1.1/28"\n').lan
    assert lan is not None and lan.dhcp_range == ("10.1.1.7", "10.1.1.14")


def test_gateway_with_exit_and_port_forward() -> None:
    config = _parse('[node]\nrole = "gateway"\n[gateway]\ninternet = "ens3"\n'
                    '[[gateway.forward]]\nport = 8443\nto = "10.0.50.10:443"\n')
    assert config.role == "gateway" and config.gateway is not None
    assert config.gateway.internet == "ens3"
    assert (config.gateway.forwards[0].protocol, config.gateway.forwards[0].to_port) == ("tcp", 443)


@pytest.mark.parametrize(("text", "message"), [
    ('[lan]\ndevice = "eth0"\nexit = "nobody"\n', "lan.exit: no peer named 'nobody'"),
    ('[lan]\ndevice = "eth0"\nexit = "gw"\n' + GW_PEER.replace('"0.0.0.0/0"', '"10.99.0.2/32"'),
     "needs \"0.0.0.0/0\" in its allowed_ips"),
    ('[lan]\ndevice = "eth0"\naddress = "192.168.50.0/24"\n', "not a usable host address"),
    ('[lan]\ndevice = "eth0"\ndhcp_range = ["192.168.50.1", "192.168.50.9"]\n', "holds the LAN address"),
    ('[lan]\ndevice = "eth0"\ndhcp_range = ["192.168.60.1", "192.168.60.9"]\n', "not an ascending range inside"),
    ('[lan]\ndevice = "eth0"\ndhcp = "yes"\n', "lan.dhcp: expected true or false"),
    ('[lan]\ndevice = "eth0"\ndirect = ["modem"]\n', "lan.direct: 'modem' is not an IPv4 prefix"),
    ('[lan]\ndevice = "wan0"\n[[wan]]\ndevice = "wan0"\n', "lan.device: wan0 is also a WAN"),
    ('[gateway]\ninternet = "eth0"\n', 'only for role = "gateway"'),
    ('[node]\nrole = "gateway"\n[gateway]\n[[gateway.forward]]\nport = 80\nto = "10.0.0.1:80"\n',
     "port forwards need gateway.internet"),
    ('[node]\nrole = "gateway"\n[gateway]\ninternet = "e"\n[[gateway.forward]]\nport = 80\nto = "host"\n',
     'gateway.forward[0].to: expected "address:port"'),
    ('[node]\nrole = "hub"\n', "node.role: 'hub' is not site or gateway"),
    ('[[acl]]\naction = "deny"\nto = "lan"\n', '"lan" needs a [lan] section'),
    ('[[acl]]\naction = "deny"\nport = 22\n', 'a port needs protocol = "tcp" or "udp"'),
    ('[[acl]]\naction = "drop"\n', "acl[0].action: 'drop' is not allow or deny"),
    ('[[acl]]\naction = "deny"\nfrom = "nowhere"\n', "neither a peer name"),
    ('[[acl]]\naction = "deny"\nfrom = "group:none"\n', "neither a peer name, a peer group"),
    ('[firewall]\nopen = ["ssh"]\n', "firewall.open: 'ssh' is not like"),
    ('[firewall]\nopen = ["tcp/\u00b2"]\n', "firewall.open: 'tcp/\u00b2' is not like"),  # "²".isdigit() is True
    ('[lan]\ndevice = "eth0"\nexit = "group:x"\n' + GW_PEER.replace('name = "gw"', 'name = "gw"\ngroups = ["x"]'),
     "lan.exit: no peer named 'group:x'"),
    ('[firewall]\nopen = ["tcp/0"]\n', "firewall.open: must be a port number"),
    ('[firewall]\nopen = "tcp/22"\n', "firewall.open: expected a list"),
])
def test_bad_router_settings_name_their_field(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _parse(text)
    assert message in str(info.value) and str(info.value).startswith("q.toml")


def test_dnsmasq_serves_only_the_lan_with_the_router_as_gateway_and_dns(tmp_path: Path) -> None:
    lan = _parse('[lan]\ndevice = "eth0"\ndns_servers = ["9.9.9.9"]\n').lan
    assert lan is not None
    args = build_args(lan, tmp_path)
    assert "--interface=eth0" in args and "--bind-interfaces" in args
    assert "--dhcp-range=192.168.50.100,192.168.50.250,255.255.255.0,12h" in args
    assert "--dhcp-option=option:router,192.168.50.1" in args
    assert "--dhcp-option=option:dns-server,192.168.50.1" in args
    assert "--server=9.9.9.9" in args and "--no-resolv" in args
    assert not any(a.startswith("--hostsdir") for a in args), "a node in no network has no member names"
    named = build_args(lan, tmp_path, names_dir=tmp_path / "names")
    assert f"--hostsdir={tmp_path / 'names'}" in named and "--local=/home.arpa/" in named
    # /etc/hosts has the names too (for the node itself), but dnsmasq would keep them from its start on.
    assert "--no-hosts" in named and "--no-hosts" not in args
    assert f"--dhcp-leasefile={tmp_path / 'dhcp.leases'}" in args
    no_dns = _parse('[lan]\ndevice = "eth0"\ndns = false\ndhcp = false\n').lan
    assert no_dns is not None
    assert "--port=0" in build_args(no_dns, tmp_path)
    assert not any(a.startswith("--dhcp") for a in build_args(no_dns, tmp_path))
