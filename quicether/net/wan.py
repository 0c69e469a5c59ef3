"""WAN ports: their current state (carrier + IPv4 address), per-WAN policy routing, and a netlink socket
that says when to look again.

Policy routing: WAN i gets routing table `WAN_TABLE_BASE + i` with a default route via its gateway, and two
rules at priority `WAN_RULE_PRIORITY_BASE + i`: `from <wan address> lookup <table>` and `fwmark <table>
lookup <table>` (the core marks each WAN socket's packets with its table number), so replies and keepalives
leave through the ISP they belong to, whatever their source address says. Both ranges are QuicEther's: at
start every rule and route in them is removed first, so a crashed daemon's leftovers never pile up.
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from quicether.config import WanConfig

WAN_TABLE_BASE = 7100
WAN_RULE_PRIORITY_BASE = 7100
# Enough for any appliance's ports; the ranges above stay clear of the tables other software uses.
MAX_WANS = 64
# Netlink multicast groups: link changes and IPv4 address changes.
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
IFF_LOWER_UP = 0x10000


@dataclass(frozen=True)
class WanState:
    """What a WAN port looks like now: usable when it has carrier and an address."""

    name: str
    device: str
    address: str | None
    carrier: bool
    backup: bool

    @property
    def usable(self) -> bool:
        return self.carrier and self.address is not None


def read_states(wans: list[WanConfig]) -> list[WanState]:
    states = []
    with IPRoute() as ipr:
        for wan in wans:
            found = ipr.link_lookup(ifname=wan.device)
            carrier, address = False, None
            if found:
                link = ipr.get_links(found[0])[0]
                carrier = bool(link["flags"] & IFF_LOWER_UP)
                addrs = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=found[0], family=socket.AF_INET)]
                if wan.address is not None:
                    address = wan.address if wan.address in addrs else None
                else:
                    address = addrs[0] if addrs else None
            states.append(WanState(wan.name, wan.device, address, carrier, wan.backup))
    return states


def _table(index: int) -> int:
    return WAN_TABLE_BASE + index


def wan_mark(index: int) -> int:
    """The firewall mark on WAN `index`'s packets: its table number, easy to read in `ip rule`."""
    return _table(index)


def remove_all_policy_routes() -> None:
    """Removes every rule and route in QuicEther's ranges (ours from this run or a crashed one)."""
    with IPRoute() as ipr:
        for rule in ipr.get_rules(family=socket.AF_INET):
            priority = rule.get_attr("FRA_PRIORITY") or 0
            if WAN_RULE_PRIORITY_BASE <= priority < WAN_RULE_PRIORITY_BASE + MAX_WANS:
                with contextlib.suppress(NetlinkError):
                    selector = ({"fwmark": rule.get_attr("FRA_FWMARK")} if rule.get_attr("FRA_FWMARK") else
                                {"src": rule.get_attr("FRA_SRC"), "src_len": rule["src_len"]})
                    ipr.rule("del", priority=priority, table=rule.get_attr("FRA_TABLE"), family=socket.AF_INET,
                             **selector)
        for index in range(MAX_WANS):
            with contextlib.suppress(NetlinkError):
                ipr.flush_routes(table=_table(index))


def install_policy_route(index: int, wan: WanConfig, address: str) -> None:
    """Table + rule so packets from `address` leave by `wan.gateway` on `wan.device`. Idempotent."""
    if wan.gateway is None:
        return
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=wan.device)
        if not found:
            return
        ipr.route("replace", dst="0.0.0.0/0", gateway=wan.gateway, oif=found[0], table=_table(index))
        for selector in ({"src": address, "src_len": 32}, {"fwmark": wan_mark(index)}):
            with contextlib.suppress(NetlinkError):  # EEXIST: already there
                ipr.rule("add", priority=WAN_RULE_PRIORITY_BASE + index, table=_table(index), family=socket.AF_INET,
                         **selector)


def remove_policy_route(index: int, address: str | None) -> None:
    with IPRoute() as ipr:
        selectors: list[dict[str, object]] = [{"fwmark": wan_mark(index)}]
        if address:
            selectors.append({"src": address, "src_len": 32})
        for selector in selectors:
            with contextlib.suppress(NetlinkError):
                ipr.rule("del", priority=WAN_RULE_PRIORITY_BASE + index, table=_table(index), family=socket.AF_INET,
                         **selector)
        with contextlib.suppress(NetlinkError):
            ipr.flush_routes(table=_table(index))


# Our shaper's qdisc handle (major 0x71): a root qdisc with another handle is the system's, never touched.
RATE_CAP_HANDLE = 0x710000
# Burst of at least ~5 ms at the capped rate (and never under two full frames), so the cap holds the average
# without starving bursts; the queue may delay a packet by at most this much before dropping it.
RATE_CAP_BURST_S = 0.005
RATE_CAP_LATENCY = "30ms"


def set_rate_cap(device: str, rate_mbit: float) -> None:
    """Shapes what leaves `device` to `rate_mbit` (tbf): the queue then builds here, where the bond's RTT
    measurement sees it, not in the ISP modem's buffer."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=device)
        if not found:
            return
        burst = max(2 * 1514, int(rate_mbit * 1e6 / 8 * RATE_CAP_BURST_S))
        ipr.tc("replace", "tbf", found[0], RATE_CAP_HANDLE, rate=f"{rate_mbit * 1000:.0f}kbit", burst=burst,
               latency=RATE_CAP_LATENCY)


def clear_rate_cap(device: str) -> None:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=device)
        if not found:
            return
        for qdisc in ipr.get_qdiscs(index=found[0]):
            if qdisc["handle"] == RATE_CAP_HANDLE and qdisc["parent"] == 0xFFFFFFFF:
                with contextlib.suppress(NetlinkError):
                    ipr.tc("del", index=found[0], handle=RATE_CAP_HANDLE, root=True)


def netlink_monitor(routes: bool = False) -> socket.socket:
    """A non-blocking netlink socket that becomes readable on link and IPv4 address changes (and route
    changes with `routes`, for WAN detection)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, socket.NETLINK_ROUTE)
    sock.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | (RTMGRP_IPV4_ROUTE if routes else 0)))
    return sock
