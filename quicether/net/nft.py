"""QuicEther's firewall: one nftables table, `inet quicether`, built as a JSON ruleset and applied through
libnftables (Debian's python3-nftables) in a single transaction.

Applying is idempotent and atomic: the transaction creates the table if missing, deletes it, and creates
it again with every chain and rule, so the kernel switches from the old ruleset to the new one at once and
a crashed daemon's table is replaced rather than duplicated. Nothing outside the table is touched.

Which ports are "outside" (`Firewall.router`):
- a router (a node with a `[lan]`) is default-deny by port role from its first ruleset on: every port
  but loopback, the LAN port and the tunnel is outside, whether it is a known WAN yet or not (before DHCP
  gives a port its default route, a port marked unused, no WAN config at all);
- a node without a LAN (a gateway, a host that only bonds) filters the ports it knows face the internet
  (its WANs and the gateway's internet port) and leaves the host's other ports to their owner.

Rules (inputs in `Firewall`):
- input on outside ports: established/related, IPv6 neighbour discovery, the QUIC port and the ports of
  `[firewall] open` only.
- input from anywhere but the LAN port (and loopback): the web UI port and DNS are dropped (the tunnel
  too: other sites and the gateway reach neither, unless `dns_from_peers`); with acl_default "deny",
  peers reach nothing else of the router either but replies and ping.
- forward: TCP MSS clamped to the route MTU into and out of the tunnel; established/related accepted;
  port-forwarded traffic accepted; anything else new from outside dropped (a router never lets the internet
  open connections into the LAN); ACL rules in order, for traffic from the tunnel; with acl_default "deny",
  new traffic from the tunnel to another site (tunnel or LAN) is dropped; with the kill switch, LAN traffic
  may only enter the tunnel (or go to the `direct` destinations).
- nat: LAN traffic leaving by a raw WAN is masqueraded; on a gateway, tunnel traffic leaving by the internet
  port is masqueraded (the exit) and port forwards are DNATed into the tunnel and masqueraded there, so
  replies come back through the gateway whatever the site's own exit is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import nftables

from quicether.router_config import PortForward

TABLE = {"family": "inet", "name": "quicether"}
# Chains and rules name their table with the key "table".
IN_TABLE = {"family": "inet", "table": "quicether"}


class FirewallError(RuntimeError):
    """libnftables refused the ruleset; the message is its error output."""


def _rule(chain: str, *expr: dict[str, Any]) -> dict[str, Any]:
    return {"add": {"rule": {**IN_TABLE, "chain": chain, "expr": list(expr)}}}


def _chain(name: str, hook: str, priority: int, kind: str = "filter") -> dict[str, Any]:
    return {"add": {"chain": {**IN_TABLE, "name": name, "type": kind, "hook": hook, "prio": priority,
                              "policy": "accept"}}}


def _match(left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


@dataclass(frozen=True)
class Acl:
    """An ACL rule with its endpoints resolved to prefixes (an empty list matches any address)."""

    action: str
    sources: list[str]
    destinations: list[str]
    protocol: int | None = None
    port: int | None = None


@dataclass(frozen=True)
class Firewall:
    """Everything the ruleset depends on; the daemon rebuilds it when WAN ports come and go."""

    quic_port: int
    tun: str
    outside: list[str] = field(default_factory=list)   # known WAN ports and the gateway's internet port
    lan: str | None = None
    router: bool = False                               # every port but lo, LAN and tunnel is outside
    webui_port: int | None = None                      # on the LAN address: reachable from the LAN port only
    dns_from_peers: bool = False                       # the LAN's DNS forwarder also answers the tunnel
    open_ports: list[tuple[str, int]] = field(default_factory=list)  # (tcp|udp, port) accepted from outside
    kill_switch: bool = False
    direct: list[str] = field(default_factory=list)     # LAN destinations allowed past the kill switch
    internet: str | None = None                        # gateway: exit traffic is masqueraded out of here
    forwards: list[PortForward] = field(default_factory=list)
    acls: list[Acl] = field(default_factory=list)
    acl_default: str = "allow"


IIF = {"meta": {"key": "iifname"}}
OIF = {"meta": {"key": "oifname"}}
ACCEPT: dict[str, Any] = {"accept": None}
DROP: dict[str, Any] = {"drop": None}
MASQUERADE: dict[str, Any] = {"masquerade": None}
ESTABLISHED = _match({"ct": {"key": "state"}}, ["established", "related"], "in")
DNATED = _match({"ct": {"key": "status"}}, "dnat", "in")
DNS_PORT = 53
NDP_TYPES = ("nd-router-solicit", "nd-router-advert", "nd-neighbor-solicit", "nd-neighbor-advert")


def _names(devices: list[str]) -> dict[str, Any] | str:
    return devices[0] if len(devices) == 1 else {"set": devices}


def _prefixes(field_name: str, prefixes: list[str]) -> list[dict[str, Any]]:
    if not prefixes:
        return []
    items: list[Any] = []
    for text in prefixes:
        addr, _, length = text.partition("/")
        items.append({"prefix": {"addr": addr, "len": int(length)}} if length and length != "32" else addr)
    return [_match({"payload": {"protocol": "ip", "field": field_name}}, {"set": items})]


def _acl_rule(acl: Acl, tun: str) -> dict[str, Any]:
    # ACLs are about traffic between sites: only what comes out of the tunnel (an allow rule must never
    # open the LAN to a WAN).
    expr = [_match(IIF, tun), *_prefixes("saddr", acl.sources), *_prefixes("daddr", acl.destinations)]
    if acl.protocol is not None:
        expr.append(_match({"meta": {"key": "l4proto"}}, acl.protocol))
    if acl.port is not None:
        expr.append(_match({"payload": {"protocol": "th", "field": "dport"}}, acl.port))
    return _rule("forward", *expr, ACCEPT if acl.action == "allow" else DROP)


def _outside(fw: Firewall) -> dict[str, Any] | None:
    """The match for packets arriving from outside, or None if no port is filtered."""
    if fw.router:
        return _match(IIF, {"set": _inside(fw)}, "!=")
    return _match(IIF, _names(fw.outside)) if fw.outside else None


def _inside(fw: Firewall) -> list[str]:
    return ["lo", fw.tun] + ([fw.lan] if fw.lan else [])


def _input_rules(fw: Firewall) -> list[dict[str, Any]]:
    rules = []
    outside = _outside(fw)
    if outside is not None:
        quic = _match({"payload": {"protocol": "udp", "field": "dport"}}, fw.quic_port)
        # Without neighbour discovery a WAN with IPv6 loses its link; these are link-local by definition.
        ndp = _match({"payload": {"protocol": "icmpv6", "field": "type"}}, {"set": list(NDP_TYPES)})
        rules += [_rule("input", outside, ESTABLISHED, ACCEPT), _rule("input", outside, ndp, ACCEPT),
                  _rule("input", outside, quic, ACCEPT)]
        rules += [_rule("input", outside, _match({"payload": {"protocol": protocol, "field": "dport"}}, port), ACCEPT)
                  for protocol, port in fw.open_ports]
        rules.append(_rule("input", outside, DROP))
    if fw.lan:
        # The router's own services on the LAN address answer the LAN port only: not the tunnel (the
        # gateway and other sites), whose peers are trusted to route, not to administer this router.
        not_lan = _match(IIF, {"set": ["lo", fw.lan]}, "!=")
        if fw.webui_port is not None:
            rules.append(_rule("input", not_lan, _match({"payload": {"protocol": "tcp", "field": "dport"}},
                                                        fw.webui_port), DROP))
        if not fw.dns_from_peers:
            rules.append(_rule("input", not_lan, _match({"meta": {"key": "l4proto"}}, {"set": [6, 17]}),
                               _match({"payload": {"protocol": "th", "field": "dport"}}, DNS_PORT), DROP))
    if fw.acl_default == "deny":
        # Peers reach this router's own services only as far as the ACL default allows: with "deny", only
        # replies, ping and (if the LAN offers it to peers) DNS; what forward rules allow is routed, not here.
        tunnel = _match(IIF, fw.tun)
        rules += [_rule("input", tunnel, ESTABLISHED, ACCEPT),
                  _rule("input", tunnel, _match({"meta": {"key": "l4proto"}}, {"set": [1, 58]}), ACCEPT)]
        if fw.lan and fw.dns_from_peers:
            rules.append(_rule("input", tunnel, _match({"meta": {"key": "l4proto"}}, {"set": [6, 17]}),
                               _match({"payload": {"protocol": "th", "field": "dport"}}, DNS_PORT), ACCEPT))
        rules.append(_rule("input", tunnel, DROP))
    return rules


def _forward_rules(fw: Firewall) -> list[dict[str, Any]]:
    tcp_syn = _match({"payload": {"protocol": "tcp", "field": "flags"}}, "syn", "in")
    clamp = {"mangle": {"key": {"tcp option": {"name": "maxseg", "field": "size"}}, "value": {"rt": {"key": "mtu"}}}}
    rules = [_rule("forward", _match(direction, fw.tun), tcp_syn, clamp) for direction in (OIF, IIF)]
    rules.append(_rule("forward", ESTABLISHED, ACCEPT))
    if fw.forwards:
        rules.append(_rule("forward", DNATED, ACCEPT))
    outside = _outside(fw)
    if outside is not None:
        rules.append(_rule("forward", outside, DROP))
    rules += [_acl_rule(acl, fw.tun) for acl in fw.acls]
    if fw.acl_default == "deny":
        sites = [fw.tun] + ([fw.lan] if fw.lan else [])
        rules.append(_rule("forward", _match(IIF, fw.tun), _match(OIF, _names(sites)), DROP))
    if fw.lan and fw.kill_switch:
        if fw.direct:
            rules.append(_rule("forward", _match(IIF, fw.lan), *_prefixes("daddr", fw.direct), ACCEPT))
        rules.append(_rule("forward", _match(IIF, fw.lan), _match(OIF, {"set": [fw.tun, fw.lan]}, "!="), DROP))
    return rules


def _nat_rules(fw: Firewall) -> list[dict[str, Any]]:
    rules = []
    if fw.lan:
        rules.append(_rule("postrouting", _match(IIF, fw.lan), _match(OIF, {"set": [fw.tun, fw.lan]}, "!="),
                           MASQUERADE))
    if fw.internet:
        rules.append(_rule("postrouting", _match(IIF, fw.tun), _match(OIF, fw.internet), MASQUERADE))
    for fwd in fw.forwards:
        dport = _match({"payload": {"protocol": fwd.protocol, "field": "dport"}}, fwd.port)
        rules.append(_rule("prerouting", _match(IIF, fw.internet or ""), dport,
                           {"dnat": {"family": "ip", "addr": fwd.to_addr, "port": fwd.to_port}}))
    if fw.forwards:
        rules.append(_rule("postrouting", _match(OIF, fw.tun), DNATED, MASQUERADE))
    return rules


def build_ruleset(fw: Firewall) -> dict[str, Any]:
    """The whole table as one libnftables JSON transaction."""
    commands: list[dict[str, Any]] = [
        {"add": {"table": TABLE}},   # so the delete below never fails on a first start
        {"delete": {"table": TABLE}},
        {"add": {"table": TABLE}},
        _chain("input", "input", 0),
        _chain("forward", "forward", 0),
        # Standard NAT priorities: dstnat -100, srcnat 100.
        _chain("prerouting", "prerouting", -100, "nat"),
        _chain("postrouting", "postrouting", 100, "nat"),
    ]
    commands += _input_rules(fw) + _forward_rules(fw) + _nat_rules(fw)
    return {"nftables": [{"metainfo": {"json_schema_version": 1}}, *commands]}


def _run(payload: dict[str, Any]) -> None:
    nft = nftables.Nftables()
    rc, _output, error = nft.json_cmd(payload)
    if rc != 0:
        raise FirewallError(f"nftables: {error.strip() or 'rc ' + str(rc)}")


def apply(fw: Firewall) -> None:
    _run(build_ruleset(fw))


def remove() -> None:
    """Deletes the table if it exists (stop, or cleanup after a crash)."""
    _run({"nftables": [{"add": {"table": TABLE}}, {"delete": {"table": TABLE}}]})


def current() -> str:
    """The table as `nft` prints it, for diagnostics and tests; empty if absent."""
    nft = nftables.Nftables()
    rc, output, _error = nft.cmd("list table inet quicether")
    return str(output) if rc == 0 else ""


if __name__ == "__main__":  # print the ruleset a router with two WANs would get
    print(json.dumps(build_ruleset(Firewall(4433, "qe0", ["eth1", "eth2"], lan="eth0", router=True, webui_port=80)),
                     indent=1))
