"""Two sites behind one gateway, for router integration: DHCP/DNS on a LAN, exit through the gateway,
site-to-site routing, ACLs, port forwards and the kill switch.

    lan-a (DHCP) ── router A ═wan0..N═ internet ─┬─ gateway 198.18.0.2 (exit + relay between the sites)
      10.0.50.0/24   (site a, 10.99.0.1)          ├─ web 198.18.0.3 (whoami HTTP :8000, DNS for web.example)
                                                  └─ router B 198.18.0.4 ── lan-b 10.0.80.10 (HTTP :8000, :8001)
                                                     (site b, 10.99.0.3)

Site A uses the gateway as its exit (peer allowed_ips 0.0.0.0/0); site B only routes to site A's LAN.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.lab import nodes as qe
from tests.lab.netns import Lab, LabError, Namespace
from tests.lab.topology import LAN_PREFIX, REPO_ROOT, LinkSpec, WanLab, build_wan_lab

LAN_B_PREFIX = "10.0.80"
WEB_NAME = "web.example"
HTTP_PORT = 8000
UDHCPC_SCRIPT = REPO_ROOT / "tests" / "lab" / "udhcpc-script.sh"


@dataclass
class SitesLab:
    wl: WanLab
    site_a: qe.NodeSpec
    site_b: qe.NodeSpec
    gateway: qe.NodeSpec
    lan_b: Namespace
    servers: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def lan_a(self) -> Namespace:
        assert self.wl.lan is not None
        return self.wl.lan

    @property
    def web_addr(self) -> str:
        return self.wl.addr("web")

    @property
    def lan_b_addr(self) -> str:
        return f"{LAN_B_PREFIX}.10"

    def start_all(self) -> None:
        for node in (self.gateway, self.site_b, self.site_a):
            qe.start(node)
        for node in (self.site_a, self.site_b):
            qe.wait_connected(node, timeout=15)


def start_whoami(ns: Namespace, port: int = HTTP_PORT) -> subprocess.Popen[str]:
    proc = ns.popen([sys.executable, "-m", "tests.lab.whoami", "--port", str(port)], stdout=subprocess.PIPE,
                    cwd=REPO_ROOT)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise LabError(f"whoami server in {ns.netns} did not start")
    return proc


def curl(ns: Namespace, url: str, timeout: float = 5) -> str | None:
    """The body of `url` fetched from `ns`, or None if it could not be fetched."""
    proc = ns.run("curl", "-s", "--max-time", str(timeout), url, check=False, timeout=timeout + 5)
    return proc.stdout.strip() if proc.returncode == 0 else None


def dhcp_lease(ns: Namespace, lease_file: Path, device: str = "eth0") -> dict[str, str]:
    """Runs busybox udhcpc on `device` once; returns the applied lease (ip, mask, router, dns, domain)."""
    lease_file.unlink(missing_ok=True)
    proc = subprocess.run(["env", f"LEASE_FILE={lease_file}", *ns.argv(
        ["busybox", "udhcpc", "-i", device, "-n", "-q", "-f", "-t", "5", "-T", "1", "-s", str(UDHCPC_SCRIPT)])],
        capture_output=True, text=True, timeout=30)
    if not lease_file.exists():
        raise LabError(f"no DHCP lease on {ns.netns}/{device}: {proc.stderr.strip()}")
    return dict(item.split("=", 1) for item in lease_file.read_text().split() if "=" in item)


def build_sites_lab(lab: Lab, links: list[LinkSpec], state: Path, *, kill_switch: bool = False,
                    detect_wans: bool = False) -> SitesLab:
    wl = build_wan_lab(lab, links, lan_static=False, internet_hosts=("gateway", "web", "siteb"),
                       policy_routing=False)
    web = wl.host("web")
    servers = [start_whoami(web),
               web.popen(["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--pid-file=",
                          "--bind-interfaces", f"--listen-address={wl.addr('web')}",
                          f"--address=/{WEB_NAME}/{wl.addr('web')}"])]
    router_b = wl.host("siteb")
    lan_b = lab.add_namespace("lanb")
    lab.veth(lan_b, "eth0", router_b, "lan")
    lan_b.ip("addr", "add", f"{LAN_B_PREFIX}.10/24", "dev", "eth0")
    lan_b.ip("route", "add", "default", "via", f"{LAN_B_PREFIX}.1")
    servers += [start_whoami(lan_b, HTTP_PORT), start_whoami(lan_b, HTTP_PORT + 1)]
    for proc in servers:
        lab.on_close(proc.kill)

    gateway = qe.make_node(wl.host("gateway"), "gw", "10.99.0.2/24", state)
    site_a = qe.make_node(wl.router, "site-a", "10.99.0.1/24", state)
    site_b = qe.make_node(router_b, "site-b", "10.99.0.3/24", state)
    gw_endpoint = f"{wl.addr('gateway')}:{qe.QUIC_PORT}"
    gateway.node_extra = {"role": "gateway"}
    gateway.sections["gateway"] = {"internet": "eth0", "forward": [
        {"protocol": "tcp", "port": 8080, "to": f"{LAN_B_PREFIX}.10:{HTTP_PORT}"}]}
    gateway.peers = [
        {"name": "site-a", "key": site_a.node_id, "allowed_ips": ["10.99.0.1/32", f"{LAN_PREFIX}.0/24"]},
        {"name": "site-b", "key": site_b.node_id, "allowed_ips": ["10.99.0.3/32", f"{LAN_B_PREFIX}.0/24"]}]
    site_a.sections["lan"] = {"device": "lan", "address": f"{LAN_PREFIX}.1/24", "dns_servers": [wl.addr("web")],
                              "exit": "gw", "kill_switch": kill_switch}
    site_a.peers = [{"name": "gw", "key": gateway.node_id, "endpoint": gw_endpoint, "allowed_ips": ["0.0.0.0/0"]}]
    if detect_wans:
        site_a.node_extra = {"detect_wans": True}
    else:
        site_a.wans = [{"device": w.router_if, "gateway": w.isp_addr} for w in wl.wans]
    site_b.sections["lan"] = {"device": "lan", "address": f"{LAN_B_PREFIX}.1/24", "dhcp": False, "dns": False}
    site_b.peers = [{"name": "gw", "key": gateway.node_id, "endpoint": gw_endpoint,
                     "allowed_ips": ["10.99.0.0/24", f"{LAN_PREFIX}.0/24"]}]
    for node in (gateway, site_a, site_b):
        lab.on_close(lambda node=node: _stop_quietly(node))
    return SitesLab(wl=wl, site_a=site_a, site_b=site_b, gateway=gateway, lan_b=lan_b, servers=servers)


def _stop_quietly(node: qe.NodeSpec) -> None:
    if node.proc is not None and node.proc.poll() is None:
        node.proc.kill()
        node.proc.wait()


def processes(ns: Namespace) -> list[str]:
    """Names of the processes running in `ns` (the lab shares the host's pid namespace)."""
    names = []
    for pid in ns.run("ip", "netns", "pids", ns.netns).stdout.split():
        with contextlib.suppress(OSError):
            names.append(Path(f"/proc/{pid}/comm").read_text().strip())
    return names


def router_snapshot(ns: Namespace) -> dict[str, Any]:
    """What the daemon owns in a namespace, for before/after comparisons."""
    return {"nft": ns.run("nft", "list", "ruleset").stdout, "rules": ns.ip("rule").stdout,
            "routes": ns.ip("-4", "route", "show", "table", "all").stdout,
            "addrs": ns.ip("-4", "-br", "addr").stdout.split("\n")}
