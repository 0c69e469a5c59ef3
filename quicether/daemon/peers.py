"""The daemon's side of the peer table: which peers the core has, and the routes into the TUN device for
their allowed IPs. Peers are added, changed and removed while the node runs (a reload, later the mesh);
the routes follow the union of every peer's allowed IPs, so removing a peer drops exactly the routes no
other peer still needs, and nothing else changes.
"""

from __future__ import annotations

import asyncio

from quicether import _core
from quicether.config import PeerConfig
from quicether.net import links

# A traffic class as the core takes it: protocol, port, dscp, mode.
ClassArg = tuple[int | None, int | None, int | None, str]


def _core_args(peer: PeerConfig) -> tuple[bytes, list[str], list[str], str, str, list[ClassArg]]:
    endpoints = list(peer.endpoints)
    classes = [(c.protocol, c.port, c.dscp, c.mode) for c in peer.classes]
    return peer.key, endpoints, peer.allowed_ips, peer.mode, peer.realtime_mode, classes


class PeerTable:
    def __init__(self, node: _core.Node, tun: str, address: str | None) -> None:
        self.node = node
        self.tun = tun
        self.address = address
        self.peers: dict[bytes, PeerConfig] = {}
        self.routes: set[str] = set()

    def name(self, key: bytes) -> str | None:
        peer = self.peers.get(key)
        return peer.name if peer else None

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
        wanted = set(links.routes_for([ip for p in self.peers.values() for ip in p.allowed_ips], self.address))
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
