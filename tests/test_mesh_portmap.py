"""Port mapping on the home router (issue 14, [nat] port_mapping): two members each behind a symmetric NAT
(a new random outside port per destination) can only be relayed, unless one of them gets a port mapping
from its router: then the other reaches it directly at the mapped address, from its record or its punch
candidates.

    s0 172.16.1.2 ── n0: symmetric NAT, outside 11.1.0.1, miniupnpd (PCP, NAT-PMP, UPnP) ─┐
    s1 172.16.2.2 ── n1: symmetric NAT, outside 10.2.0.1 ────────────────────────────────┴── hub: relay, DHT

A two-WAN router behind two ISPs' NATs, each with its own router service, gets a mapping per WAN.

The router is the real thing (miniupnpd, Debian's nftables build, speaking PCP, NAT-PMP and UPnP-IGD): it
grants the mapping by a DNAT rule in its own nft table, and deletes it when the daemon releases the mapping
as it stops. The NAT-PMP run drops PCP requests at the router, so the client falls back on its silence; the
UPnP run drops both (all of port 5351), so the client finds the router by SSDP and maps over SOAP.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.lab import Lab
from tests.lab import nodes as qe
from tests.lab.measure import ping
from tests.lab.mesh import MeshLab, build_mesh_lab
from tests.lab.netns import Namespace
from tests.lab.topology import LinkSpec, NatType, build_wan_lab
from tests.lab.upnp import MiniUpnpd, give_isp_public_address, give_public_address, start_miniupnpd

DIRECT_KINDS = {"direct", "punched"}
PUBLIC_IP = "11.1.0.1"   # n0's outside address: miniupnpd (and QuicEther) map nothing behind a private one
SITE0 = "172.16.1.2"     # s0 behind n0 (`mesh.star`)
CONNECT_TIMEOUT_S = 30.0
# Long enough for several rounds of punching (every 10 s, punch.rs RETRY_US) after the relayed path.
STAYS_RELAYED_S = 12.0


def _up_kinds(site: qe.NodeSpec, other: qe.NodeSpec) -> set[str]:
    for peer in site.status()["peers"]:
        if peer["node_id"] == other.node_id:
            return {p["kind"] for p in peer["paths"] if p["up"]}
    return set()


def _wait(what: str, predicate: Callable[[], Any], timeout_s: float, explain: Callable[[], str]) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {timeout_s} s: {explain()}")


def _mesh(lab: Lab, tmp_path: Path, configure: Callable[[qe.NodeSpec], object] | None = None,
          protocol: str = "pcp") -> tuple[MeshLab, MiniUpnpd]:
    """The mesh with miniupnpd as n0's router, speaking only `protocol` to the client (pcp: all three)."""
    servers: list[MiniUpnpd] = []

    def router_with_upnp(hub: Namespace) -> None:
        give_public_address(hub, 0, PUBLIC_IP)
        servers.append(start_miniupnpd(lab, hub.lab["n0"], "172.16.1.0/24", tmp_path / "miniupnpd",
                                       upnp=True))
        if protocol == "nat-pmp":
            servers[0].speak_natpmp_only()
        elif protocol == "upnp":
            servers[0].speak_upnp_only()

    mesh = build_mesh_lab(lab, 2, tmp_path, nats=[NatType.SYMMETRIC, NatType.SYMMETRIC],
                          prepare_hub=router_with_upnp, configure=configure)
    return mesh, servers[0]


@pytest.mark.parametrize("protocol", ["pcp", "nat-pmp", "upnp"])
def test_a_port_mapping_takes_a_symmetric_pair_direct_and_is_deleted_on_stop(lab: Lab, tmp_path: Path,
                                                                             protocol: str) -> None:
    """PCP where the router speaks it; NAT-PMP where it ignores PCP (its requests dropped at the router);
    UPnP-IGD where it ignores both (two PCP and four NAT-PMP requests unanswered, ~4.5 s, then SSDP)."""
    mesh, router = _mesh(lab, tmp_path, protocol=protocol)
    s0, s1 = mesh.sites

    def mapping() -> dict[str, Any]:
        return dict(s0.status()["node"]["port_mapping"].get("default") or {})

    _wait("a port mapping", lambda: mapping().get("external"), 15.0 if protocol == "upnp" else 10.0,
          lambda: f"{mapping()}; {router.log()}")
    to_mapping = time.monotonic() - mesh.started_at
    mapped = mapping()
    assert mapped["external"] == f"{PUBLIC_IP}:{qe.QUIC_PORT}", mapped
    assert mapped["protocol"] == protocol and mapped["gateway"] == "172.16.1.1", mapped
    assert 3600 < mapped["expires_in_s"] <= 7200, mapped
    assert router.mappings() == [f'iif "wire" udp th dport {qe.QUIC_PORT} dnat ip to {SITE0}:{qe.QUIC_PORT}'], \
        router.mappings()
    text = s0.ns.run(sys.executable, "-m", "quicether", "status", "-c", str(s0.config_path)).stdout
    assert f"wan default: port mapping {PUBLIC_IP}:{qe.QUIC_PORT} ({protocol} on 172.16.1.1, port {qe.QUIC_PORT}," \
        in text, text

    _wait("a direct path between the two symmetric NATs", lambda: DIRECT_KINDS & _up_kinds(s0, s1),
          CONNECT_TIMEOUT_S, lambda: f"s0 {_up_kinds(s0, s1)}, s1 {_up_kinds(s1, s0)}")
    to_direct = time.monotonic() - mesh.started_at
    def published() -> list[str]:
        return list(s0.status()["node"]["dht"]["published"])

    # The record is published again within a tick of the discovery loop once the mapping is there.
    _wait("the mapping first in s0's record", lambda: published()[:1] == [mapped["external"]], 10.0,
          lambda: str(published()))
    print(f"\nsymmetric × symmetric with a port mapping ({protocol}): mapped {to_mapping:.1f} s and direct"
          f" {to_direct:.1f} s after the daemons started;"
          f" s0 {sorted(_up_kinds(s0, s1))}, s1 {sorted(_up_kinds(s1, s0))}; s0's record {published()}")
    assert ping(s1.ns, mesh.address(s0), count=2).received >= 1

    qe.stop(s0)
    assert router.mappings() == [], f"the mapping outlived the daemon: {router.mappings()}"
    log = router.log()
    assert ("PCP MAP: added" in log) == (protocol == "pcp"), log
    # Each protocol in its own words: NAT-PMP/PCP remove "mapping removed"; UPnP's calls are logged by name.
    upnp_calls = [f"SSDP M-SEARCH from {SITE0}:", f"AddPortMapping: ext port {qe.QUIC_PORT} to {SITE0}:{qe.QUIC_PORT}"
                  " protocol UDP", f"DeletePortMapping: external port: {qe.QUIC_PORT}, protocol: UDP"]
    if protocol == "upnp":
        assert all(call in log for call in upnp_calls), log
    else:
        assert "mapping removed" in log and not any(call in log for call in upnp_calls), log


