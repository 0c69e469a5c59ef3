"""Reload applies a diff in the lab: peers, modes, classes and WANs change while a TCP flow runs through the
bond, which is never reset nor stalled; the end state equals a fresh start with the final config, and a
broken file changes nothing."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

from quicether.daemon import api
from tests.lab import Lab, LinkSpec
from tests.lab import nodes as qe
from tests.lab.bond import BondLab, build_bond_lab
from tests.lab.measure import longest_stall_s, start_iperf_server, wait_for
from tests.lab.netns import Namespace
from tests.lab.sites import LAN_PREFIX, build_sites_lab, curl, router_snapshot

TWO_WANS = [LinkSpec(rate_mbit=40, delay_ms=10), LinkSpec(rate_mbit=40, delay_ms=20)]
PEER_B_LAN = "10.0.70.0/24"


def _reload(node: qe.NodeSpec) -> dict[str, Any]:
    """Writes `node`'s config as its spec says now and asks its daemon to reload it."""
    node.write_config()
    return api_reload(node)


def api_reload(node: qe.NodeSpec) -> dict[str, Any]:
    return api.request(node.state_dir / "api.sock", "reload")


def _duplicates_in(bond: BondLab, seconds: float) -> int:
    """Copies of packets from the site that the gateway dropped during the next `seconds`."""
    def dropped() -> int:
        return int(bond.gateway.status()["peers"][0]["reorder"]["duplicates"])

    before = dropped()
    time.sleep(seconds)
    return dropped() - before


def _routes(bond: BondLab) -> str:
    return bond.wl.router.ip("-4", "route", "show", "table", "main").stdout


def _snapshot(bond: BondLab) -> dict[str, Any]:
    snap = router_snapshot(bond.wl.router)
    # Routes the kernel adds and removes by itself (cached, the TUN's own link route come up in any order).
    snap["routes"] = sorted(line for line in snap["routes"].splitlines() if "cache" not in line)
    return snap


def test_peers_modes_and_wans_change_at_run_time_and_a_running_flow_never_notices(lab: Lab, tmp_path: Path) -> None:
    bond = build_bond_lab(lab, TWO_WANS, tmp_path)
    wan1 = bond.site.wans.pop()
    answer = _reload(bond.site)
    assert answer["ok"] and not answer["reloading"] and "wans" in answer["changes"], answer
    wait_for(lambda: [p["wan"] for p in bond.paths()] == ["wan0"], timeout=5)
    start_iperf_server(bond.lan)
    # The LAN host sends (through the site's scheduler, whose mode changes below) to the data-centre host,
    # whose intervals (-R: it receives) count delivered bytes; a sender's are bursty.
    proc = bond.dc.popen(["iperf3", "-c", bond.lan_addr, "-t", "15", "-i", "0.1", "-J", "-R",
                          "--connect-timeout", "3000"], stdout=-1, stderr=-1)
    time.sleep(2)
    peer_b = {"name": "b", "key": qe.make_node(bond.site.ns, "b", "10.99.0.3/24", tmp_path).node_id,
              "allowed_ips": ["10.99.0.3/32", PEER_B_LAN]}
    bond.site.peers.append(peer_b)
    answer = _reload(bond.site)
    assert answer["ok"] and answer["changes"] == ["peer b added"], answer
    assert PEER_B_LAN.split("/")[0] in _routes(bond), "peer b's LAN is routed into the tunnel"
    time.sleep(1)
    bond.site.wans.append(wan1)
    assert _reload(bond.site)["changes"] == ["wans"]
    wait_for(lambda: sorted(p["wan"] for p in bond.paths() if p["up"]) == ["wan0", "wan1"], timeout=5)
    time.sleep(1)
    aggregated = _duplicates_in(bond, 1.0)
    gw = bond.site.peers[0]
    gw["mode"] = "redundant"
    gw["class"] = [{"protocol": "udp", "port": 5060, "mode": "lowest-rtt"}]
    assert _reload(bond.site)["changes"] == ["peer gw changed"]
    # The new mode holds at once, on the same paths: every packet now arrives twice at the gateway.
    assert _duplicates_in(bond, 1.0) > 1000 > aggregated, "redundant mode took effect"
    bond.site.peers.remove(peer_b)
    assert _reload(bond.site)["changes"] == ["peer b removed"]
    assert PEER_B_LAN.split("/")[0] not in _routes(bond), "peer b's routes went with it"
    # A file that does not parse changes nothing, and the answer names the field.
    before = _snapshot(bond)
    broken = bond.site.config_path.read_text().replace('\nmode = "redundant"', '\nmode = "fastest"', 1)
    bond.site.config_path.write_text(broken)
    refused = api_reload(bond.site)
    assert not refused["ok"] and "peer[0].mode" in refused["error"], refused
    assert _snapshot(bond) == before
    out, _err = proc.communicate(timeout=40)
    raw = json.loads(out)
    assert "error" not in raw, raw.get("error")  # never reset
    stall = longest_stall_s(raw["intervals"], start_s=1.0)
    assert stall <= 0.5, f"the flow stalled {stall:.1f} s during the reloads"
    # The end state is what a fresh start with the final config builds.
    bond.site.write_config()
    assert qe.stop(bond.site) == 0
    qe.start(bond.site)
    qe.wait_connected(bond.site)
    assert bond.wait_paths_up(2)
    assert _snapshot(bond) == before


