"""A bonded site in the WAN lab: QuicEther on the router (one path per WAN) and on a gateway host in the
internet, with a LAN host behind the router and a data-centre host behind the gateway.

    lan 10.0.50.10 ── router ═wan0..N═ internet ── gateway ── dc 10.0.60.10
                      (site node 10.99.0.1)         (gateway node 10.99.0.2)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.lab import nodes as qe
from tests.lab.netns import Lab, LabError, Namespace
from tests.lab.topology import LAN_PREFIX, LinkSpec, WanLab, build_wan_lab

DC_PREFIX = "10.0.60"

# The bonding issue's topologies, shared by tests/test_bond.py and scripts/bench-bond.
THREE_WANS = [LinkSpec(rate_mbit=100, delay_ms=10), LinkSpec(rate_mbit=50, delay_ms=30),
              LinkSpec(rate_mbit=20, delay_ms=60, loss_pct=1)]
# Redundant mode's case: three 50 Mbit/s links with 5 % loss each.
LOSSY_WANS = [LinkSpec(rate_mbit=50, delay_ms=10 * (i + 1), loss_pct=5) for i in range(3)]
OVERLAY_SITE = "10.99.0.1/24"
OVERLAY_GATEWAY = "10.99.0.2/24"


@dataclass
class BondLab:
    wl: WanLab
    site: qe.NodeSpec
    gateway: qe.NodeSpec
    dc: Namespace

    @property
    def lan(self) -> Namespace:
        assert self.wl.lan is not None
        return self.wl.lan

    @property
    def dc_addr(self) -> str:
        return f"{DC_PREFIX}.10"

    @property
    def lan_addr(self) -> str:
        return f"{LAN_PREFIX}.10"

    def wait_paths_up(self, count: int, timeout: float = 10) -> bool:
        """Waits until the site has `count` paths, all up; False if that did not happen in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            paths = self.paths()
            if len(paths) == count and all(p["up"] for p in paths):
                return True
            time.sleep(0.05)
        return False

    def paths(self) -> list[dict[str, Any]]:
        peers = self.site.status()["peers"]
        paths: list[dict[str, Any]] = peers[0]["paths"]
        return paths


def build_bond_lab(lab: Lab, links: list[LinkSpec], state: Path, *, mode: str = "aggregate",
                   realtime_mode: str = "redundant", backup: tuple[int, ...] = (),
                   congestion: str = "loss-tolerant", extra_hosts: tuple[str, ...] = (),
                   tcp_lane: bool = False) -> BondLab:
    """`extra_hosts`: more hosts on the internet (e.g. an attacker), as `wl.host(name)`. `tcp_lane`: both
    peers have tcp_lane = "auto" (the site's TCP to the dc goes through the TCP lane)."""
    wl = build_wan_lab(lab, links, internet_hosts=("gateway", *extra_hosts), policy_routing=False)
    gw_ns = wl.host("gateway")
    gw_ns.sysctl("net.ipv4.ip_forward", "1")
    dc = lab.add_namespace("dc")
    lab.veth(dc, "eth0", gw_ns, "dc")
    dc.ip("addr", "add", f"{DC_PREFIX}.10/24", "dev", "eth0")
    dc.ip("route", "add", "default", "via", f"{DC_PREFIX}.1")
    gw_ns.ip("addr", "add", f"{DC_PREFIX}.1/24", "dev", "dc")

    site = qe.make_node(wl.router, "site", OVERLAY_SITE, state)
    gateway = qe.make_node(gw_ns, "gw", OVERLAY_GATEWAY, state)
    site.peers.append({"name": "gw", "key": gateway.node_id, "endpoint": f"{wl.addr('gateway')}:{qe.QUIC_PORT}",
                       "allowed_ips": ["10.99.0.2/32", f"{DC_PREFIX}.0/24"], "mode": mode,
                       "realtime_mode": realtime_mode})
    gateway.peers.append({"name": "site", "key": site.node_id, "allowed_ips": ["10.99.0.1/32", f"{LAN_PREFIX}.0/24"],
                          "mode": mode, "realtime_mode": realtime_mode})
    site.congestion = gateway.congestion = congestion
    if tcp_lane:
        site.peers[0]["tcp_lane"] = gateway.peers[0]["tcp_lane"] = "auto"
    site.wans = [{"device": w.router_if, "gateway": w.isp_addr, **({"role": "backup"} if w.index in backup else {})}
                 for w in wl.wans]
    qe.start(gateway)
    qe.start(site)
    qe.wait_connected(site)
    bond = BondLab(wl=wl, site=site, gateway=gateway, dc=dc)
    if not bond.wait_paths_up(len(links)):  # every WAN has its path
        raise LabError(f"only {len(bond.paths())} of {len(links)} paths came up: {qe.read_log(site)}")
    return bond
