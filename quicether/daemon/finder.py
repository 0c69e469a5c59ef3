"""Finding members through the mainline DHT ([discovery] in the config; the core's `Discovery` does the
DHT, the signatures and the sealing). This node publishes a record of where it can be reached (its
addresses with the listening port, and the public addresses its peers see it at; apart, its LAN port's
addresses, where a member on this router's own LAN reaches it), again when that changes and every few
minutes; it looks up every member it knows of (`Mesh.known`: admitted, or told by
a peer) once, and again while it has no direct path to it, and hands what it finds to the core to dial. A
member told by a peer is reached through a relay before its record is found (`PeerTable.reach_member`). A
member that is also a [[peer]] is dialed as the config says, not from its record.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from quicether import _core
from quicether.config import Config
from quicether.daemon.mesh import Mesh
from quicether.daemon.peers import PeerTable
from quicether.daemon.portmap import record_endpoints
from quicether.identity import Identity, encode_node_id, short_id
from quicether.net import links

log = logging.getLogger("quicether")
# How often the loop looks at what is due; a record change is published within this.
TICK_S = 2.0
REPUBLISH_S = 600.0
PUBLISH_RETRY_S = 10.0
RECORD_LIFETIME_S = 3600
LOOKUP_TIMEOUT_S = 8.0
PARALLEL_LOOKUPS = 6
# Pause before looking up a member again: after a miss it doubles up to the maximum.
RETRY_S, RETRY_MAX_S = 2.0, 60.0
# A member found and dialed is looked up again after this if still not connected.
REDIAL_LOOKUP_S = 30.0
T = TypeVar("T")


async def in_own_thread(work: Callable[[], T], orphaned: Callable[[T], object]) -> T:
    """`work()` in a daemon thread of its own. The DHT node's start resolves the public bootstrap names
    and waits on them: with no DNS (an offline box, a container) for minutes. In `asyncio.to_thread`'s pool
    a stop would wait for it (`asyncio.run` joins the pool at exit: systemd killed the daemon after its stop
    timeout); here a cancelled caller returns at once and what `work` makes after all goes to `orphaned`
    (closed, in that thread), so a restart of the node in the same process leaks no DHT node."""
    done: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        if not done.set_running_or_notify_cancel():
            return
        try:
            done.set_result(work())
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting caller
            done.set_exception(exc)

    threading.Thread(target=run, name="qe-dht-start", daemon=True).start()
    try:
        return await asyncio.wrap_future(done)
    except asyncio.CancelledError:
        done.add_done_callback(lambda f: None if f.cancelled() or f.exception() else orphaned(f.result()))
        raise


@dataclass
class _Search:
    due: float = 0.0
    pause: float = RETRY_S


class Finder:
    def __init__(self, config: Config, identity: Identity, node: _core.Node, mesh: Mesh, peers: PeerTable,
                 not_wans: frozenset[str]) -> None:
        self.config = config
        self.identity = identity
        self.node = node
        self.mesh = mesh
        self.peers = peers
        self.not_wans = not_wans
        self.dht: _core.Discovery | None = None
        self.published: list[dict[str, str]] | None = None
        self.published_lan: list[str] = []
        self.published_at = 0.0
        self.publish_failed: str | None = None
        self.searches: dict[bytes, _Search] = {}
        self.addresses: set[str] = set()  # this node's own addresses when its DHT node was started
        self.serve_on: list[str] = []  # the addresses it serves the DHT on (server mode)
        self.published_relays: list[bytes] = []

    async def start(self) -> None:
        net, disc = self.config.network, self.config.discovery
        assert net is not None
        local = await asyncio.to_thread(self._local_addresses)
        # A server answers on each of its addresses from that address (a multi-homed gateway: see
        # core/io/src/discovery.rs); [] (no address yet): one node on all of them.
        serve_on = self._served(local)
        self.dht = await in_own_thread(
            lambda: _core.Discovery(disc.port, disc.bootstrap, disc.server, self.identity.seed, net.network_key,
                                    serve_on=serve_on),
            lambda late: late.close())
        self.addresses = {ip for _device, ip in self._outside(local)}
        self.serve_on = serve_on
        log.info("discovery: DHT node on %s (%s)%s", self.dht.local_addr(),
                 "private bootstrap " + ", ".join(disc.bootstrap) if disc.bootstrap is not None else "public DHT",
                 "; serving the DHT on " + ", ".join(self.dht.serving()) if disc.server else "")

    def status(self) -> dict[str, Any]:
        """The DHT node's counters (records published, lookups, and the records refused: bad_signature,
        replay, expired, non_member, malformed), what we published (endpoints, LAN addresses, relays) and
        when (Unix s), the last failure, and where we serve the DHT ("ip:port"; [] when we do not)."""
        published_at = time.time() - (time.monotonic() - self.published_at) if self.published else None
        return {"counters": dict(self.dht.counters()) if self.dht else {},
                "published": [e["addr"] for e in self.published or []], "published_lan": self.published_lan,
                "published_relays": [self._label(r) for r in self.published_relays],
                "serving": self.dht.serving() if self.dht else [],
                "published_at": published_at,
                "publish_failed": self.publish_failed}

    def stop(self) -> None:
        if self.dht is not None:
            self.dht.close()
            self.dht = None

    def lost(self, key: bytes) -> None:
        """A member's last path closed: look it up again now (it may have moved)."""
        if key in self.searches:
            self.searches[key] = _Search()

    def _local_addresses(self) -> list[tuple[str, str]]:
        """(device, address) of this node's own interfaces but the TUN: read once per tick, for every use."""
        return links.local_addresses({self.config.tun})

    def _outside(self, local: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The addresses a WAN may reach (not on the LAN port or the tunnel): the endpoints, and what a move is."""
        return [(device, ip) for device, ip in local if device not in self.not_wans]

    def _served(self, local: list[tuple[str, str]]) -> list[str]:
        """The addresses a DHT server answers on: all of this node's but the tunnel's (the LAN port's too,
        for members on its LAN), one DHT node each."""
        return sorted({ip for _device, ip in local}) if self.config.discovery.server else []

    async def _restart_if_moved(self, local: list[tuple[str, str]]) -> None:
        """A new address of our own (a new ISP address): the DHT node starts again from it. Its write
        tokens were given to the old address, so every put from the new one would fail until they aged out.
        A server also when an address it serves on came or went."""
        addresses = {ip for _device, ip in self._outside(local)}
        if (addresses == self.addresses and self._served(local) == self.serve_on) or self.dht is None:
            return
        log.info("discovery: this node's addresses changed (%s): restarting its DHT node",
                 ", ".join(sorted(addresses)) or "none")
        old, fixed_port = self.dht, self.config.discovery.port != 0
        if fixed_port:
            old.close()  # the new node needs its port
        try:
            await self.start()  # with any port, the new node first: if it cannot start, the old one works on
        except (OSError, ValueError) as exc:
            # Said once; tried again at the next change.
            self.addresses, self.serve_on = addresses, self._served(local)
            self.dht = None if fixed_port else old
            log.error("discovery: cannot restart the DHT node: %s%s", exc,
                      " (discovery stopped until the daemon restarts)" if fixed_port else "")
            return
        if not fixed_port:
            old.close()
        self.published = None  # publish from the new node at once

    def _endpoints(self, local: list[tuple[str, str]]) -> list[dict[str, str]]:
        port = int(self.node.local_addr().rpartition(":")[2])
        # A port mapping on the home router first: the endpoint a peer behind any NAT reaches us at.
        found = record_endpoints(self.node)
        found += [{"wan": device[:32], "kind": "public", "addr": f"{ip}:{port}"}
                  for device, ip in self._outside(local)]
        for peer in self.node.peers():
            for path in peer["paths"]:
                public = path.get("public")
                if public and not any(e["addr"] == public for e in found):
                    found.append({"wan": str(path["local_wan"])[:32], "kind": "reflexive", "addr": str(public)})
        rank = {"mapped": 0, "public": 1, "reflexive": 2}
        # At most the record's 12 (core/proto/src/record.rs MAX_ENDPOINTS), best kinds first.
        return sorted(found, key=lambda e: (rank[e["kind"]], e["wan"], e["addr"]))[:12]

    def _lan_addresses(self, local: list[tuple[str, str]]) -> list[str]:
        """ip:port of this router's LAN port (kept out of the endpoints: no WAN reaches it), for members on
        that LAN; at most the record's 8."""
        lan = self.config.lan
        if lan is None:
            return []
        port = int(self.node.local_addr().rpartition(":")[2])
        return sorted(f"{ip}:{port}" for device, ip in local if device == lan.device)[:8]

    async def _publish(self, now: float, local: list[tuple[str, str]]) -> None:
        assert self.dht is not None
        endpoints = await asyncio.to_thread(self._endpoints, local)
        lan = self._lan_addresses(local)
        # The relays that offered to relay for us and that we have a path to: a member that cannot reach
        # us directly reaches us through one of them.
        relays = self.node.record_relays()
        if (endpoints == self.published and lan == self.published_lan and relays == self.published_relays
                and now - self.published_at < REPUBLISH_S):
            return
        record: dict[str, Any] = {"expires_at": int(time.time()) + RECORD_LIFETIME_S, "endpoints": endpoints,
                                  "lan": lan, "relays": relays}
        try:
            await asyncio.to_thread(self.dht.publish, record)
        except (OSError, ValueError) as exc:
            if str(exc) != self.publish_failed:  # said once per cause, not every tick
                log.warning("discovery: publishing our record failed: %s", exc)
                self.publish_failed = str(exc)
            # Try again soon: a put right after our address changed can fail on its own (the DHT nodes'
            # write tokens are bound to the address that asked for them), and the next one asks afresh.
            self.published_at = now - REPUBLISH_S + PUBLISH_RETRY_S
            return
        self.publish_failed = None
        self.published, self.published_lan, self.published_relays, self.published_at = endpoints, lan, relays, now
        log.info("discovery: published our record (%s%s%s)",
                 ", ".join(e["addr"] for e in endpoints) or "no address",
                 f"; on the LAN {', '.join(lan)}" if lan else "",
                 f"; through relays {', '.join(self._label(r) for r in relays)}" if relays else "")

    async def _search(self, key: bytes, now: float) -> None:
        assert self.dht is not None
        search = self.searches.setdefault(key, _Search())
        if now < search.due:
            return
        member = self.mesh.known.get(key)
        if member is None:
            return
        found = await asyncio.to_thread(self.dht.lookup, key, LOOKUP_TIMEOUT_S)
        if found is None:
            search.due, search.pause = now + search.pause, min(search.pause * 2, RETRY_MAX_S)
            return
        endpoints = [str(e["addr"]) for e in found["endpoints"]] + [str(a) for a in found["lan"]]
        search.due, search.pause = now + REDIAL_LOOKUP_S, RETRY_S
        self.mesh.record_seen[key] = time.time()
        if not endpoints:
            return
        relays: list[bytes] = [bytes(r) for r in found["relays"]]
        log.info("discovery: found member %s (%s) at %s%s", member.name, short_id(encode_node_id(key)),
                 ", ".join(endpoints), f" and through {', '.join(map(self._label, relays))}" if relays else "")
        self.mesh.remember(key, endpoints)
        await self.peers.dial_member(key, member, endpoints, self.mesh.modes(), "dht")
        self.node.set_named_relays(key, relays)
        self._reach_relays(relays)

    def _label(self, key: bytes) -> str:
        member = self.mesh.known.get(key)
        return f"{member.name} ({short_id(encode_node_id(key))})" if member else short_id(encode_node_id(key))

    def _reach_relays(self, relays: list[bytes]) -> None:
        """The relays a member's record names that we have no path to, and know as members: looked up
        now (not at their next turn), so that once we reach one, the core dials the member through it."""
        connected = {p["key"] for p in self.node.peers() if p["connected"]}
        for relay in relays:
            if relay in self.mesh.known and relay not in connected and relay != self.identity.public_key:
                search = self.searches.setdefault(relay, _Search())
                search.due, search.pause = 0.0, RETRY_S

    async def run(self) -> None:
        while self.dht is not None:
            now = time.monotonic()
            try:
                local = await asyncio.to_thread(self._local_addresses)
                await self._restart_if_moved(local)
                await self._publish(now, local)
                direct = {p["key"] for p in self.node.peers()
                          if any(path["kind"] != "relayed" for path in p["paths"])}
                configured = set(self.peers.peers)
                # Members with no direct path (a relayed one moves to a direct one with the endpoints of
                # the record), and each member once: a member reached first through a relay or a punch
                # gets endpoints to dial should those paths go.
                wanted = [k for k in self.mesh.known
                          if k not in configured and (k not in direct or k not in self.searches)]
                # Several at once (a lookup takes seconds), fewer than the core's limit of lookups in flight.
                for i in range(0, len(wanted), PARALLEL_LOOKUPS):
                    now = time.monotonic()
                    await asyncio.gather(*(self._search(k, now) for k in wanted[i:i + PARALLEL_LOOKUPS]))
            except OSError as exc:  # too many lookups in flight, a socket error: try again next tick
                log.warning("discovery: %s", exc)
            await asyncio.sleep(TICK_S)
