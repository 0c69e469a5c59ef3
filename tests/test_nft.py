"""The firewall ruleset as data (no root): one atomic transaction that replaces the table, and the rules
each router setting adds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from quicether.config import parse
from quicether.daemon.router import resolve_acls
from quicether.identity import encode_node_id
from quicether.net.nft import TABLE, Acl, Firewall, build_ruleset
from quicether.router_config import PortForward


def _rules(fw: Firewall, chain: str) -> list[str]:
    commands = build_ruleset(fw)["nftables"][1:]
    return [json.dumps(c["add"]["rule"]["expr"]) for c in commands
            if "rule" in c.get("add", {}) and c["add"]["rule"]["chain"] == chain]


def test_ruleset_replaces_the_table_in_one_transaction() -> None:
    commands = build_ruleset(Firewall(4433, "qe0", ["eth1", "eth2"]))["nftables"][1:]
    assert commands[:3] == [{"add": {"table": TABLE}}, {"delete": {"table": TABLE}}, {"add": {"table": TABLE}}]


def test_outside_input_allows_only_established_ndp_and_the_quic_port() -> None:
    rules = _rules(Firewall(4433, "qe0", ["eth1", "eth2"]), "input")
    assert len(rules) == 4
    assert all('{"set": ["eth1", "eth2"]}' in r for r in rules)
    assert '"established"' in rules[0] and '"nd-neighbor-solicit"' in rules[1] and '"right": 4433' in rules[2]
    assert rules[3].endswith('{"drop": null}]')


def test_a_gateway_without_known_outside_ports_leaves_input_alone_but_mss_is_still_clamped() -> None:
    fw = Firewall(4433, "qe0", [])
    assert _rules(fw, "input") == []
    assert sum("maxseg" in r for r in _rules(fw, "forward")) == 2


NOT_INSIDE = '{"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": {"set": ["lo", "qe0", "lan"]}}}'


def test_a_router_is_default_deny_on_every_port_but_lan_loopback_and_tunnel_before_any_wan_is_known() -> None:
    # No WAN known yet (detect_wans before DHCP, or no WAN config): still filtered by port role.
    fw = Firewall(4433, "qe0", [], lan="lan", router=True, webui_port=80)
    rules = _rules(fw, "input")
    assert [r.startswith("[" + NOT_INSIDE) for r in rules[:4]] == [True] * 4
    assert '"established"' in rules[0] and '"right": 4433' in rules[2] and rules[3].endswith('{"drop": null}]')
    forward = _rules(fw, "forward")
    # New connections from the ISP side into the LAN are dropped right after established traffic.
    established = next(i for i, r in enumerate(forward) if '"established"' in r)
    assert forward[established + 1] == "[" + NOT_INSIDE + ', {"drop": null}]'


def test_the_web_ui_and_dns_answer_only_the_lan_port_not_the_tunnel() -> None:
    not_lan = '{"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": {"set": ["lo", "lan"]}}}'
    rules = _rules(Firewall(4433, "qe0", [], lan="lan", router=True, webui_port=8080), "input")
    ui = [r for r in rules if r.startswith("[" + not_lan) and '"right": 8080' in r]
    dns = [r for r in rules if r.startswith("[" + not_lan) and '"right": 53' in r]
    assert len(ui) == 1 and len(dns) == 1 and ui[0].endswith('{"drop": null}]') and dns[0].endswith('{"drop": null}]')
    open_dns = _rules(Firewall(4433, "qe0", [], lan="lan", router=True, webui_port=80, dns_from_peers=True), "input")
    assert not any('"right": 53' in r for r in open_dns)


def test_acl_rules_match_only_traffic_from_the_tunnel() -> None:
    fw = Firewall(4433, "qe0", ["wan0"], lan="lan", router=True, acls=[Acl("allow", [], ["10.0.50.0/24"])])
    forward = _rules(fw, "forward")
    acl = next(r for r in forward if '"10.0.50.0"' in r)
    assert acl.startswith('[{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "qe0"}}')
    # And the outside drop comes first: an allow rule can never open the LAN to a WAN.
    assert forward.index(acl) > forward.index("[" + NOT_INSIDE + ', {"drop": null}]')


def test_a_site_lan_is_masqueraded_out_of_wans_and_the_kill_switch_only_lets_it_into_the_tunnel() -> None:
    open_fw = Firewall(4433, "qe0", ["wan0"], lan="lan")
    assert any('"lan"' in r and '"masquerade"' in r for r in _rules(open_fw, "postrouting"))
    assert not any('"!="' in r for r in _rules(open_fw, "forward"))
    kill = _rules(Firewall(4433, "qe0", ["wan0"], lan="lan", kill_switch=True, direct=["192.168.1.0/24"]), "forward")
    assert '"addr": "192.168.1.0", "len": 24' in kill[-2] and kill[-2].endswith('{"accept": null}]')
    assert kill[-1] == json.dumps([
        {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "lan"}},
        {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": {"set": ["qe0", "lan"]}}},
        {"drop": None}])


def test_gateway_exit_port_forward_and_acls_in_order() -> None:
    fw = Firewall(4433, "qe0", ["eth0"], internet="eth0", forwards=[PortForward("tcp", 8080, "10.0.80.10", 80)],
                  acls=[Acl("deny", ["10.0.50.0/24"], ["10.0.80.5/32"], 6, 22), Acl("allow", [], [], 1)],
                  acl_default="deny")
    forward = _rules(fw, "forward")
    established = next(i for i, r in enumerate(forward) if '"established"' in r)
    deny = next(i for i, r in enumerate(forward) if '"10.0.50.0"' in r)
    assert established < deny < deny + 1 < len(forward)
    assert '"addr": "10.0.50.0", "len": 24' in forward[deny] and '"10.0.80.5"' in forward[deny]
    assert forward[deny].endswith('{"drop": null}]') and forward[deny + 1].endswith('{"accept": null}]')
    default_deny = next(r for r in forward if '"oifname"' in r and r.endswith('{"drop": null}]'))
    assert '"qe0"' in default_deny
    assert any('"dnat"' in r for r in forward)  # forwarded connections pass the outside drop
    assert any('"dnat": {"family": "ip", "addr": "10.0.80.10", "port": 80}' in r for r in _rules(fw, "prerouting"))
    post = _rules(fw, "postrouting")
    assert any('"iifname"}}, "right": "qe0"' in r and '"eth0"' in r and "masquerade" in r for r in post)


def _config(text: str) -> Any:
    return parse(text, Path("test.toml"))


def test_acl_peer_names_groups_and_lan_resolve_to_prefixes() -> None:
    key = encode_node_id(bytes(32))
    config = _config(f"""
