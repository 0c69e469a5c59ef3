"""Upgrade and fallback without breaking flows (issue 14): a pair of members relayed through the gateway
moves to a direct (punched) path once its NATs allow it, and a direct pair falls back to the relay when
its direct path dies, both under a running iperf3 TCP flow that must neither reset nor stall for 1 s.

    upgrade:  s0 symmetric → full-cone at run time ─┐
              s1 port-restricted ───────────────────┴── hub: gateway (relay), DHT
    fallback: s0, s1 public; the hub then drops UDP between their links (the relay, on the hub itself,
              is not forwarded traffic and still passes)
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.lab import Lab
from tests.lab import nodes as qe
from tests.lab.measure import longest_stall_s, start_iperf_server
from tests.lab.mesh import MeshLab, build_mesh_lab
from tests.lab.topology import NatType

DIRECT_KINDS = {"direct", "punched"}
CONNECT_TIMEOUT_S = 45.0
# The flow stays under the relay's per-member rate (50 Mbit/s by default), so the relayed part of it is
# not throttled into stalls of its own.
FLOW_MBIT = 20
UPGRADE_WITHIN_S = 30.0
MAX_STALL_S = 1.0


def _paths(site: qe.NodeSpec, other: qe.NodeSpec) -> list[dict[str, Any]]:
    """`site`'s paths to `other` (all of them, up or not)."""
    peer = next((p for p in site.status()["peers"] if p["node_id"] == other.node_id), None)
    return list(peer["paths"]) if peer else []


def _up_kinds(site: qe.NodeSpec, other: qe.NodeSpec) -> set[str]:
    return {p["kind"] for p in _paths(site, other) if p["up"]}


def _wait(mesh: MeshLab, what: str, predicate: Any, timeout_s: float, step_s: float = 0.1) -> float:
    """Seconds until `predicate()` holds; fails the test with `what` after `timeout_s`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if predicate():
            return time.monotonic() - start
        time.sleep(step_s)
    kinds = [(s.name, [(p["kind"], p["up"]) for p in _paths(s, o)]) for s, o in
             ((mesh.sites[0], mesh.sites[1]), (mesh.sites[1], mesh.sites[0]))]
    raise AssertionError(f"{what} not within {timeout_s} s; paths {kinds}")


def _bytes_by_kind(site: qe.NodeSpec, other: qe.NodeSpec) -> dict[str, int]:
    """Bytes each kind of path from `site` to `other` carried, both ways."""
    total: dict[str, int] = {}
    for p in _paths(site, other):
        total[p["kind"]] = total.get(p["kind"], 0) + p["tx_bytes"] + p["rx_bytes"]
    return total


def _start_flow(mesh: MeshLab, seconds: int) -> subprocess.Popen[str]:
    """iperf3 TCP from s0 to s1 at FLOW_MBIT, reported by s1 (-R: the receiver's intervals count delivered
    bytes) every 0.1 s."""
    start_iperf_server(mesh.sites[0].ns)
    return mesh.sites[1].ns.popen(
        ["iperf3", "-c", mesh.address(mesh.sites[0]), "-R", "-t", str(seconds), "-b", f"{FLOW_MBIT}M",
         "-i", "0.1", "-J", "--connect-timeout", "3000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish_flow(proc: subprocess.Popen[str], seconds: int) -> list[dict[str, Any]]:
    """The flow's intervals; fails if iperf3 reports an error (a reset of the inner TCP connection)."""
    out, err = proc.communicate(timeout=seconds + 30)
    raw = json.loads(out)
    assert "error" not in raw, f"the TCP flow broke: {raw.get('error')} {err}"
    intervals: list[dict[str, Any]] = raw["intervals"]
    return intervals


def _moved_bytes(site: qe.NodeSpec, other: qe.NodeSpec, seconds: float) -> dict[str, int]:
    """Bytes each kind of path carried during the next `seconds`."""
    before = _bytes_by_kind(site, other)
    time.sleep(seconds)
    after = _bytes_by_kind(site, other)
    return {kind: after[kind] - before.get(kind, 0) for kind in after}


