"""A two-WAN site behind two different NATs and a NATed peer (issue 14): the direct bond between them uses
both WANs, each WAN's socket punching its own NAT.

    s0 ─eth0─ n0   full-cone        10.1.0.1   ─┐   (or no NAT: s0's eth0 is 10.1.0.1)
       └eth1─ n0w1 port-restricted  10.101.0.1 ─┼── hub: gateway (relay), DHT
    s1 ─eth0─ n1   port-restricted  10.2.0.1   ─┘

With a public wan0, s1 reaches it by a plain dial (a path of kind direct) while wan1 needs a punch (kind
punched): both kinds must rank alike for the bond to use both, and wan1 must punch although wan0 already
has a direct path. What leaves s0 by each WAN is shaped to WAN_MBIT, so a flow from s0 to s1 faster than
one WAN needs both: the aggregate scheduler then spreads it over both direct paths, which the per-path byte
counters show."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.lab import Lab
from tests.lab import nodes as qe
from tests.lab.measure import start_iperf_server
from tests.lab.mesh import build_mesh_lab
from tests.lab.topology import NatType

DIRECT_KINDS = {"direct", "punched"}
WANS = {"wan0", "wan1"}
CONNECT_TIMEOUT_S = 45.0
WAN_MBIT = 10
FLOW_SECONDS = 6


def _direct_paths(site: qe.NodeSpec, other: qe.NodeSpec) -> list[dict[str, Any]]:
    """`site`'s direct (or punched) paths up to `other`."""
    peer = next((p for p in site.status()["peers"] if p["node_id"] == other.node_id), None)
    return [p for p in (peer["paths"] if peer else []) if p["up"] and p["kind"] in DIRECT_KINDS]


def _bytes_by_wan(site: qe.NodeSpec, other: qe.NodeSpec) -> dict[str, int]:
    total: dict[str, int] = {}
    for p in _direct_paths(site, other):
        total[p["local_wan"]] = total.get(p["local_wan"], 0) + p["tx_bytes"] + p["rx_bytes"]
    return total


@pytest.mark.parametrize("wan0_nat", [NatType.FULL_CONE, NatType.NONE], ids=lambda nat: f"wan0-{nat.value}")
def test_a_two_wan_site_behind_two_nats_bonds_both_wans_directly_with_a_natted_peer(
        lab: Lab, tmp_path: Path, wan0_nat: NatType) -> None:
    mesh = build_mesh_lab(lab, 2, tmp_path, nats=[wan0_nat, NatType.PORT_RESTRICTED],
                          second_wans={0: NatType.PORT_RESTRICTED})
    s0, s1 = mesh.sites
    # What leaves s0 by each WAN: at its NAT's outside port, or (no NAT) at its own port.
    wan0_out = (lab["s0"], "eth0") if wan0_nat is NatType.NONE else (lab["n0"], "wire")
    for ns, dev in (wan0_out, (lab["n0w1"], "wire")):
        ns.run("tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{WAN_MBIT}mbit",
               "burst", "8kb", "latency", "40ms")
    direct_after: dict[str, float] = {}
    deadline = mesh.started_at + CONNECT_TIMEOUT_S
    while direct_after.keys() != WANS and time.monotonic() < deadline:
        for path in _direct_paths(s0, s1):
            direct_after.setdefault(path["local_wan"], time.monotonic() - mesh.started_at)
        time.sleep(0.25)
    paths = [(p["local_wan"], p["kind"], p["remote"]) for p in _direct_paths(s0, s1)]
    print(f"\ndirect per WAN (s from the first start): {direct_after}; paths {paths}")
    print(f"  punch: s0 {s0.status()['node'].get('punch')}, s1 {s1.status()['node'].get('punch')}")
    assert direct_after.keys() == WANS, f"not every WAN of s0 has a direct path to s1: {paths}"

    start_iperf_server(s0.ns)
    before = _bytes_by_wan(s0, s1)
    flow = s1.ns.run("iperf3", "-c", mesh.address(s0), "-R", "-t", str(FLOW_SECONDS), "-J",
                     "--connect-timeout", "3000", timeout=FLOW_SECONDS + 30)
    after = _bytes_by_wan(s0, s1)
    moved = {wan: after.get(wan, 0) - before.get(wan, 0) for wan in WANS}
    print(f"  bytes per WAN during {FLOW_SECONDS} s of iperf3: {moved}")
    assert '"error"' not in flow.stdout, flow.stdout[-500:]
    one_wan_bytes = WAN_MBIT * 1e6 / 8 * FLOW_SECONDS
    for wan in sorted(WANS):
        # Each WAN carries a good part of what it could (the flow wants both): not a probe's trickle.
        assert moved[wan] > 0.3 * one_wan_bytes, f"{wan} carried little of the flow: {moved}"
    for site in mesh.sites:
        qe.stop(site)
