"""A home router's port mapping service in the lab: miniupnpd (its nftables build, Debian's
miniupnpd-nftables) answering PCP and NAT-PMP (and UPnP-IGD where asked to) on a site's NAT namespace of the
mesh lab (`mesh.star`), installing a real DNAT rule for each mapping it grants and deleting it when the
mapping is released.

miniupnpd refuses to map anything while its outside address is private (the router would be behind another
NAT), and so does QuicEther: `give_public_address` first moves the NAT's outside address from the mesh
lab's 10.x link address to a public-looking one (11.x: the lab's namespaces reach nothing outside them).
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.lab.netns import Lab, LabError, Namespace
from tests.lab.topology import WanLab

NATPMP_PORT = 5351
TABLE = "miniupnpd"
# The chains miniupnpd adds its rules to (upnp_*_chain in its config), hooked in by `start_miniupnpd`;
# an input chain counts the NAT-PMP requests that reach the router, whatever miniupnpd makes of them.
RULESET = f"""table inet {TABLE} {{
  chain forward {{
    type filter hook forward priority filter; policy accept;
    jump miniupnpd
  }}
  chain miniupnpd {{
  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    jump prerouting_miniupnpd
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    jump postrouting_miniupnpd
  }}
  chain prerouting_miniupnpd {{
  }}
  chain postrouting_miniupnpd {{
  }}
  chain input {{
    type filter hook input priority filter - 1; policy accept;
    udp dport {NATPMP_PORT} counter
  }}
}}
"""


def give_public_address(hub: Namespace, site: int, public_ip: str) -> None:
    """Site `site`'s NAT (namespace n<site> of `mesh.star`) faces the hub from `public_ip` instead of its
    link address 10.(site+1).0.1: its masquerade then shows `public_ip`, which the hub routes back to it."""
    nat = hub.lab[f"n{site}"]
    hub_ip = f"10.{site + 1}.0.2"
    nat.ip("addr", "flush", "dev", "wire")
    nat.ip("addr", "add", f"{public_ip}/32", "dev", "wire")
    nat.ip("route", "add", hub_ip, "dev", "wire")
    nat.ip("route", "add", "default", "via", hub_ip)
    hub.ip("route", "add", f"{public_ip}/32", "dev", f"s{site}")


def give_isp_public_address(wl: WanLab, index: int, public_ip: str) -> None:
    """The ISP router of WAN `index` of the WAN lab (`topology.build_wan_lab`) faces its wire from
    `public_ip` instead of 10.(40+index).0.1: its NAT then shows `public_ip`, routed back to it."""
    wan = wl.wans[index]
    wire_ip = f"10.{40 + index}.0.2"
    wan.isp.ip("addr", "flush", "dev", "wire")
    wan.isp.ip("addr", "add", f"{public_ip}/32", "dev", "wire")
    wan.isp.ip("route", "add", wire_ip, "dev", "wire")
    wan.isp.ip("route", "add", "default", "via", wire_ip)
    wan.wire.ip("route", "add", f"{public_ip}/32", "dev", "isp")
    wl.inet.ip("route", "add", f"{public_ip}/32", "via", f"10.{70 + index}.0.1")


@dataclass
class MiniUpnpd:
    ns: Namespace
    proc: subprocess.Popen[str]
    log_path: Path

    def mappings(self) -> list[str]:
        """The DNAT rules miniupnpd holds now, e.g. 'udp dport 4433 dnat ip to 172.16.1.2:4433'."""
        chain = self.ns.run("nft", "list", "chain", "inet", TABLE, "prerouting_miniupnpd").stdout
        return [re.sub(r"@nh,72,8 0x11", "udp", line.strip()) for line in chain.splitlines() if "dnat" in line]

    def requests_seen(self) -> int:
        """NAT-PMP (and PCP) packets that reached the router's port 5351."""
        chain = self.ns.run("nft", "list", "chain", "inet", TABLE, "input").stdout
        found = re.search(r"counter packets (\d+)", chain)
        if found is None:
            raise LabError(f"no request counter in {self.ns.netns}: {chain}")
        return int(found.group(1))

    def speak_natpmp_only(self) -> None:
        """Drops PCP requests (version 2 in the first payload byte) before miniupnpd sees them, as a router
        that speaks only NAT-PMP and ignores what it cannot read: a client must fall back to NAT-PMP."""
        self.ns.run("nft", "add", "rule", "inet", TABLE, "input", "udp", "dport", str(NATPMP_PORT),
                    "@th,64,8", "2", "drop")

    def speak_upnp_only(self) -> None:
        """Drops every request to port 5351 (after counting it) before miniupnpd sees it, as a router that
        speaks only UPnP-IGD: a client must find it by SSDP and map over SOAP."""
        self.ns.run("nft", "add", "rule", "inet", TABLE, "input", "udp", "dport", str(NATPMP_PORT), "drop")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


def start_miniupnpd(lab: Lab, nat: Namespace, inside_net: str, state: Path, *, outside_if: str = "wire",
                    inside_if: str = "lan", upnp: bool = False) -> MiniUpnpd:
    """Runs miniupnpd in `nat` with PCP and NAT-PMP on, and UPnP-IGD with `upnp` (SSDP and its HTTP/SOAP
    server on `inside_if`), granting mappings to hosts of `inside_net` only for their own address (secure
    mode). Stopped with the lab (its rules go with the namespace)."""
    state.mkdir(parents=True, exist_ok=True)
    nat.run("nft", "-f", "-", input=RULESET)
    conf = state / "miniupnpd.conf"
    conf.write_text("\n".join([
        f"ext_ifname={outside_if}", f"listening_ip={inside_if}", "enable_natpmp=yes",
        f"enable_upnp={'yes' if upnp else 'no'}",
        "secure_mode=yes", f"lease_file={state / 'leases'}", f"upnp_table_name={TABLE}",
        f"upnp_nat_table_name={TABLE}", "upnp_forward_chain=miniupnpd", "upnp_nat_chain=prerouting_miniupnpd",
        "upnp_nat_postrouting_chain=postrouting_miniupnpd", "uuid=3c3a1e5e-1f0b-4d55-9a3e-0000000000a1",
        f"allow 1024-65535 {inside_net} 1024-65535", "deny 0-65535 0.0.0.0/0 0-65535", ""]))
    log_path = state / "miniupnpd.log"
    log = open(log_path, "w")  # noqa: SIM115 - lives as long as the process
    proc = nat.popen(["/usr/sbin/miniupnpd", "-d", "-f", str(conf), "-P", str(state / "miniupnpd.pid")],
                     stdout=log, stderr=subprocess.STDOUT)
    lab.on_close(log.close)
    server = MiniUpnpd(nat, proc, log_path)
    # Ready once it listens on the NAT-PMP port (it logs that line after binding it).
    for _ in range(100):
        if "Listening for NAT-PMP" in server.log():
            return server
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise LabError(f"miniupnpd did not start in {nat.netns}: {server.log()}")
