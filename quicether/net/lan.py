"""The LAN side of the router through pyroute2: the appliance's LAN address, the exit policy that sends
LAN traffic into the tunnel, and the kernel switches a router needs.

Exit policy: table `EXIT_TABLE` holds one route, `default dev <tun>`, and the rule `iif <lan> lookup
EXIT_TABLE` sends everything the LAN forwards through it. The router's own packets (the QUIC paths
themselves, bound to WAN addresses and routed by the per-WAN rules) never match that rule: that is the
bypass that keeps the tunnel from routing into itself. The main table is never changed, so removing the
rule is all it takes to fall back to the raw WANs. Table and rule priority are QuicEther's; a crashed
run's leftovers are removed at start.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from quicether.net.links import LinkError, link_index

EXIT_TABLE = 7200
EXIT_RULE_PRIORITY = 7200
# Just before the exit rule: LAN traffic to `direct` destinations keeps the main table (the raw WANs).
DIRECT_RULE_PRIORITY = 7199
MAIN_TABLE = 254


def add_lan_address(device: str, address: str) -> bool:
    """Brings the LAN port up with `address`; True if the address was added (not already there)."""
    iface = ipaddress.IPv4Interface(address)
    with IPRoute() as ipr:
        index = link_index(ipr, device, "LAN device")
        ipr.link("set", index=index, state="up")
        present = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=index, family=socket.AF_INET)}
        if str(iface.ip) in present:
            return False
        try:
            ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen,
                     family=socket.AF_INET)
        except NetlinkError as exc:
            raise LinkError(f"adding {address} to {device}: {exc.args[-1] if exc.args else exc}") from None
        return True


def remove_lan_address(device: str, address: str) -> None:
    iface = ipaddress.IPv4Interface(address)
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=device)
        if found:
            with contextlib.suppress(NetlinkError):
                ipr.addr("del", index=found[0], address=str(iface.ip), prefixlen=iface.network.prefixlen,
                         family=socket.AF_INET)


def set_exit(lan_device: str, tun: str, active: bool, direct: list[str] | None = None) -> None:
    """Routes LAN traffic into the tunnel (active) or lets it use the main table (inactive), except for the
    `direct` prefixes, which always use the main table. Idempotent."""
    with IPRoute() as ipr:
        for prefix in direct or []:
            net = ipaddress.IPv4Network(prefix)
            with contextlib.suppress(NetlinkError):  # EEXIST: already there
                ipr.rule("add", priority=DIRECT_RULE_PRIORITY, table=MAIN_TABLE, iifname=lan_device,
                         dst=str(net.network_address), dst_len=net.prefixlen, family=socket.AF_INET)
        if not active:
            with contextlib.suppress(NetlinkError):
                ipr.rule("del", priority=EXIT_RULE_PRIORITY, table=EXIT_TABLE, iifname=lan_device,
                         family=socket.AF_INET)
            return
        ipr.route("replace", dst="0.0.0.0/0", oif=link_index(ipr, tun, "tunnel device"), table=EXIT_TABLE)
        with contextlib.suppress(NetlinkError):  # EEXIST: already there
            ipr.rule("add", priority=EXIT_RULE_PRIORITY, table=EXIT_TABLE, iifname=lan_device,
                     family=socket.AF_INET)


def remove_exit() -> None:
    """Removes the exit and direct rules and the exit table, ours from this run or a crashed one."""
    with IPRoute() as ipr:
        for rule in ipr.get_rules(family=socket.AF_INET):
            priority = rule.get_attr("FRA_PRIORITY")
            if priority in (EXIT_RULE_PRIORITY, DIRECT_RULE_PRIORITY):
                selector = {"dst": rule.get_attr("FRA_DST"), "dst_len": rule["dst_len"]} if rule["dst_len"] else {}
                with contextlib.suppress(NetlinkError):
                    ipr.rule("del", priority=priority, table=rule.get_attr("FRA_TABLE"),
                             iifname=rule.get_attr("FRA_IIFNAME"), family=socket.AF_INET, **selector)
        with contextlib.suppress(NetlinkError):
            ipr.flush_routes(table=EXIT_TABLE)


def default_routes(exclude: set[str]) -> list[tuple[str, str | None]]:
    """(device, gateway) of every IPv4 default route in the main table, except through `exclude`."""
    found: list[tuple[str, str | None]] = []
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for route in ipr.get_routes(family=socket.AF_INET, table=MAIN_TABLE):
            if route["dst_len"] != 0 or route.get_attr("RTA_DST") not in (None, "0.0.0.0"):
                continue
            device = names.get(route.get_attr("RTA_OIF"))
            if device and device not in exclude and device not in {d for d, _ in found}:
                found.append((device, route.get_attr("RTA_GATEWAY")))
    return found


def write_sysctl(name: str, value: str) -> str:
    """Sets a sysctl (dotted name) and returns the value it had, so it can be put back on stop."""
    path = Path("/proc/sys") / name.replace(".", "/")
    old = path.read_text().strip()
    if old != value:
        path.write_text(value)
    return old
