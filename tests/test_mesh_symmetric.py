"""Symmetric NATs (issue 14): a sequential one is punched by predicting its next ports, and a pair with
random ones on both sides is not probed at all (the relay carries it).

    s0 symmetric (sequential or random) ─┐
    s1 port-restricted or random ────────┼── hub: gateway (relay), DHT
    s2 public ───────────────────────────┘

s2 is there so that each NATed site is seen by two peers (the gateway and s2), which is what tells a
symmetric NAT and its allocation pattern (`nat::classify`; `quicether status` shows it per WAN).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.lab import Lab
from tests.lab import nodes as qe
from tests.lab.mesh import MeshLab, build_mesh_lab
from tests.lab.topology import NatType

DIRECT_KINDS = {"direct", "punched"}
CONNECT_TIMEOUT_S = 40.0
# Long enough for both sides to tell their class and then skip several rounds (punch::RETRY_US = 10 s).
RANDOM_WATCH_S = 25.0


def _up_kinds(site: qe.NodeSpec, other: qe.NodeSpec) -> set[str]:
    peer = next((p for p in site.status()["peers"] if p["node_id"] == other.node_id), None)
    return {p["kind"] for p in (peer["paths"] if peer else []) if p["up"]}


def _nat(site: qe.NodeSpec) -> dict[str, Any]:
    nat: dict[str, Any] = site.status()["node"]["nat"]
    return nat


def _wait(mesh: MeshLab, what: str, predicate: Any, timeout_s: float) -> float:
    """Seconds from the first daemon's start until `predicate()` holds."""
    while time.monotonic() - mesh.started_at < timeout_s:
        if predicate():
            return time.monotonic() - mesh.started_at
        time.sleep(0.25)
    s0, s1 = mesh.sites[:2]
    raise AssertionError(f"{what} not within {timeout_s} s: s0-s1 paths {_up_kinds(s0, s1)}, NAT s0 {_nat(s0)},"
                         f" s1 {_nat(s1)}; punch s0 {s0.status()['node']['punch']},"
                         f" s1 {s1.status()['node']['punch']}; s0 published {s0.status()['node']['dht']['published']}")


def test_a_sequential_symmetric_nat_and_a_port_restricted_one_connect_directly(lab: Lab, tmp_path: Path) -> None:
    mesh = build_mesh_lab(lab, 3, tmp_path,
                          nats=[NatType.SYMMETRIC_SEQUENTIAL, NatType.PORT_RESTRICTED, NatType.NONE])
    s0, s1, _ = mesh.sites
    to_direct = _wait(mesh, "a direct path", lambda: bool(DIRECT_KINDS & _up_kinds(s0, s1)), CONNECT_TIMEOUT_S)
    print(f"\nsymmetric-sequential x port-restricted: direct {to_direct:.1f} s from the start; NAT s0 {_nat(s0)};"
          f" punch s0 {s0.status()['node']['punch']}, s1 {s1.status()['node']['punch']}")
    assert any("sequential" in nat for nat in _nat(s0).values()), _nat(s0)
    for site in mesh.sites:
        qe.stop(site)


def test_random_symmetric_nats_on_both_sides_are_relayed_without_probing(lab: Lab, tmp_path: Path) -> None:
    mesh = build_mesh_lab(lab, 3, tmp_path, nats=[NatType.SYMMETRIC, NatType.SYMMETRIC, NatType.NONE])
    s0, s1, _ = mesh.sites
    _wait(mesh, "a relayed path", lambda: "relayed" in _up_kinds(s0, s1), CONNECT_TIMEOUT_S)
    _wait(mesh, "both sites seeing their NAT as random",
          lambda: all(any("random" in nat for nat in _nat(s).values()) for s in (s0, s1)), CONNECT_TIMEOUT_S)
    # Punches tried before a site knew its own NAT (one peer had seen it) or the other's are its only
    # ones: from the moment both have skipped one (each knows both classes), none may follow.
    known_at = _wait(mesh, "both sites skipping a punch",
                     lambda: all(s.status()["node"]["punch"]["skipped"] >= 1 for s in (s0, s1)), CONNECT_TIMEOUT_S)
    before = [s.status()["node"]["punch"] for s in (s0, s1)]
    time.sleep(RANDOM_WATCH_S)
    after = [s.status()["node"]["punch"] for s in (s0, s1)]
    print(f"\nrandom x random: both classes known {known_at:.1f} s from the start; punch then {before},"
          f" {RANDOM_WATCH_S:.0f} s later {after}; paths {_up_kinds(s0, s1)}")
    for b, a in zip(before, after, strict=True):
        assert a["attempts"] == b["attempts"], f"a punch was tried between two random NATs: {b} -> {a}"
    assert sum(a["skipped"] - b["skipped"] for b, a in zip(before, after, strict=True)) >= 1, after
    assert _up_kinds(s0, s1) == {"relayed"}, _up_kinds(s0, s1)
    for site in mesh.sites:
        qe.stop(site)
