"""The daemon in the foreground: starts the core node, configures the TUN device and routes, serves the
local API, logs events, and on SIGTERM/SIGINT undoes all of it (TUN, routes, API socket).

Start-up order is chosen so a failure at any step leaves nothing behind: each step registers its undo
before the next one runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from typing import Any

from quicether import _core
from quicether.config import Config, ConfigError, load
from quicether.daemon.api import ApiServer
from quicether.daemon.eventlog import EventLog
from quicether.daemon.router import Router
from quicether.daemon.wans import WanManager
from quicether.identity import Identity, encode_node_id, short_id
from quicether.net import links

log = logging.getLogger("quicether")
# Time between answering a reload request and stopping the services for it.
RELOAD_DELAY_S = 0.3


class Daemon:
    def __init__(self, config: Config, identity: Identity, events: EventLog | None = None) -> None:
        self.config = config
        self.identity = identity
        self.events = events
        self.reload_with: Config | None = None  # set by a reload request: run again with this config
        self.node: _core.Node | None = None
        self.routes: list[str] = []
        self.router: Router | None = None
        self._names = {p.key: p.name for p in config.peers}
        self._stop = asyncio.Event()

    def _peer_label(self, key: bytes | None) -> str:
        if key is None:
            return "a peer without a node key"
        name = self._names.get(key)
        node_id = short_id(encode_node_id(key))
        return f"peer {name} ({node_id})" if name else f"unknown node {encode_node_id(key)}"

    def _on_events(self, read_fd: int) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(read_fd, 4096)
        if self.node is None:
            return
        for event in self.node.events():
            who = self._peer_label(event["key"])
            kind = event["kind"]
            if kind == "peer_connected":
                log.info("%s connected", who)
            elif kind == "path_up":
                log.info("%s: path on WAN %s up (remote %s)", who, event["wan"], event["detail"])
            elif kind == "path_down":
                log.warning("%s: path on WAN %s down: %s", who, event["wan"], event["detail"])
            elif kind == "peer_disconnected":
                log.warning("%s disconnected: %s", who, event["detail"])
            elif kind == "handshake_refused":
                log.warning("refused handshake from %s: %s", who, event["detail"])
            elif kind == "dial_failed":
                log.warning("cannot reach %s from WAN %s: %s", who, event["wan"], event["detail"])

    def status(self) -> dict[str, Any]:
        node = self.node
        peers = []
        if node is not None:
            for stats in node.peers():
                key = stats.pop("key")
                total = sum(p["tx_bytes"] for p in stats["paths"]) or 1
                for path in stats["paths"]:
                    path["share"] = path["tx_bytes"] / total
                peers.append({"name": self._names.get(key, ""), "node_id": encode_node_id(key), **stats})
        return {
            "node": {
                "node_id": self.identity.node_id,
                "listen": node.local_addr() if node else self.config.listen,
                "tun": self.config.tun,
                "mtu": node.inner_mtu() if node else None,
                "address": self.config.address,
                "no_route_drops": node.no_route_drops() if node else 0,
            },
            "peers": peers,
            "router": self.router.status() if self.router else None,
            "time": time.time(),
        }

    def request_stop(self) -> None:
        self._stop.set()

    def recent_events(self) -> dict[str, Any]:
        return {"events": self.events.recent() if self.events else []}

    def request_reload(self) -> dict[str, Any]:
        """Re-reads the config file; if it is valid, the services restart with it once this answer is sent."""
        try:
            new = load(self.config.path)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        self.reload_with = new
        log.info("reloading with %s", new.path)
        # Let the API answer reach the caller (the web UI) before the services go down.
        asyncio.get_running_loop().call_later(RELOAD_DELAY_S, self._stop.set)
        return {"reloading": True}

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        api = ApiServer(self.config.api_socket, {"status": self.status, "events": self.recent_events,
                                                 "reload": self.request_reload})
        async with contextlib.AsyncExitStack() as undo:
            undo.callback(os.close, read_fd)
            undo.callback(os.close, write_fd)
            peers = [(p.key, p.endpoint, p.allowed_ips, p.mode, p.realtime_mode,
                      [(c.protocol, c.port, c.dscp, c.mode) for c in p.classes]) for p in self.config.peers]
            # With WANs configured, paths are dialed from each WAN as it comes up; without, from the listen socket.
            self.node = _core.Node(self.config.listen, self.config.tun, self.config.path_mtu, self.identity.seed,
                                   peers, write_fd, [] if self.config.wans or self.config.detect_wans else None,
                                   self.config.congestion)
            undo.callback(self._close_node)
            loop.add_reader(read_fd, self._on_events, read_fd)
            undo.callback(loop.remove_reader, read_fd)
            # pyroute2's synchronous API runs its own event loop: call it from a worker thread.
            await asyncio.to_thread(links.configure_tun, self.config.tun, self.node.inner_mtu(), self.config.address)
            self.routes = links.routes_for([ip for p in self.config.peers for ip in p.allowed_ips],
                                           self.config.address)
            undo.push_async_callback(asyncio.to_thread, links.remove_routes, self.config.tun, self.routes)
            await asyncio.to_thread(links.add_routes, self.config.tun, self.routes)
            self.router = Router(self.config, self.node)
            await self.router.start(undo)
            if self.config.wans or self.config.detect_wans:
                lan = {self.config.lan.device} if self.config.lan else set()
                wans = WanManager(self.node, self.config.wans, detect=self.config.detect_wans,
                                  not_wans=frozenset({self.config.tun, *lan}), on_change=self.router.wans_changed)
                undo.push_async_callback(wans.stop)
                await wans.start()
            await api.start()
            undo.push_async_callback(api.stop)
            log.info("node %s listening on %s, %s mtu %d, %d peer(s)", self.identity.node_id,
                     self.node.local_addr(), self.config.tun, self.node.inner_mtu(), len(self.config.peers))
            await self._stop.wait()
            log.info("reloading" if self.reload_with else "stopping")

    def _close_node(self) -> None:
        if self.node is not None:
            self.node.close()
            self.node = None