def test_without_port_mapping_no_request_is_sent_and_the_pair_stays_relayed(lab: Lab, tmp_path: Path) -> None:
    def no_mapping(node: qe.NodeSpec) -> None:
        node.sections["nat"] = {"port_mapping": False}

    mesh, router = _mesh(lab, tmp_path, configure=no_mapping)
    s0, s1 = mesh.sites
    _wait("a relayed path", lambda: "relayed" in _up_kinds(s0, s1), CONNECT_TIMEOUT_S,
          lambda: f"s0 {_up_kinds(s0, s1)}")
    deadline = time.monotonic() + STAYS_RELAYED_S
    while time.monotonic() < deadline:
        assert not DIRECT_KINDS & _up_kinds(s0, s1), "symmetric × symmetric went direct without a mapping"
        time.sleep(0.5)
    assert s0.status()["node"]["port_mapping"]["default"]["problem"] == "off ([nat] port_mapping = false)"
    text = s0.ns.run(sys.executable, "-m", "quicether", "status", "-c", str(s0.config_path)).stdout
    assert "wan default: no port mapping: off ([nat] port_mapping = false)" in text, text
    assert router.requests_seen() == 0, router.log()
    assert router.mappings() == []
    assert ping(s1.ns, mesh.address(s0), count=2).received >= 1, "the relay carries the pair"


@pytest.mark.parametrize("protocol", ["pcp", "upnp"])
def test_each_wan_maps_its_own_port_on_its_own_router(lab: Lab, tmp_path: Path, protocol: str) -> None:
    """A two-WAN router behind two symmetric ISP NATs, each with its own miniupnpd: each WAN socket's
    mapping is asked of its own gateway from its own address (the router grants it only for the address the
    request came from), so each WAN gets a mapping at its own ISP's public address. In UPnP the SSDP search
    of each WAN, bound to its address, must leave by that WAN to find that WAN's router."""
    wl = build_wan_lab(lab, [LinkSpec(nat=NatType.SYMMETRIC)] * 2, lan=False, internet_hosts=(),
                       policy_routing=False)
    routers = []
    for i, wan in enumerate(wl.wans):
        give_isp_public_address(wl, i, f"11.{40 + i}.0.1")
        routers.append(start_miniupnpd(lab, wan.isp, f"10.{10 + i}.0.0/24", tmp_path / f"miniupnpd{i}",
                                       inside_if="rtr", upnp=protocol == "upnp"))
        if protocol == "upnp":
            routers[-1].speak_upnp_only()
    node = qe.make_node(wl.router, "site", "10.99.0.1/24", tmp_path)
    node.wans = [{"device": w.router_if, "name": f"isp{w.index}", "gateway": w.isp_addr} for w in wl.wans]
    qe.start(node)

    def mappings() -> dict[str, Any]:
        return dict(node.status()["node"]["port_mapping"])

    _wait("a mapping on each WAN", lambda: all(m.get("external") for m in mappings().values()) and
          len(mappings()) == 2, 15.0, lambda: f"{mappings()}; {[r.log() for r in routers]}")
    found = mappings()
    print(f"\nper-WAN mappings: {found}")
    for i, wan in enumerate(wl.wans):
        mapped = found[f"isp{i}"]
        port = mapped["internal_port"]
        assert mapped["gateway"] == wan.isp_addr and mapped["external"] == f"11.{40 + i}.0.1:{port}", found
        assert mapped["protocol"] == protocol, found
        assert routers[i].mappings() == [f'iif "wire" udp th dport {port} dnat ip to {wan.router_addr}:{port}'], \
            (i, routers[i].mappings())
    assert found["isp0"]["internal_port"] != found["isp1"]["internal_port"], "one socket per WAN"
    qe.stop(node)
    assert [r.mappings() for r in routers] == [[], []]
