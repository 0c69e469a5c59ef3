"""The TUN device's address, MTU and the routes for peers' allowed IPs, through pyroute2 (netlink).

The TUN device itself is created by the core when the node starts and vanishes with it, taking its
address and routes along; `remove_routes` still removes ours explicitly so a stop leaves nothing behind
even if the device were persistent.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

IFA_F_NODAD = 0x02  # linux/if_addr.h


class LinkError(RuntimeError):
    """A netlink operation failed; the message names the device and what was attempted."""


def link_index(ipr: IPRoute, name: str, what: str = "device") -> int:
    """The interface index of `name`; LinkError naming it as `what` (e.g. "LAN device") if it is missing."""
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise LinkError(f"{what} {name} does not exist")
    return int(found[0])


# Packets the kernel queues for the data plane to read: a burst from a fast LAN must not overflow it
# while the reader is briefly descheduled (the default 500 did under load in the lab).
TUN_TX_QUEUE_LEN = 4096


def configure_tun(name: str, mtu: int, addresses: list[str]) -> None:
    """Sets the MTU and queue length, adds the overlay addresses (IPv4 and, a member of a network, its IPv6
    ULA) and brings the device up."""
    with IPRoute() as ipr:
        index = link_index(ipr, name)
        try:
            ipr.link("set", index=index, mtu=mtu, txqlen=TUN_TX_QUEUE_LEN)
            for address in addresses:
                iface = ipaddress.ip_interface(address)
                family = socket.AF_INET if iface.version == 4 else socket.AF_INET6
                # No duplicate address detection on IPv6: the address is ours by its certificate, and a
                # point-to-point TUN has no neighbour to ask (DAD would only hold it back for a second).
                extra = {"flags": IFA_F_NODAD} if family == socket.AF_INET6 else {}
                ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen, family=family,
                         **extra)
            ipr.link("set", index=index, state="up")
        except NetlinkError as exc:
            raise LinkError(f"configuring {name}: {exc.args[-1] if exc.args else exc}") from None


def routes_for(prefixes: list[str], address: str | None) -> list[str]:
    """The routes a node needs: each allowed prefix not already covered by the TUN's own subnet. A default
    route (0.0.0.0/0) is never put in the main table, where it would capture the tunnel's own packets: LAN
    traffic reaches such a peer through the exit policy instead (quicether/net/lan.py)."""
    own = ipaddress.ip_interface(address).network if address else None
    needed = []
    for text in prefixes:
        net = ipaddress.ip_network(text, strict=False)
        if net.prefixlen == 0:
            continue
        if own is not None and net.version == own.version and net.subnet_of(own):  # type: ignore[arg-type]
            continue
        needed.append(str(net))
    return needed


def add_routes(name: str, prefixes: list[str]) -> None:
    with IPRoute() as ipr:
        index = link_index(ipr, name)
        for prefix in prefixes:
            net = ipaddress.ip_network(prefix)
            family = socket.AF_INET if net.version == 4 else socket.AF_INET6
            try:
                ipr.route("replace", dst=str(net), oif=index, family=family)
            except NetlinkError as exc:
                raise LinkError(f"route {prefix} dev {name}: {exc.args[-1] if exc.args else exc}") from None


def remove_routes(name: str, prefixes: list[str]) -> None:
    """Removes our routes; ones already gone (device removed) are fine."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return
        for prefix in prefixes:
            net = ipaddress.ip_network(prefix)
            family = socket.AF_INET if net.version == 4 else socket.AF_INET6
            with contextlib.suppress(NetlinkError):
                ipr.route("del", dst=str(net), oif=found[0], family=family)


def local_addresses(exclude: set[str]) -> list[tuple[str, str]]:
    """(device, IPv4 address) of every interface but loopback and `exclude`: where the listening socket
    (bound to 0.0.0.0) can be reached, for this node's discovery record."""
    found = []
    with IPRoute() as ipr:
        names = {int(link["index"]): str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()}
        for addr in ipr.get_addr(family=socket.AF_INET):
            device = names.get(int(addr["index"]), "")
            ip = ipaddress.ip_address(str(addr.get_attr("IFA_ADDRESS")))
            if device and device not in exclude and not ip.is_loopback:
                found.append((device, str(ip)))
    return found