def test_a_relayed_pair_goes_direct_when_its_symmetric_nat_is_relaxed_without_breaking_a_flow(
        lab: Lab, tmp_path: Path) -> None:
    mesh = build_mesh_lab(lab, 2, tmp_path, nats=[NatType.SYMMETRIC, NatType.PORT_RESTRICTED])
    s0, s1 = mesh.sites
    _wait(mesh, "a relayed path", lambda: "relayed" in _up_kinds(s0, s1), CONNECT_TIMEOUT_S, 0.25)
    assert not DIRECT_KINDS & _up_kinds(s0, s1), "symmetric × port-restricted went direct before relaxing"

    seconds = 40
    flow = _start_flow(mesh, seconds)
    time.sleep(3)
    mesh.set_nat(0, NatType.FULL_CONE)
    to_direct = _wait(mesh, "a direct path", lambda: bool(DIRECT_KINDS & _up_kinds(s0, s1)), UPGRADE_WITHIN_S)
    time.sleep(1.0)  # the scheduler has moved over; what then carries the flow:
    moved = _moved_bytes(s0, s1, 2.0)
    kinds_after = {p["kind"]: p["up"] for p in _paths(s0, s1)}
    intervals = _finish_flow(flow, seconds)
    stall = longest_stall_s(intervals, start_s=1.0)
    mbit_after = [i["sum"]["bits_per_second"] / 1e6 for i in intervals
                  if i["sum"]["start"] >= 3 + to_direct + 1]
    print(f"\nupgrade: direct {to_direct:.1f} s after the NAT was relaxed; longest stall {stall:.2f} s;"
          f" bytes per path kind over 2 s after: {moved}; paths {kinds_after};"
          f" {sum(mbit_after) / max(len(mbit_after), 1):.1f} Mbit/s after")
    print(f"  punch: s0 {s0.status()['node']['punch']}, s1 {s1.status()['node']['punch']}")
    assert stall < MAX_STALL_S, f"stall of {stall:.2f} s"
    direct_moved = sum(b for kind, b in moved.items() if kind in DIRECT_KINDS)
    assert direct_moved > 2.0 * FLOW_MBIT * 1e6 / 8 / 2, f"the direct path does not carry the flow: {moved}"
    assert moved.get("relayed", 0) < direct_moved / 10, f"the relay still carries the flow: {moved}"
    assert kinds_after.get("relayed"), f"the relayed path did not stay as the fallback: {kinds_after}"
    # `quicether status` shows, per peer, the punches towards it and, per WAN, the NAT type seen.
    text = s0.ns.run(sys.executable, "-m", "quicether", "status", "-c", str(s0.config_path)).stdout
    peer_line = next(line for line in text.splitlines() if line.startswith("peer site-s1 "))
    assert re.search(r"punch attempts [1-9]", peer_line), peer_line
    assert re.search(r"wan \S+: NAT ", text), text
    metrics = s0.ns.run(sys.executable, "-m", "quicether", "status", "--metrics", "-c", str(s0.config_path)).stdout
    assert re.search(r'^quicether_peer_punch_attempts_total\{[^}]*site-s1[^}]*\} [1-9]', metrics, re.M), metrics
    for site in mesh.sites:
        qe.stop(site)


def test_a_direct_pair_falls_back_to_the_relay_within_a_second_when_its_path_is_blocked(
        lab: Lab, tmp_path: Path) -> None:
    mesh = build_mesh_lab(lab, 2, tmp_path)
    s0, s1 = mesh.sites
    _wait(mesh, "a direct path", lambda: bool(_up_kinds(s0, s1) & DIRECT_KINDS), CONNECT_TIMEOUT_S, 0.25)

    seconds = 12
    flow = _start_flow(mesh, seconds)
    time.sleep(4)  # the pair is settled on its direct path (and has its fallback, relay.FALLBACK_AFTER_US)
    carried = _moved_bytes(s0, s1, 1.0)
    direct = sum(carried.get(kind, 0) for kind in DIRECT_KINDS)
    assert direct > 10 * carried.get("relayed", 0), f"not on the direct path: {carried}"
    mesh.hub.run("nft", "-f", "-", input=(
        "table ip block {\n chain forward {\n  type filter hook forward priority 0;\n"
        "  ip saddr 10.1.0.0/24 ip daddr 10.2.0.0/24 meta l4proto udp drop\n"
        "  ip saddr 10.2.0.0/24 ip daddr 10.1.0.0/24 meta l4proto udp drop\n }\n}\n"))
    relayed_before = _bytes_by_kind(s0, s1).get("relayed", 0)
    on_relay = _wait(mesh, "traffic on the relayed path",
                     lambda: _bytes_by_kind(s0, s1).get("relayed", 0) > relayed_before + 200_000, 10.0, 0.05)
    intervals = _finish_flow(flow, seconds)
    stall = longest_stall_s(intervals, start_s=1.0)
    print(f"\nfallback: the relay carried 200 kB {on_relay:.2f} s after the block; longest stall {stall:.2f} s;"
          f" paths {[(p['kind'], p['up']) for p in _paths(s0, s1)]}")
    assert stall < MAX_STALL_S, f"stall of {stall:.2f} s"
    assert on_relay < MAX_STALL_S, f"the relay carried the flow only {on_relay:.2f} s after the block"
    for site in mesh.sites:
        qe.stop(site)
