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

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.lab import Lab
from tests.lab import nodes as qe
from tests.lab.measure import longest_stall_s, start_iperf_server
from tests.lab.mesh import build_mesh_lab
from tests.lab.topology import NatType

DIRECT_KINDS = {"direct", "punched"}
WANS = {"wan0", "wan1"}
CONNECT_TIMEOUT_S = 45.0
WAN_MBIT = 10
FLOW_SECONDS = 6
# Under the relay's per-member rate (50 Mbit/s), so the relay's limiter makes no stalls of its own.
RELAYED_MBIT = 10
MAX_STALL_S = 1.0


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


def _bytes_out_by_wan(lab: Lab) -> dict[str, int]:
    """Bytes that left s0's two NATs towards the hub (relayed datagrams are not in the bond's path counters)."""
    return {wan: int(lab[nat].run("cat", "/sys/class/net/wire/statistics/tx_bytes").stdout)
            for wan, nat in (("wan0", "n0"), ("wan1", "n0w1"))}


def test_a_relayed_two_wan_site_keeps_its_flow_when_the_wan_carrying_it_is_cut(
        lab: Lab, tmp_path: Path) -> None:
    """Random symmetric NATs on every WAN of s0 and on s1: the pair is relayed through the gateway (never
    punched). s0 reaches the gateway on both WANs and has a relayed path to s1 over each (named
    relay-<gateway>.<wan>), which the bond uses like any two paths; cutting the WAN that carries more of
    the flow leaves it all on the other, with no reset of the inner TCP flow and no stall of 1 s."""
    mesh = build_mesh_lab(lab, 2, tmp_path, nats=[NatType.SYMMETRIC, NatType.SYMMETRIC],
                          second_wans={0: NatType.SYMMETRIC})
    s0, s1 = mesh.sites

    def relayed_wans() -> set[str]:
        peer = next((p for p in s0.status()["peers"] if p["node_id"] == s1.node_id), None)
        return {p["local_wan"].partition(".")[2] for p in (peer["paths"] if peer else [])
                if p["up"] and p["kind"] == "relayed"}

    deadline = mesh.started_at + CONNECT_TIMEOUT_S
    while relayed_wans() != WANS and time.monotonic() < deadline:
        time.sleep(0.25)
    assert relayed_wans() == WANS, f"s0 is not relayed to s1 over each of its WANs: {relayed_wans()}"
    gateway = next(p for p in s0.status()["peers"] if p["node_id"] == mesh.gateway.node_id)
    assert {p["local_wan"] for p in gateway["paths"] if p["up"]} == WANS, "s0 reaches the gateway on one WAN"

    seconds = 12
    start_iperf_server(s0.ns)
    flow = s1.ns.popen(["iperf3", "-c", mesh.address(s0), "-R", "-t", str(seconds), "-b", f"{RELAYED_MBIT}M",
                        "-i", "0.1", "-J", "--connect-timeout", "3000"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(3)
    before = _bytes_out_by_wan(lab)
    time.sleep(1)
    carried = {wan: moved - before[wan] for wan, moved in _bytes_out_by_wan(lab).items()}
    busy = max(carried, key=lambda wan: carried[wan])
    assert carried[busy] > RELAYED_MBIT * 1e6 / 8 / 2, f"the flow does not leave s0: {carried}"
    lab["n0" if busy == "wan0" else "n0w1"].ip("link", "set", "wire", "down")
    cut_at = _bytes_out_by_wan(lab)
    out, err = flow.communicate(timeout=seconds + 30)
    raw = json.loads(out)
    assert "error" not in raw, f"the TCP flow broke: {raw.get('error')} {err}"
    after = {wan: moved - cut_at[wan] for wan, moved in _bytes_out_by_wan(lab).items()}
    stall = longest_stall_s(raw["intervals"], start_s=1.0)
    print(f"\nrelayed, {busy} cut (bytes out per WAN over 1 s before: {carried}); longest stall {stall:.2f} s;"
          f" bytes out per WAN after the cut: {after}")
    assert stall < MAX_STALL_S, f"stall of {stall:.2f} s"
    assert relayed_wans() == WANS - {busy}, "the relayed path over the cut WAN is still up"
    other = next(iter(WANS - {busy}))
    assert after[other] > RELAYED_MBIT * 1e6 / 8 * 3, f"the other WAN did not take the flow: {after}"
    for site in mesh.sites:
        qe.stop(site)