[lan]
device = "eth0"
address = "192.168.7.1/24"
[[peer]]
name = "office"
key = "{key}"
allowed_ips = ["10.99.0.2/32", "10.0.80.0/24"]
groups = ["branches"]
[[peer]]
name = "shop"
key = "{encode_node_id(bytes([1] * 32))}"
allowed_ips = ["10.0.90.0/24"]
groups = ["branches"]
[[acl]]
action = "deny"
from = "office"
to = "lan"
protocol = "tcp"
port = 22
[[acl]]
action = "allow"
from = "10.1.0.0/16"
[[acl]]
action = "deny"
from = "group:branches"
to = "group:branches"
""")
    acls = resolve_acls(config)
    assert acls[0] == Acl("deny", ["10.99.0.2/32", "10.0.80.0/24"], ["192.168.7.0/24"], 6, 22)
    assert acls[1] == Acl("allow", ["10.1.0.0/16"], [], None, None)
    branches = ["10.99.0.2/32", "10.0.80.0/24", "10.0.90.0/24"]
    assert acls[2] == Acl("deny", branches, branches, None, None)


def test_ports_opened_in_the_config_are_accepted_from_outside_before_the_drop() -> None:
    rules = _rules(Firewall(4433, "qe0", ["eth0"], open_ports=[("tcp", 22)]), "input")
    ssh = next(i for i, r in enumerate(rules) if '"protocol": "tcp", "field": "dport"}}, "right": 22' in r)
    assert rules[ssh].endswith('{"accept": null}]') and rules[-1].endswith('{"drop": null}]') and ssh < len(rules) - 1


def test_a_node_serving_the_dht_opens_its_dht_port_and_only_then(tmp_path: Path) -> None:
    from quicether import network
    from quicether.daemon.router import Router
    from quicether.identity import generate

    net = network.create(tmp_path, "home", generate(tmp_path / "node.key"), admin_name="gw")
    base = f'[network]\ncertificate = "{net.members[0].certificate}"\n[lan]\ndevice = "eth0"\n'

    def opened(discovery: str) -> list[tuple[str, int]]:
        return Router(parse(base + discovery, Path("q.toml")), None).firewall().open_ports  # type: ignore[arg-type]

    assert opened('[discovery]\nserver = true\nport = 6881\n') == [("udp", 6881)]
    assert opened('[discovery]\nport = 6881\n') == [], "a DHT client's replies pass as established traffic"
    assert opened('[discovery]\nserver = true\nport = 6881\ndht = false\n') == []


def test_with_acl_default_deny_peers_reach_only_replies_ping_and_offered_dns_on_the_router() -> None:
    rules = _rules(Firewall(4433, "qe0", [], lan="lan", router=True, acl_default="deny", dns_from_peers=True),
                   "input")
    tunnel = [r for r in rules if r.startswith('[{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, '
                                               '"right": "qe0"}}')]
    assert len(tunnel) == 4 and '"established"' in tunnel[0] and '"right": {"set": [1, 58]}' in tunnel[1]
    assert '"right": 53' in tunnel[2] and tunnel[3].endswith('{"drop": null}]')
    assert not any('"right": "qe0"}}' in r for r in _rules(Firewall(4433, "qe0", [], lan="lan", router=True),
                                                           "input"))


def test_an_acl_naming_a_peer_with_ipv6_addresses_only_is_skipped_not_widened_to_any() -> None:
    config = _config(f"""
[node]
acl_default = "deny"
[lan]
device = "eth0"
[[peer]]
name = "v6site"
key = "{encode_node_id(bytes(32))}"
allowed_ips = ["fd00:1::/64"]
[[acl]]
action = "allow"
from = "v6site"
to = "lan"
protocol = "tcp"
port = 22
""")
    # An empty source list would mean "from anywhere": every peer would reach port 22 on the LAN.
    assert resolve_acls(config) == []
