"""Router integration in the lab: a LAN host behind a QuicEther site gets a DHCP lease and DNS from the
appliance and reaches the internet through the bond with the gateway's address; sites reach each other
through the gateway, ACLs and port forwards apply, the kill switch holds, WAN ports are found at run time,
and nothing is duplicated or left behind."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.lab import Lab, LinkSpec
from tests.lab import nodes as qe
from tests.lab.measure import wait_for
from tests.lab.sites import (
    HTTP_PORT,
    LAN_PREFIX,
    WEB_NAME,
    SitesLab,
    build_sites_lab,
    curl,
    dhcp_lease,
    processes,
    router_snapshot,
)

TWO_WANS = [LinkSpec(rate_mbit=100, delay_ms=4), LinkSpec(rate_mbit=50, delay_ms=8)]


def _lan_a_online(sites: SitesLab, tmp_path: Path) -> dict[str, str]:
    lease = dhcp_lease(sites.lan_a, tmp_path / "lease")
    return lease


def test_lan_host_gets_a_lease_resolves_names_and_exits_through_the_gateway(lab: Lab, tmp_path: Path) -> None:
    sites = build_sites_lab(lab, TWO_WANS, tmp_path)
    sites.start_all()
    lease = _lan_a_online(sites, tmp_path)
    assert lease["router"] == f"{LAN_PREFIX}.1" and lease["dns"] == f"{LAN_PREFIX}.1"
    host = int(lease["ip"].rsplit(".", 1)[1])
    assert lease["ip"].startswith(f"{LAN_PREFIX}.") and 100 <= host <= 250 and lease["mask"] == "24"
    leases = sites.site_a.status()["router"]["lan"]["leases"]
    assert [entry["ip"] for entry in leases] == [lease["ip"]]
    # DNS: the appliance answers its own name and forwards the rest to the configured upstream.
    answer = sites.lan_a.run("busybox", "nslookup", "-type=a", WEB_NAME, lease["dns"]).stdout
    assert sites.web_addr in answer
    assert f"{LAN_PREFIX}.1" in sites.lan_a.run("busybox", "nslookup", "-type=a", "router.lan", lease["dns"]).stdout
    # Internet through the bond: the web server sees the gateway's address, and the bond carried it.
    tx_before = sites.site_a.status()["peers"][0]["tx_bytes"]
    assert curl(sites.lan_a, f"http://{sites.web_addr}:{HTTP_PORT}/") == sites.wl.addr("gateway")
    assert sites.site_a.status()["peers"][0]["tx_bytes"] > tx_before
    assert sites.site_a.status()["router"]["lan"]["exit_active"]


def test_sites_reach_each_other_through_the_gateway_where_acls_allow(lab: Lab, tmp_path: Path) -> None:
    sites = build_sites_lab(lab, TWO_WANS, tmp_path)
    sites.gateway.acls = [{"action": "deny", "from": "site-a", "to": "site-b", "protocol": "tcp",
                           "port": HTTP_PORT}]
    sites.start_all()
    lease = _lan_a_online(sites, tmp_path)
    # Site B's host sees site A's host by its own address (routed, not NATed), and the other way round.
    assert curl(sites.lan_b, f"http://{lease['ip']}:{HTTP_PORT}/") is None  # nothing listens on lan-a
    assert sites.lan_a.run("ping", "-c", "2", "-W", "2", sites.lan_b_addr, check=False).returncode == 0
    assert curl(sites.lan_a, f"http://{sites.lan_b_addr}:{HTTP_PORT + 1}/") == lease["ip"]
    # The ACL denies exactly TCP port 8000 from site A to site B.
    assert curl(sites.lan_a, f"http://{sites.lan_b_addr}:{HTTP_PORT}/", timeout=2) is None
    # Port forward: the internet reaches site B's port 8000 through the gateway's address (the ACL is
    # about site A only).
    web = sites.wl.host("web")
    assert curl(web, f"http://{sites.wl.addr('gateway')}:8080/") == "10.99.0.2"
    # The gateway's internet port refuses everything but QUIC: its SSH/HTTP-like ports time out.
    gw_addr = sites.wl.addr("gateway")
    assert web.run("nc", "-z", "-w", "1", gw_addr, "22", check=False).returncode != 0
    assert web.run("nc", "-z", "-w", "1", gw_addr, str(HTTP_PORT), check=False).returncode != 0


def _stop_gateway(sites: SitesLab) -> None:
    qe.stop(sites.gateway)
    wait_for(lambda: not sites.site_a.status()["router"]["lan"]["exit_active"]
          or not sites.site_a.status()["peers"][0]["connected"], timeout=10)


def test_without_kill_switch_the_lan_falls_back_to_the_wans_and_returns(lab: Lab, tmp_path: Path) -> None:
    sites = build_sites_lab(lab, TWO_WANS, tmp_path)
    sites.start_all()
    _lan_a_online(sites, tmp_path)
    url = f"http://{sites.web_addr}:{HTTP_PORT}/"
    assert curl(sites.lan_a, url) == sites.wl.addr("gateway")
    qe.stop(sites.gateway)
    # The exit follows the core's peer events at once (its safety re-check is every 5 s).
    took = wait_for(lambda: not sites.site_a.status()["router"]["lan"]["exit_active"], timeout=5)
    assert took < 1.5, f"the exit fell back after {took:.1f} s"
    # Straight out of WAN 0, NATed to the router's WAN address.
    assert curl(sites.lan_a, url) == sites.wl.wans[0].router_addr
    qe.start(sites.gateway)
    wait_for(lambda: sites.site_a.status()["router"]["lan"]["exit_active"], timeout=15)
    assert curl(sites.lan_a, url) == sites.wl.addr("gateway")


def test_kill_switch_keeps_lan_traffic_off_raw_wans(lab: Lab, tmp_path: Path) -> None:
    sites = build_sites_lab(lab, TWO_WANS, tmp_path, kill_switch=True)
    sites.start_all()
    _lan_a_online(sites, tmp_path)
    url = f"http://{sites.web_addr}:{HTTP_PORT}/"
    assert curl(sites.lan_a, url) == sites.wl.addr("gateway")
    # The bond goes down while the WANs still work: nothing may leave by them.
    _stop_gateway(sites)
    time.sleep(1)
    assert curl(sites.lan_a, url, timeout=3) is None
    assert sites.lan_a.run("ping", "-c", "2", "-W", "1", sites.web_addr, check=False).returncode != 0
    # All WANs cut as well: still nothing, and the router keeps its rules.
    for i in range(len(sites.wl.wans)):
        sites.wl.set_link(i, up=False)
    assert curl(sites.lan_a, url, timeout=2) is None
    for i in range(len(sites.wl.wans)):
        sites.wl.set_link(i, up=True)
    qe.start(sites.gateway)
    wait_for(lambda: curl(sites.lan_a, url, timeout=2) == sites.wl.addr("gateway"), timeout=20, step=0.5)


def test_direct_destinations_bypass_the_exit_and_the_kill_switch(lab: Lab, tmp_path: Path) -> None:
    sites = build_sites_lab(lab, TWO_WANS, tmp_path, kill_switch=True)
    sites.site_a.sections["lan"]["direct"] = [f"{sites.web_addr}/32"]
    sites.start_all()
    _lan_a_online(sites, tmp_path)
    url = f"http://{sites.web_addr}:{HTTP_PORT}/"
    # The web host is a direct destination: it sees the router's WAN address, not the gateway's.
    assert curl(sites.lan_a, url) == sites.wl.wans[0].router_addr
    assert sites.lan_a.run("ping", "-c", "2", "-W", "2", sites.lan_b_addr, check=False).returncode == 0
    _stop_gateway(sites)
    time.sleep(1)
    # With the bond down, the kill switch holds everything but the direct destination.
    assert curl(sites.lan_a, url) == sites.wl.wans[0].router_addr
    assert sites.lan_a.run("ping", "-c", "2", "-W", "1", sites.lan_b_addr, check=False).returncode != 0


def _wan_names(sites: SitesLab) -> list[str]:
    peers = sites.site_a.status()["peers"]
    return sorted(p["wan"] for p in peers[0]["paths"] if p["up"]) if peers else []


def test_a_wan_port_found_at_run_time_is_bonded_and_dropped_with_its_route(lab: Lab, tmp_path: Path) -> None:
    sites = build_sites_lab(lab, TWO_WANS, tmp_path, detect_wans=True)
    sites.start_all()
    router = sites.wl.router
    # Only WAN 0 has a default route at start.
    wait_for(lambda: _wan_names(sites) == ["wan0"], timeout=10)
    # A second ISP appears (as a DHCP client would install it): a new path without a restart.
    router.ip("route", "add", "default", "via", sites.wl.wans[1].isp_addr, "dev", "wan1", "metric", "100")
    wait_for(lambda: _wan_names(sites) == ["wan0", "wan1"], timeout=5)
    assert "wan1" in sites.site_a.status()["router"]["outside"]
    # The firewall filters by port role: wan1 was outside before it became a WAN and stays so.
    assert 'iifname != { "lo", "qe0", "lan" } udp dport 4433 accept' in router.run(
        "nft", "list", "table", "inet", "quicether").stdout
    router.ip("route", "del", "default", "via", sites.wl.wans[1].isp_addr, "dev", "wan1", "metric", "100")
    wait_for(lambda: _wan_names(sites) == ["wan0"], timeout=5)




def test_sigkill_and_restart_duplicate_nothing_and_stop_leaves_nothing(lab: Lab, tmp_path: Path) -> None:
    sites = build_sites_lab(lab, TWO_WANS, tmp_path)
    router = sites.wl.router
    router_b = sites.site_b.ns
    before_a, before_b = router_snapshot(router), router_snapshot(router_b)
    forwarding_b = router_b.run("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip()
    sites.start_all()
    _lan_a_online(sites, tmp_path)
    running = router_snapshot(router)
    assert "table inet quicether" in running["nft"] and "lookup 7200" in running["rules"]
    assert sites.site_a.proc is not None
    sites.site_a.proc.send_signal(signal.SIGKILL)
    sites.site_a.proc.wait()
    qe.start(sites.site_a)
    qe.wait_connected(sites.site_a, timeout=15)
    wait_for(lambda: sites.site_a.status()["router"]["lan"]["exit_active"], timeout=5)
    # dnsmasq drops privileges, which clears its parent-death signal: the restart kills the old one.
    assert processes(router).count("dnsmasq") == 1
    # The web UI died with the old daemon (its parent-death signal) and the new one serves port 80.
    assert router.run("ss", "-Hltn", "sport", "= :80").stdout.count("LISTEN") == 1
    again = router_snapshot(router)
    assert again["nft"] == running["nft"] and again["rules"] == running["rules"]
    assert sorted(again["addrs"]) == sorted(running["addrs"])
    # The lease survived the crash: the host's address is still known.
    assert len(sites.site_a.status()["router"]["lan"]["leases"]) == 1
    for node in (sites.site_a, sites.site_b):
        assert qe.stop(node) == 0
    after_a, after_b = router_snapshot(router), router_snapshot(router_b)
    for before, after in ((before_a, after_a), (before_b, after_b)):
        assert "quicether" not in after["nft"]
        assert after["rules"] == before["rules"] and after["routes"] == before["routes"]
        assert sorted(after["addrs"]) == sorted(before["addrs"])
    assert "dnsmasq" not in processes(router)
    assert router.run("ss", "-Hltn", "sport", "= :80").stdout.strip() == ""
    assert router_b.run("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == forwarding_b
