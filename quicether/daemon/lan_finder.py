"""Finding members on the same LAN through mDNS ([discovery] lan, on by default with [network]): the core's
`LanDiscovery` announces this node (its key and its network's LAN tag, its addresses and QUIC port) and
lists the announcements of others. Works without the internet: no DHT, no gateway.

An announcement is not trusted (anyone on the LAN can announce any key). A member whose certificate we
know is dialed like one found in the DHT. An unknown key is dialed as a member-only candidate: the core
completes the handshake only if the node shows a valid certificate of our network (and does not pin the
key, so its own handshakes to us need that certificate too); no route is made for it until its certificate
arrives on the path (member news) and says its addresses.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from quicether import _core
from quicether.config import Config
from quicether.daemon.mesh import Mesh
from quicether.daemon.peers import PeerTable
from quicether.identity import encode_node_id, short_id
from quicether.net import links

log = logging.getLogger("quicether")
TICK_S = 2.0
# A candidate dialed and still not connected is dialed again (new addresses) after this.
REDIAL_S = 30.0
# Candidates dialed at once (each is a peer slot until it proves itself or is dropped).
MAX_CANDIDATES = 32


class LanFinder:
    def __init__(self, config: Config, node: _core.Node, mesh: Mesh, peers: PeerTable,
                 not_wans: frozenset[str]) -> None:
        self.config = config
        self.node = node
        self.mesh = mesh
        self.peers = peers
        self.not_wans = not_wans
        self.lan: _core.LanDiscovery | None = None
        self.announced: list[str] = []
        self.dialed: dict[bytes, float] = {}

    def _start(self, addresses: list[str]) -> None:
        net = self.config.network
        assert net is not None
        self.stop()
        port = int(self.node.local_addr().rpartition(":")[2])
        self.lan = _core.LanDiscovery(net.network_key, self.node.public_key(), port, addresses)
        self.announced = addresses
        log.info("LAN discovery: announcing this member on %s", ", ".join(addresses))

    def stop(self) -> None:
        if self.lan is not None:
            self.lan.close()
            self.lan = None

    async def _announce(self) -> None:
        """(Re)starts the announcement when this node's addresses change."""
        addresses = sorted(ip for _device, ip in await asyncio.to_thread(links.local_addresses, set(self.not_wans)))
        if addresses == self.announced and self.lan is not None:
            return
        if not addresses:
            self.stop()
            self.announced = []
            return
        try:
            await asyncio.to_thread(self._start, addresses)
        except (OSError, ValueError) as exc:
            log.warning("LAN discovery: cannot announce on %s: %s", ", ".join(addresses), exc)
            self.announced = addresses  # said once; tried again when the addresses change

    async def _dial(self, found: dict[str, Any], connected: set[bytes], now: float) -> None:
        key = bytes(found["node_key"])
        addrs = [str(a) for a in found["addrs"]]
        if key in connected or key in self.peers.peers or key in self.mesh.revoked or not addrs:
            return
        if now - self.dialed.get(key, -REDIAL_S) < REDIAL_S:
            return
        member = self.mesh.known.get(key)
        if member is None and len(self.peers.candidates) >= MAX_CANDIDATES:
            return
        self.dialed[key] = now
        try:
            if member is not None:
                await self.peers.dial_member(key, member, addrs, self.mesh.modes(), "lan")
                log.info("LAN discovery: found member %s (%s) at %s", member.name, short_id(encode_node_id(key)),
                         ", ".join(addrs))
            else:
                self.peers.dial_candidate(key, addrs, self.mesh.modes())
                log.info("LAN discovery: dialing %s at %s (admitted only with a certificate of our network)",
                         short_id(encode_node_id(key)), ", ".join(addrs))
        except ValueError as exc:  # an address the core refuses
            log.info("LAN discovery: %s not dialed: %s", short_id(encode_node_id(key)), exc)

    def counters(self) -> dict[str, int]:
        return dict(self.lan.counters()) if self.lan is not None else {}

    async def run(self) -> None:
        while True:
            await self._announce()
            if self.lan is not None:
                now = time.monotonic()
                connected = {p["key"] for p in self.node.peers() if p["connected"]}
                announced = self.lan.members()
                for found in announced:
                    await self._dial(found, connected, now)
                # A candidate no longer announced (so no longer redialed) that did not connect stops taking
                # a peer slot.
                for key in list(self.peers.candidates):
                    stale = now - self.dialed.get(key, now) > 2 * REDIAL_S and key not in connected
                    if stale or key in self.mesh.revoked:
                        self.peers.drop_candidate(key)
                        self.dialed.pop(key, None)
            await asyncio.sleep(TICK_S)
