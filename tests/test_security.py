"""The router probed as an attacker would (issue "Security defects found by probing the router"): from the
ISP side before any WAN is known, and from other sites through the tunnel."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from quicether import capabilities
from tests.lab import Lab, LinkSpec
from tests.lab import nodes as qe
from tests.lab.netns import Namespace
from tests.lab.sites import HTTP_PORT, LAN_PREFIX, build_sites_lab, curl, start_whoami

TWO_WANS = [LinkSpec(rate_mbit=100, delay_ms=4), LinkSpec(rate_mbit=50, delay_ms=8)]
LAN_IP = f"{LAN_PREFIX}.1"
LAN_HOST = f"{LAN_PREFIX}.10"


def _resolves(ns: Namespace, name: str, server: str) -> bool:
    """Whether `server` answers a DNS query for `name` from `ns` within 3 s."""
    try:
        proc = ns.run("timeout", "3", "busybox", "nslookup", "-type=a", name, server, check=False, timeout=10)
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0 and LAN_IP in proc.stdout


def _ui_answers(ns: Namespace) -> bool:
    return curl(ns, f"http://{LAN_IP}/healthz", timeout=2) is not None


@pytest.mark.parametrize("wan_config", ["detect-wans-without-a-default-route", "no-wan-config"])
def test_the_isp_side_reaches_nothing_before_any_wan_is_known(lab: Lab, tmp_path: Path, wan_config: str) -> None:
    sites = build_sites_lab(lab, TWO_WANS, tmp_path, detect_wans=True)
    router, lan = sites.wl.router, sites.lan_a
    site = sites.site_a
    if wan_config == "no-wan-config":
        site.node_extra = {}
        site.wans = []
    # No port has a default route: the daemon knows no WAN yet (DHCP has not answered, say).
    router.ip("route", "del", "default")
    lan.ip("addr", "add", f"{LAN_HOST}/24", "dev", "eth0")
    lan.ip("route", "add", "default", "via", LAN_IP)
    lab.on_close(start_whoami(lan).kill)
    # The attacker is the ISP: it routes the LAN prefix to the router's WAN address.
    isp = sites.wl.wans[0].isp
    isp.ip("route", "add", f"{LAN_PREFIX}.0/24", "via", sites.wl.wans[0].router_addr)
    router.ip("addr", "add", f"{LAN_IP}/24", "dev", "lan")
    # Without QuicEther's firewall the ISP reaches the LAN host: the checks below can fail.
    assert curl(isp, f"http://{LAN_HOST}:{HTTP_PORT}/", timeout=2) is not None
    router.ip("addr", "del", f"{LAN_IP}/24", "dev", "lan")
    qe.start(site)
    assert _ui_answers(lan) and _resolves(lan, "router.lan", LAN_IP), "the LAN side is served"
    assert not _ui_answers(isp), "the web UI (first-boot wizard) must not answer the ISP side"
    assert not _resolves(isp, "router.lan", LAN_IP), "no open resolver towards the ISP"
    assert curl(isp, f"http://{LAN_HOST}:{HTTP_PORT}/", timeout=2) is None, "LAN hosts are not reachable"
    assert isp.run("ping", "-c", "2", "-W", "1", LAN_HOST, check=False).returncode != 0
    # A port marked unused (wan1, not configured, no default route) is filtered the same way.
    isp1 = sites.wl.wans[1].isp
    isp1.ip("route", "add", f"{LAN_PREFIX}.0/24", "via", sites.wl.wans[1].router_addr)
    assert not _ui_answers(isp1) and curl(isp1, f"http://{LAN_HOST}:{HTTP_PORT}/", timeout=2) is None


def test_other_sites_and_the_gateway_reach_neither_the_web_ui_nor_dns_through_the_tunnel(lab: Lab,
                                                                                      tmp_path: Path) -> None:
    sites = build_sites_lab(lab, TWO_WANS, tmp_path)
    sites.gateway.sections["firewall"] = {"open": ["tcp/2222"]}
    sites.start_all()
    gateway = sites.gateway.ns
    # The gateway's internet port takes QUIC and what [firewall] open lists (SSH on a VPS), nothing else.
    for port in (2222, 2223):
        lab.on_close(gateway.popen(["nc", "-lk", "-p", str(port)], stdout=-1, stderr=-1).kill)
    time.sleep(0.2)
    web, gw_addr = sites.wl.host("web"), sites.wl.addr("gateway")
    assert web.run("nc", "-z", "-w", "2", gw_addr, "2222", check=False).returncode == 0
    assert web.run("nc", "-z", "-w", "2", gw_addr, "2223", check=False).returncode != 0
    # The tunnel routes the gateway to site A's LAN address (ping answers) ...
    assert gateway.run("ping", "-c", "2", "-W", "2", LAN_IP, check=False).returncode == 0
    # ... but the router's web UI and DNS forwarder answer the LAN port only.
    assert not _ui_answers(gateway) and not _resolves(gateway, "router.lan", LAN_IP)
    assert not _ui_answers(sites.lan_b)
    lan = sites.lan_a
    lan.ip("addr", "add", f"{LAN_HOST}/24", "dev", "eth0")
    assert _ui_answers(lan) and _resolves(lan, "router.lan", LAN_IP)


def test_the_daemon_and_its_children_keep_only_the_capabilities_they_need(lab: Lab, tmp_path: Path) -> None:
    """Issue "Reliability, security and operability", least privilege: after start the daemon (root) holds
    only quicether/capabilities.py's set, as do dnsmasq and the web UI it runs; the router still works."""
    sites = build_sites_lab(lab, TWO_WANS, tmp_path)
    sites.start_all()
    router = sites.site_a
    assert router.proc is not None
    keep = capabilities.keep_mask()
    effective, bounding = capabilities.held(router.proc.pid)
    assert (effective, bounding) == (keep, keep), (hex(effective), hex(bounding))
    assert "CAP_SYS_ADMIN" not in router.status()["node"]["capabilities"]
    assert set(router.status()["node"]["capabilities"]) == set(capabilities.KEEP)
    children = [int(pid) for pid in router.ns.run("ip", "netns", "pids", router.ns.netns).stdout.split()]
    names = {pid: Path(f"/proc/{pid}/comm").read_text().strip() for pid in children if Path(f"/proc/{pid}").exists()}
    dnsmasq = [pid for pid, name in names.items() if name == "dnsmasq"]
    assert dnsmasq, names
    for pid in dnsmasq:
        assert capabilities.held(pid)[1] & ~keep == 0, "no child gets a capability back"
    # With that, the router still serves: DNS from its dnsmasq, the web UI on the LAN.
    lan = sites.lan_a
    lan.ip("addr", "add", f"{LAN_HOST}/24", "dev", "eth0")
    assert _ui_answers(lan) and _resolves(lan, "router.lan", LAN_IP)
