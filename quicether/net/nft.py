"""QuicEther's firewall: one nftables table, `inet quicether`, built as a JSON ruleset and applied through
libnftables (Debian's python3-nftables) in a single transaction.

Applying is idempotent and atomic: the transaction creates the table if missing, deletes it, and creates
it again with every chain and rule, so the kernel switches from the old ruleset to the new one at once and
a crashed daemon's table is replaced rather than duplicated. Nothing outside the table is touched.

Rules so far (the router-integration issue adds LAN forwarding, NAT and the kill switch):
- input on WAN ports: established/related traffic and the QUIC port only; everything else is dropped.
- forward into and out of the tunnel: TCP MSS clamped to the route MTU, so inner TCP never needs fragments.
"""

from __future__ import annotations

import json
from typing import Any

import nftables

TABLE = {"family": "inet", "name": "quicether"}
# Chains and rules name their table with the key "table".
IN_TABLE = {"family": "inet", "table": "quicether"}


class FirewallError(RuntimeError):
    """libnftables refused the ruleset; the message is its error output."""


def _rule(chain: str, *expr: dict[str, Any]) -> dict[str, Any]:
    return {"add": {"rule": {**IN_TABLE, "chain": chain, "expr": list(expr)}}}


def _chain(name: str, hook: str, priority: int, policy: str = "accept") -> dict[str, Any]:
    return {"add": {"chain": {**IN_TABLE, "name": name, "type": "filter", "hook": hook, "prio": priority,
                              "policy": policy}}}


def _match(left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def build_ruleset(wan_devices: list[str], quic_port: int, tun: str) -> dict[str, Any]:
    """The whole table as one libnftables JSON transaction."""
    commands: list[dict[str, Any]] = [
        {"add": {"table": TABLE}},   # so the delete below never fails on a first start
        {"delete": {"table": TABLE}},
        {"add": {"table": TABLE}},
        _chain("input", "input", 0),
        _chain("forward", "forward", 0),
    ]
    if wan_devices:
        wans = {"set": wan_devices}
        iif = {"meta": {"key": "iifname"}}
        commands += [
            _rule("input", _match(iif, wans), _match({"ct": {"key": "state"}}, ["established", "related"], "in"),
                  {"accept": None}),
            _rule("input", _match(iif, wans), _match({"payload": {"protocol": "udp", "field": "dport"}}, quic_port),
                  {"accept": None}),
            _rule("input", _match(iif, wans), {"drop": None}),
        ]
    tcp_syn = _match({"payload": {"protocol": "tcp", "field": "flags"}}, "syn", "in")
    clamp = {"mangle": {"key": {"tcp option": {"name": "maxseg", "field": "size"}}, "value": {"rt": {"key": "mtu"}}}}
    for direction in ("oifname", "iifname"):
        commands.append(_rule("forward", _match({"meta": {"key": direction}}, tun), tcp_syn, clamp))
    return {"nftables": [{"metainfo": {"json_schema_version": 1}}, *commands]}


def _run(payload: dict[str, Any]) -> None:
    nft = nftables.Nftables()
    rc, _output, error = nft.json_cmd(payload)
    if rc != 0:
        raise FirewallError(f"nftables: {error.strip() or 'rc ' + str(rc)}")


def apply(wan_devices: list[str], quic_port: int, tun: str) -> None:
    _run(build_ruleset(wan_devices, quic_port, tun))


def remove() -> None:
    """Deletes the table if it exists (stop, or cleanup after a crash)."""
    _run({"nftables": [{"add": {"table": TABLE}}, {"delete": {"table": TABLE}}]})


def current() -> str:
    """The table as `nft` prints it, for diagnostics and tests; empty if absent."""
    nft = nftables.Nftables()
    rc, output, _error = nft.cmd("list table inet quicether")
    return str(output) if rc == 0 else ""


if __name__ == "__main__":  # print the ruleset a router with two WANs would get
    print(json.dumps(build_ruleset(["eth1", "eth2"], 4433, "qe0"), indent=1))
