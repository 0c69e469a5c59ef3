"""The daemon's side of the peer table: which peers the core has, and the routes into the TUN device for
their allowed IPs. Peers are added, changed and removed while the node runs (a reload, or a member of our
network admitted by its certificate); the routes follow the union of every peer's allowed IPs, so removing
a peer drops exactly the routes no other peer still needs, and nothing else changes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from quicether import _core
from quicether.config import PeerConfig
from quicether.net import links

# A traffic class as the core takes it: protocol, port, dscp, mode.
ClassArg = tuple[int | None, int | None, int | None, str]


def _core_args(peer: PeerConfig) -> tuple[bytes, list[str], list[str], str, str, list[ClassArg]]:
    endpoints = list(peer.endpoints)
    classes = [(c.protocol, c.port, c.dscp, c.mode) for c in peer.classes]
    return peer.key, endpoints, peer.allowed_ips, peer.mode, peer.realtime_mode, classes


@dataclass(frozen=True)
class Member:
    """A peer the core admitted by its membership certificate (no [[peer]] entry), as the certificate says."""

    name: str
    ipv4: str
    ipv6: str
    groups: list[str] = field(default_factory=list)
    lan_prefixes: list[str] = field(default_factory=list)
    exit: bool = False
    not_after: int = 0

    @property
    def peer_allowed_ips(self) -> list[str]:
        """What the core lets in from it as a peer we dial: its overlay IPv4 and IPv6, and its LAN prefixes."""
        return [f"{self.ipv4}/32", f"{self.ipv6}/128", *self.lan_prefixes]

    @property
    def allowed_ips(self) -> list[str]:
        # Routed here: its IPv4 and LAN prefixes. Its ULA needs no route of its own: the TUN carries this
        # node's, with the network's /48 (the core lets the member's in by its allowed IPs).
        return [f"{self.ipv4}/32", *self.lan_prefixes]


class PeerTable:
    def __init__(self, node: _core.Node, tun: str, address: str | None) -> None:
        self.node = node
        self.tun = tun
        self.address = address
        self.peers: dict[bytes, PeerConfig] = {}
        self.members: dict[bytes, Member] = {}
        # How each member came to be a peer: "certificate" (it dialed us), "dht", "cache" or "lan" (we dialed it
        # there), "news" (a member told us of it: reached through a relay or a punch, its record not yet found).
        self.found: dict[bytes, str] = {}
        # Keys announced on the LAN whose certificate we do not know yet: dialed member-only, not routed.
        self.candidates: dict[bytes, list[str]] = {}
        self.routes: set[str] = set()

    def name(self, key: bytes) -> str | None:
        peer = self.peers.get(key)
        member = self.members.get(key)
        return peer.name if peer else member.name if member else None

    async def admitted(self, key: bytes, member: Member) -> None:
        """The core added `key` as a member: route its LAN prefixes (its overlay addresses are on the TUN's)."""
        self.members[key] = member
        self.found.setdefault(key, "certificate")
        await self._sync_routes()

    async def dial_member(self, key: bytes, member: Member, endpoints: list[str], modes: tuple[str, str],
                          found: str) -> None:
        """Dials member `key` at `endpoints` (`found` in the DHT or the peer cache); a [[peer]] of the config
        is left as it is."""
        if key in self.peers:
            return  # a [[peer]] is dialed as configured
        if (key not in self.candidates and self.found.get(key) != "news"
                and any(p["key"] == key and p["connected"] for p in self.node.peers())):
            return  # a member that dialed us meanwhile needs no dial (a LAN candidate needs its routes)
        allowed = member.peer_allowed_ips
        try:
            # Member-only: the handshake must show its (valid, unrevoked) certificate; its key is not pinned.
            self.node.add_peer(key, endpoints, allowed, modes[0], modes[1], [], member_only=True)
        except ValueError:  # the core admitted it meanwhile (it dialed us), or a LAN candidate proved itself
            self.node.update_peer(key, endpoints, allowed, modes[0], modes[1], [])
        self.candidates.pop(key, None)
        self.members[key] = member
        self.found[key] = found
        await self._sync_routes()

    async def reach_member(self, key: bytes, member: Member, modes: tuple[str, str]) -> None:
        """A member we were told of (member news) and have no peer for: added at once, with no endpoint and
        routed, so the core reaches it through a relay and punches towards it, seconds before its DHT record
        would be found. The record's endpoints come later (`dial_member`); `found` is "news" until then."""
        if key in self.peers or key in self.members or key in self.candidates:
            return
        allowed = member.peer_allowed_ips
        try:
            self.node.add_peer(key, [], allowed, modes[0], modes[1], [], member_only=True)
        except ValueError:
            return  # it dialed us meanwhile: the core admitted it (`admitted` routes it)
        self.members[key] = member
        self.found[key] = "news"
        await self._sync_routes()

    def dial_candidate(self, key: bytes, endpoints: list[str], modes: tuple[str, str]) -> None:
        """Dials a key announced on the LAN, member-only and with no route, until its certificate comes."""
        if key in self.candidates:
            self.node.update_peer(key, endpoints, [], modes[0], modes[1], [])
        else:
            self.node.add_peer(key, endpoints, [], modes[0], modes[1], [], member_only=True)
        self.candidates[key] = endpoints
        self.found[key] = "lan"

    def drop_candidate(self, key: bytes) -> None:
        """A LAN candidate that never proved itself (or stopped announcing): no longer dialed."""
        if self.candidates.pop(key, None) is not None and key not in self.members:
            self.node.remove_peer(key)
            self.found.pop(key, None)

    async def gone(self, key: bytes) -> None:
        """The core removed peer `key` by itself (a member revoked or expired): its routes go."""
        self.found.pop(key, None)
        if self.members.pop(key, None) is not None:
            await self._sync_routes()

    async def add(self, peer: PeerConfig) -> None:
        self.node.add_peer(*_core_args(peer))
        self.peers[peer.key] = peer
        await self._sync_routes()

    async def update(self, peer: PeerConfig) -> None:
        """New settings for a known peer: its paths stay up (the core changes modes and routes in place)."""
        self.node.update_peer(*_core_args(peer))
        self.peers[peer.key] = peer
        await self._sync_routes()

    async def remove(self, peer: PeerConfig) -> None:
        self.node.remove_peer(peer.key)
        self.peers.pop(peer.key, None)
        await self._sync_routes()

    async def _sync_routes(self) -> None:
        allowed = [ip for p in self.peers.values() for ip in p.allowed_ips]
        allowed += [ip for m in self.members.values() for ip in m.allowed_ips]
        wanted = set(links.routes_for(allowed, self.address))
        gone, new = sorted(self.routes - wanted), sorted(wanted - self.routes)
        if gone:
            await asyncio.to_thread(links.remove_routes, self.tun, gone)
            self.routes -= set(gone)
        if new:
            await asyncio.to_thread(links.add_routes, self.tun, new)
            self.routes |= set(new)

    async def stop(self) -> None:
        """Removes this table's routes (the TUN device goes with the node)."""
        await asyncio.to_thread(links.remove_routes, self.tun, sorted(self.routes))
        self.routes.clear()