def test_a_router_reload_redoes_only_the_changed_parts(lab: Lab, tmp_path: Path) -> None:
    sites = build_sites_lab(lab, TWO_WANS, tmp_path)
    sites.start_all()
    site, router = sites.site_a, sites.wl.router
    dnsmasq_before = _pids(router, "dnsmasq")
    # A new web UI port: the answer comes first, then the UI moves; dnsmasq and the peers stay as they were.
    site.sections["webui"] = {"port": 8080}
    answer = _reload(site)
    assert answer["ok"] and answer["changes"] == ["webui", "firewall"], answer
    lan_ip = f"{LAN_PREFIX}.1"
    wait_for(lambda: curl(router, f"http://{lan_ip}:8080/healthz", timeout=1) is not None, timeout=10)
    assert curl(router, f"http://{lan_ip}:80/healthz", timeout=1) is None
    assert _pids(router, "dnsmasq") == dnsmasq_before
    # DNS settings: dnsmasq restarts, the web UI does not.
    ui_before = _pids(router, "python")
    site.sections["lan"]["dns_servers"] = []
    assert _reload(site)["changes"] == ["dnsmasq", "firewall"]
    assert _pids(router, "dnsmasq") != dnsmasq_before and _pids(router, "python") == ui_before
    assert site.status()["peers"][0]["connected"]


def _pids(ns: Namespace, name: str) -> list[str]:
    found = []
    for pid in ns.run("ip", "netns", "pids", ns.netns).stdout.split():
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == name:
                found.append(pid)
    return sorted(found)


def test_a_wan_added_by_a_reload_is_filtered_like_one_configured_at_start(lab: Lab, tmp_path: Path) -> None:
    # A node without a [lan] (this bonding host) filters the ports it knows face the internet.
    bond = build_bond_lab(lab, TWO_WANS, tmp_path)
    wan1 = bond.site.wans.pop()
    assert qe.stop(bond.site) == 0
    qe.start(bond.site)
    qe.wait_connected(bond.site)
    assert '"wan1"' not in bond.wl.router.run("nft", "list", "table", "inet", "quicether").stdout
    bond.site.wans.append(wan1)
    assert _reload(bond.site)["changes"] == ["wans"]
    ruleset = bond.wl.router.run("nft", "list", "table", "inet", "quicether").stdout
    assert 'iifname { "wan0", "wan1" } udp dport 4433 accept' in ruleset, ruleset
