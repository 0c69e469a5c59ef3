"""The daemon in the foreground: starts the core node, configures the TUN device, adds the peers (and
their routes), starts the router and the WANs, serves the local API, logs events, and on SIGTERM/SIGINT
undoes all of it (TUN, routes, rules, firewall, child processes, API socket). A reload applies the new
config as a diff (quicether/daemon/reload.py): only what changed is redone.

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
from collections.abc import Coroutine
from typing import Any

from quicether import _core, capabilities, config_edit, joining, setup_code
from quicether.atomic import write_private
from quicether.config import Config, ConfigError, load, parse, relays
from quicether.daemon import events as core_events
from quicether.daemon import names, reload
from quicether.daemon.api import MAX_CONFIG_BYTES, ApiServer, Refused
from quicether.daemon.eventlog import EventLog
from quicether.daemon.finder import Finder
from quicether.daemon.lan_finder import LanFinder
from quicether.daemon.lane import Lane
from quicether.daemon.mesh import Mesh
from quicether.daemon.names import MemberNames
from quicether.daemon.peers import PeerTable
from quicether.daemon.portmap import LISTEN_SOURCE, PortMaps
from quicether.daemon.router import Router
from quicether.daemon.wans import WanManager
from quicether.identity import Identity, encode_node_id, short_id
from quicether.invite import InviteError
from quicether.joining import Admissions
from quicether.metrics import system_health
from quicether.net import lan as lan_net
from quicether.net import links

log = logging.getLogger("quicether")
# Core events that change whether a peer is reachable (the router's exit follows them).
PEER_STATE_EVENTS = (core_events.PeerConnected, core_events.PeerDisconnected, core_events.PathUp, core_events.PathDown)
# Events after which the members' names in DNS may differ.
MEMBER_EVENTS = (core_events.MemberAdmitted, core_events.MemberLearned, core_events.RevocationLearned,
                 core_events.MembershipRenewed)
# Time between answering a reload request and stopping the services for it.
RELOAD_DELAY_S = 0.3


class Daemon:
    def __init__(self, config: Config, identity: Identity, events: EventLog | None = None) -> None:
        self.config = config
        self.identity = identity
        self.events = events
        self.reload_with: Config | None = None  # set by a reload that needs a restart: run again with this
        self.failed: str | None = None          # set when the node cannot go on (the TUN failed): exit non-zero
        self.node: _core.Node | None = None
        self.peers: PeerTable | None = None
        self.router: Router | None = None
        self.wans: WanManager | None = None
        self.lane: Lane | None = None
        self.portmaps: PortMaps | None = None
        self.mesh: Mesh | None = None
        self.finder: Finder | None = None
        self.admissions: Admissions | None = None
        self.lan_finder: LanFinder | None = None
        self.member_names: MemberNames | None = None
        self.api: ApiServer | None = None
        self._names = {p.key: p.name for p in config.peers}
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._ui_restart: asyncio.Task[None] | None = None
        self._ui_restart_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, work: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
        """Runs `work` from an event callback, keeping it referenced and its failure logged."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and (exc := t.exception()) is not None:
                log.error("%s failed: %s", what, exc)

        task.add_done_callback(done)
        return task

    def _peer_name(self, key: bytes) -> str | None:
        known = self.mesh.known.get(key) if self.mesh else None
        return self._names.get(key) or (self.peers.name(key) if self.peers else None) or (known.name if known else None)

    def _peer_label(self, key: bytes | None) -> str:
        if key is None:
            return "a peer without a node key"
        name = self._peer_name(key)
        node_id = short_id(encode_node_id(key))
        return f"peer {name} ({node_id})" if name else f"unknown node {encode_node_id(key)}"

    def _on_events(self, read_fd: int) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(read_fd, 4096)
        if self.node is None:
            return
        for raw in self.node.events():
            self._on_event(core_events.parse(raw), str(raw.get("kind", "")))

    def _on_event(self, event: core_events.CoreEvent, kind: str) -> None:
        who = self._peer_label(event.key)
        mark = {"event": kind}
        if self.router is not None and isinstance(event, PEER_STATE_EVENTS):
            self.router.peer_changed(event.key)
        match event:
            case core_events.PeerConnected():
                log.info("%s connected", who, extra=mark)
            case core_events.PathUp(wan=wan, path_kind=path_kind, remote=remote, reason=reason):
                if self.lane is not None:
                    self.lane.path_changed(event.key, event.local_wan, up=True)
                log.info("%s: %s path on WAN %s up (%s, remote %s)", who, path_kind, wan, reason, remote, extra=mark)
                # A relayed path's remote is made up (the relay's virtual socket): nothing to dial after a restart.
                if (self.mesh is not None and event.key is not None and remote and reason == "connected"
                        and path_kind != "relayed"):
                    self.mesh.reached(event.key, remote)
            case core_events.PathDown(wan=wan, path_kind=path_kind, reason=reason, detail=detail):
                if self.lane is not None:
                    self.lane.path_changed(event.key, event.local_wan, up=False)
                log.warning("%s: %s path on WAN %s down (%s): %s", who, path_kind, wan, reason, detail, extra=mark)
            case core_events.PeerDisconnected(key=key, detail=detail):
                log.warning("%s disconnected: %s", who, detail, extra=mark)
                if self.finder is not None and key is not None:
                    self.finder.lost(key)
            case core_events.HandshakeRefused(detail=detail):
                log.warning("refused handshake from %s: %s", who, detail, extra=mark)
            case core_events.PortMappingChanged(wan=wan, detail=detail):
                log.info("WAN %s: %s", wan, detail, extra=mark)
            case core_events.DialFailed(wan=wan, detail=detail):
                log.warning("cannot reach %s from WAN %s: %s", who, wan, detail, extra=mark)
            case core_events.TunFailed(detail=detail):
                # Nothing leaves the node any more: exit non-zero so systemd restarts the daemon.
                self.failed = f"the TUN device {self.config.tun} failed: {detail}"
                log.error("%s; stopping", self.failed, extra=mark)
                self._stop.set()
            case core_events.MemberAdmitted(key=key, certificate=certificate) if key is not None and self.mesh:
                member = self.mesh.admitted(key, certificate, mark)
                if member is not None and self.peers is not None:
                    self._spawn(self.peers.admitted(key, member), f"routing member {member.name}")
            case core_events.MemberLearned(key=key, certificate=certificate) if key is not None and self.mesh:
                self.mesh.learned(key, certificate, mark)
                member = self.mesh.known.get(key)
                if member is not None and self.peers is not None and key in self.peers.candidates:
                    # A LAN candidate proved itself (its handshake showed this certificate): route it.
                    self._spawn(self.peers.dial_member(key, member, self.peers.candidates[key], self.mesh.modes(),
                                                       "lan"), f"routing member {member.name}")
                elif member is not None and self.peers is not None and all(p.key != key for p in self.config.peers):
                    # Reached through a relay and punched towards at once; the DHT adds its endpoints later. Not
                    # a [[peer]]: news can come before the start has added those to the peer table.
                    self._spawn(self.peers.reach_member(key, member, self.mesh.modes()),
                                f"reaching member {member.name}")
            case core_events.MembershipRenewed(certificate=certificate) if self.mesh:
                renewed = self.mesh.renewed(certificate, mark)
                if renewed is not None:
                    self.config = renewed
                    if self.admissions is not None:
                        self.admissions.config = renewed
            case core_events.RevocationLearned(key=key, revocation=revocation) if key is not None and self.mesh:
                self.mesh.revocation_learned(key, revocation, mark)
            case core_events.PeerRemoved(key=key) if key is not None and self.peers and key in self.peers.members:
                # The core cut off a member (set_network or recheck_members, which log why): its routes go.
                log.debug("core peer table: member %s removed", who)
                self._spawn(self.peers.gone(key), f"removing the routes of {who}")
            case core_events.PeerAdded() | core_events.PeerRemoved():
                log.debug("core peer table: %s %s", kind, who)
            case core_events.JoinRequested(key=key, detail=name, request_id=request_id, node=node,
                                           lan_prefixes=lan_prefixes) if key is not None:
                if self.admissions is not None:
                    self.admissions.requested(request_id, key, node, name, lan_prefixes)
            case core_events.LaneNews(detail=detail):
                log.warning("%s", detail, extra=mark)
            case core_events.LaneFellBack(key=key, detail=detail) if key is not None:
                if self.lane is not None:
                    self.lane.fell_back(key, who, detail)
            case core_events.UnknownEvent(kind=unknown, detail=detail):
                log.info("core event %s for %s: %s", unknown, who, detail)
        if isinstance(event, MEMBER_EVENTS):
            self._names_changed()

    def _names_changed(self) -> None:
        if self.member_names is not None and self.mesh is not None:
            self.member_names.update(self.mesh.names())

    async def status(self) -> dict[str, Any]:
        # `ss` lists the lane's subflow sockets: run off the event loop (many connections make it slow).
        lane_subflows = await self.lane.subflows() if self.lane else {}
        node = self.node
        offloads, unsplittable = node.tun_offloads() if node else (None, 0)
        peers = []
        connected: set[bytes] = set()
        if node is not None:
            for stats in node.peers():
                key = stats.pop("key")
                if stats["connected"]:
                    connected.add(key)
                total = sum(p["tx_bytes"] for p in stats["paths"]) or 1
                for path in stats["paths"]:
                    path["share"] = path["tx_bytes"] / total
                    if isinstance(path.get("via"), bytes):  # the relay's key: shown by name or node id
                        path["via"] = self._names.get(path["via"]) or encode_node_id(path["via"])
                member = self.peers.members.get(key) if self.peers else None
                peers.append({"name": self._peer_name(key) or "", "node_id": encode_node_id(key),
                              "found": self.peers.found.get(key, "config") if self.peers else "config",
                              "member": None if member is None else {
                                  "ipv4": member.ipv4, "ipv6": member.ipv6, "groups": member.groups,
                                  "lan_prefixes": member.lan_prefixes, "exit": member.exit,
                                  "not_after": member.not_after},
                              **stats})
        return {
            "node": {
                "node_id": self.identity.node_id,
                "listen": node.local_addr() if node else self.config.listen,
                "tun": self.config.tun,
                "mtu": node.inner_mtu() if node else None,
                # TUN offloads in use ("tso+uso+csum", "none" where the kernel lacks them), and packets read
                # whose offload header could not be split (dropped).
                "tun_offloads": offloads,
                "tun_unsplittable": unsplittable,
                # UDP system calls of the QUIC sockets and the datagrams they moved (GSO/GRO batching).
                "udp_batching": dict(zip(("send_calls", "sent_datagrams", "recv_calls", "received_datagrams"),
                                         node.udp_batching(), strict=True)) if node else {},
                "address": self.config.address,
                "no_route_drops": node.no_route_drops() if node else 0,
                # Every handshake refused by key pinning (their log lines are rate-limited; this is not).
                "refused_handshakes": node.refused_handshakes() if node else 0,
                # Per WAN: the NAT it is behind, as the addresses the peers see it at tell.
                "nat": node.nat_types() if node else {},
                # Per WAN: its port mapping on the home router (PCP, NAT-PMP or UPnP) and when it expires, or why none.
                "port_mapping": self.portmaps.status() if node and self.portmaps else {},
                # Hole punching: attempts, successes, requests forwarded for others, messages refused.
                "punch": node.punch_stats() if node else {},
                # Relaying for other members (forwarded, drops by cause) and through relays (sent, received).
                "relay": node.relay_stats() if node else {},
                # The TCP lane: connections, bytes each way, refusals, cap hits, per end ({} if off).
                "lane": node.lane_stats() if node else {},
                # The AEAD this node prefers (a peer without AES instructions gets ChaCha20) and why.
                "cipher": dict(zip(("preferred", "why"), _core.cipher(), strict=True)),
                # The threads carrying packets (node.io_threads, else the default) and why that many.
                "io_threads": dict(zip(("count", "why"), node.io_threads(), strict=True)) if node else {},
                # Per WAN at the site end: the lane's open subflows and their bytes (how MPTCP spreads it).
                "lane_subflows": lane_subflows,
                # Lane peers whose TCP goes through the QUIC bond (their lane fell back: MPTCP stripped on the
                # way): name → unix time the lane is tried again.
                "lane_bypassed": self.lane.bypassed() if self.lane else {},
                # API connections answered "busy" (its limit of connections at once was reached).
                "api_refused_busy": self.api.refused_busy if self.api else 0,
                # API connections closed before their request came: MAX_WAITING newer ones were waiting.
                "api_evicted_waiting": self.api.evicted_waiting if self.api else 0,
                # What the daemon may still do as root (quicether/capabilities.py), or "all" if not reduced.
                "capabilities": capabilities.effective_names(),
                # Under a flood of handshakes: answered with a Retry (address validation), dropped.
                "handshakes_retried": node.handshake_load()[0] if node else 0,
                "handshakes_dropped": node.handshake_load()[1] if node else 0,
                "network": self.mesh.status(connected) if self.mesh else None,
                # mDNS announcements seen: resolved, foreign_network, malformed, full (None: not running).
                "lan_discovery": self.lan_finder.counters() if self.lan_finder else None,
                # The DHT node: its counters (refused records too) and our last published record.
                "dht": self.finder.status() if self.finder else None,
            },
            "peers": peers,
            "router": self.router.status() if self.router else None,
            # CPU per core, memory, temperature, uptime, and this daemon's RSS and open fds.
            "health": system_health(),
            "time": time.time(),
        }

    def request_stop(self) -> None:
        self._stop.set()

    def recent_events(self) -> dict[str, Any]:
        return {"events": self.events.recent() if self.events else []}

    async def request_reload(self) -> dict[str, Any]:
        """Re-reads the config file and applies what changed; a file that does not parse changes nothing
        (ValueError: the API answers with the field at fault)."""
        try:
            new = load(self.config.path)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        async with self._reload_lock:
            changes = reload.diff(self.config, new)
            if changes.restart:
                log.info("reloading %s: %s changed, restarting the node", new.path, ", ".join(changes.restart))
                self.reload_with = new
                # Let the API answer reach the caller (the web UI) before the services go down.
                asyncio.get_running_loop().call_later(RELOAD_DELAY_S, self._stop.set)
                return {"reloading": True, "restart": changes.restart}
            try:
                await self._apply(new, changes)
            except Exception as exc:  # noqa: BLE001 - any failure half way: start over from the file
                # Half applied is no state to stay in (a later reload would diff against a config that
                # never ran): the services restart with the new file, as a fresh start would build them.
                log.error("reload of %s failed half way (%s): restarting the node with it", new.path, exc)
                self.reload_with = new
                asyncio.get_running_loop().call_later(RELOAD_DELAY_S, self._stop.set)
                return {"reloading": True, "restart": [f"a failed reload ({exc})"]}
            log.info("reloaded %s: %s", new.path, "; ".join(changes.changes) or "nothing changed",
                     extra={"event": "reloaded"})
            if changes.webui:
                # After this answer has reached the web UI that asked (it may be the one that restarts).
                if self._ui_restart_timer is not None:
                    self._ui_restart_timer.cancel()
                self._ui_restart_timer = asyncio.get_running_loop().call_later(RELOAD_DELAY_S, self._restart_ui)
            return {"reloading": False, "changes": changes.changes}

    def config_text(self) -> dict[str, Any]:
        """The config file as it is (the web UI reads it through the API: the file is root's, 0600)."""
        try:
            text = self.config.path.read_text()
        except FileNotFoundError:
            text = ""
        return {"text": text, "path": str(self.config.path)}

    async def apply_config(self, request: dict[str, Any]) -> dict[str, Any]:
        """Replaces the config file with the request's "text" and applies it as a reload does; a text that
        does not parse is refused (ValueError naming the field) and changes nothing."""
        text = request.get("text")
        if not isinstance(text, str):
            raise ValueError('apply_config needs the new config as "text"')
        if len(text.encode()) > MAX_CONFIG_BYTES:
            raise ValueError(f"the config is larger than {MAX_CONFIG_BYTES} bytes")
        try:
            new = parse(text, self.config.path)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        if new.state_dir != self.config.state_dir:
            # The caller is the unprivileged web UI: a state dir it chose would hand it root's key, API
            # socket and pid files. Only root, editing the file itself, moves it.
            raise ValueError(f"{self.config.path}: node.state_dir: cannot be changed through the web UI")
        try:
            await asyncio.to_thread(write_private, self.config.path, text)
        except OSError as exc:
            # Disk full, a read-only file system: write_private left the old file whole, and the running
            # config is the old one, so nothing changed; say so rather than a traceback and "failed".
            message = (f"cannot save {self.config.path}: {exc.strerror or exc}; the previous config is kept"
                       " and still applies")
            log.error("%s", message)
            raise Refused(message, saved=False) from None
        log.info("%s replaced through the API", self.config.path)
        return await self.request_reload()

    def invites_changed(self) -> dict[str, Any]:
        """`quicether invite` made an invite: the core accepts its key from now on."""
        if self.admissions is None:
            raise ValueError("the node is not running")
        return {"invites": self.admissions.refresh()}

    def revocations_changed(self) -> dict[str, Any]:
        """`quicether network revoke` signed a revocation into the ledger: if it is this node's network, the
        member is cut off here and every member is told now ("network": the network whose ledger was read,
        None if this node is not the admin of its network; "new": how many revocations were new)."""
        if self.admissions is None or self.mesh is None:
            raise ValueError("the node is not running")
        net = self.admissions.network()
        fresh = self._ledger_revocations()
        return {"network": net.name if net else None, "new": fresh, "revoked": len(self.mesh.ledger_revocations)}

    def _ledger_revocations(self) -> int:
        """Reads the ledger's revocations again and enforces the new ones; returns how many were new."""
        assert self.admissions is not None and self.mesh is not None
        fresh = self.mesh.ledger_revoked(self.admissions.revocations())
        if fresh:
            self._names_changed()
        return fresh

    def _admin_tick(self) -> None:
        """Every recheck on an admin node: renewals due, and revocations written while no daemon heard of
        them (the CLI tells the daemon at once; this catches a request that did not reach it)."""
        if self.admissions is not None:
            self.admissions.renew()
            self._ledger_revocations()

    async def join_network(self, request: dict[str, Any]) -> dict[str, Any]:
        """The web UI's wizard joins a network with an invite code ("code", optional "name"): this node asks
        the admin for its certificate (the UI cannot: the node key is root's), routing the LAN prefixes
        "lan" (the wizard's LAN; default: the config's). The config is not changed: the answer carries what
        the wizard writes (ValueError: why the join failed, in words)."""
        code, name, lan = request.get("code"), request.get("name") or "", request.get("lan")
        if not isinstance(code, str) or not isinstance(name, str):
            raise ValueError('join_network needs the invite as "code" (and optionally "name")')
        if lan is not None and not (isinstance(lan, list) and all(isinstance(p, str) for p in lan)):
            raise ValueError('join_network: "lan" is a list of prefixes')
        doc = await asyncio.to_thread(config_edit.load_document, self.config.path)
        try:
            joined = await asyncio.to_thread(joining.join, code, self.identity, doc, name, None, lan)
        except InviteError as exc:
            raise ValueError(str(exc)) from None
        return {"joined": joining.as_dict(joined)}

    def setup_done(self) -> dict[str, Any]:
        """The web UI set the admin password: the setup code's copies (root's: the EFI partition's file, the
        console banner) are deleted, if the password record is really there."""
        return {"removed": setup_code.remove_copies_if_set_up(self.config.state_dir)}

    async def _cancel_ui_restart(self) -> None:
        if self._ui_restart_timer is not None:
            self._ui_restart_timer.cancel()
        if self._ui_restart is not None:
            self._ui_restart.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ui_restart

    def _restart_ui(self) -> None:
        self._ui_restart_timer = None
        if self.router is not None and not self._stop.is_set():
            if self._ui_restart is not None:
                self._ui_restart.cancel()  # a newer reload's restart supersedes it
            self._ui_restart = asyncio.get_running_loop().create_task(self.router.restart_ui())
            self._ui_restart.add_done_callback(_log_failure)

    async def _apply(self, new: Config, changes: reload.ConfigDiff) -> None:
        assert self.peers is not None and self.router is not None
        self._names.update({p.key: p.name for p in new.peers})
        # Removed first: an allowed IP may move from a removed peer to a changed or added one.
        for peer in changes.peers_removed:
            await self.peers.remove(peer)
        for peer in changes.peers_changed:
            await self.peers.update(peer)
        for peer in changes.peers_added:
            await self.peers.add(peer)
        if self.wans is not None and (changes.wans or changes.lan_address):
            lan = {new.lan.device} if new.lan else set()
            await self.wans.update(new.wans, new.detect_wans, frozenset({new.tun, *lan}))
            # The firewall's outside set is the WAN manager's, also where no port came or went.
            self.router.outside = self.wans.devices()
        await self.router.update(new, changes)
        if self.member_names is not None:
            # DNS turned on or off on the LAN: dnsmasq's names file follows at once.
            self.member_names.set_lan_dns(new.lan is not None and new.lan.dns)
            self._names_changed()
        if self.admissions is not None:
            self.admissions.config = new
            self.admissions.refresh()
        if self.mesh is not None:
            ledger = self.admissions.revocations() if self.admissions is not None else []
            if changes.network:
                if self.node is not None and new.network is not None:
                    self.node.set_relay(relays(new), new.network.relay_rate_mbit)
                self.mesh.ledger_revocations = ledger
                self.mesh.apply(new)
                self._names_changed()
            elif self.mesh.ledger_revoked(ledger):
                self._names_changed()
        self.config = new
        self._names = {p.key: p.name for p in new.peers}

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        api = self.api = ApiServer(self.config.api_socket, {"status": self.status, "events": self.recent_events,
                                                 "reload": self.request_reload, "config": self.config_text,
                                                 "apply_config": self.apply_config, "setup_done": self.setup_done,
                                                 "invites": self.invites_changed, "join_network": self.join_network,
                                                 "revocations": self.revocations_changed})
        async with contextlib.AsyncExitStack() as undo:
            undo.callback(os.close, read_fd)
            undo.callback(os.close, write_fd)
            # Peers are added below, one by one, as a reload or the mesh adds them later.
            # With WANs configured, paths are dialed from each WAN as it comes up; without, from the listen socket.
            network = self.config.network
            if network is not None and network.node_key != self.identity.public_key:
                raise ConfigError(f"{self.config.path}: network.certificate: issued to node"
                                  f" {encode_node_id(network.node_key)}, not to this node ({self.identity.node_id})")
            self.node = _core.Node(self.config.listen, self.config.tun, self.config.path_mtu, self.identity.seed,
                                   [], write_fd, [] if self.config.wans or self.config.detect_wans else None,
                                   self.config.congestion, network.certificate if network else None,
                                   self.config.io_threads)
            undo.callback(self._close_node)
            self.portmaps = PortMaps(self.node, self.config.nat.port_mapping)
            loop.add_reader(read_fd, self._on_events, read_fd)
            undo.callback(loop.remove_reader, read_fd)
            # pyroute2's synchronous API runs its own event loop: call it from a worker thread.
            overlay = [a for a in (self.config.address, network.ipv6 if network else "") if a]
            await asyncio.to_thread(links.configure_tun, self.config.tun, self.node.inner_mtu(), overlay)
            self.peers = PeerTable(self.node, self.config.tun, self.config.address)
            undo.push_async_callback(self.peers.stop)
            # The network first: a path to a configured peer that comes up before it would not exchange news.
            # On the network's admin node, the ledger's revocations hold from the start too.
            self.admissions = Admissions(self.node, self.config)
            self.admissions.check()
            self.mesh = Mesh(self.node, self.peers, self.config, self._peer_label)
            self.mesh.ledger_revocations = self.admissions.revocations()
            self.mesh.apply(self.config)
            self.node.set_relay(relays(self.config), network.relay_rate_mbit if network else 0.0)
            for peer in self.config.peers:
                await self.peers.add(peer)
            self.admissions.refresh()
            await self.mesh.redial_cached()
            if self.config.network is not None:
                # On the node (/etc/hosts), and for the LAN through dnsmasq on a router serving DNS.
                lan_dns = self.config.lan is not None and self.config.lan.dns
                self.member_names = await asyncio.to_thread(MemberNames, self.config.state_dir, lan_dns)
                undo.callback(self.member_names.remove)
                self._names_changed()
            else:  # what a crashed run of this node in a network left in /etc/hosts
                await asyncio.to_thread(names.forget, self.config.state_dir)
            recheck = loop.create_task(self.mesh.recheck(self._admin_tick))
            undo.callback(recheck.cancel)
            if self.config.network is not None and self.config.discovery.dht:
                undo.callback(self._spawn(self._discover(), "discovery").cancel)
            if self.config.network is not None and self.config.discovery.lan:
                undo.callback(self._spawn(self._discover_lan(), "LAN discovery").cancel)
            undo.callback(lambda: [t.cancel() for t in self._tasks])
            # Before the WANs: it hears of every path that comes up over them.
            self.lane = Lane(self.node, self.config)
            self.router = Router(self.config, self.node)
            undo.push_async_callback(self.router.stop)
            undo.push_async_callback(self._cancel_ui_restart)
            self.router.on_firewall = self.lane.set_policy
            await self.router.start()
            if self.config.wans or self.config.detect_wans:
                lan = {self.config.lan.device} if self.config.lan else set()
                self.wans = WanManager(self.node, self.config.wans, detect=self.config.detect_wans,
                                       not_wans=frozenset({self.config.tun, *lan}), on_change=self.router.wans_changed,
                                       portmaps=self.portmaps)
                undo.push_async_callback(self.wans.stop)
                await self.wans.start()
            else:
                # The listen socket dials: its mapping is asked of the gateway of the default route.
                lan = {self.config.lan.device} if self.config.lan else set()
                routes = await asyncio.to_thread(lan_net.default_routes, {self.config.tun, *lan})
                self.portmaps.wan_up(LISTEN_SOURCE, next((gw for _dev, gw in routes if gw), None))
            # After the WANs: the lane's MPTCP endpoints are their addresses.
            undo.push_async_callback(self.lane.stop)
            await self.lane.start(self.wans)
            await api.start()
            undo.push_async_callback(api.stop)
            log.info("node %s listening on %s, %s mtu %d, %d peer(s)", self.identity.node_id,
                     self.node.local_addr(), self.config.tun, self.node.inner_mtu(), len(self.config.peers))
            preferred, why = _core.cipher()
            (log.warning if "expected" in why else log.info)("cipher: %s preferred (%s)", preferred, why)
            offloads = self.node.tun_offloads()[0]
            if offloads == "none":
                log.warning("%s: no TUN offloads (kernel without them, or QUICETHER_TUN_OFFLOADS=0): one packet "
                            "per read and write", self.config.tun)
            else:
                log.info("%s: TUN offloads %s", self.config.tun, offloads)
            await self._stop.wait()
            log.info("restarting" if self.reload_with else "stopping")

    async def _discover(self) -> None:
        """Publishes our record and looks members up in the DHT; without it, members still dial us. A task
        of its own: the DHT node's start waits on its bootstrap nodes (names to resolve, with no internet
        yet at boot), and nothing else of the node waits for it."""
        assert self.node is not None and self.mesh is not None and self.peers is not None
        lan = {self.config.lan.device} if self.config.lan else set()
        finder = Finder(self.config, self.identity, self.node, self.mesh, self.peers,
                        frozenset({self.config.tun, *lan}))
        try:
            await finder.start()
        except (OSError, ValueError) as exc:
            log.error("discovery: cannot start the DHT node: %s (members are found only when they dial us)", exc)
            return
        self.finder = finder
        try:
            await finder.run()
        finally:
            self.finder = None
            finder.stop()

    async def _discover_lan(self) -> None:
        """Announces this member on the LAN and dials the members announced there (mDNS)."""
        assert self.node is not None and self.mesh is not None and self.peers is not None
        lan = LanFinder(self.config, self.node, self.mesh, self.peers, frozenset({self.config.tun}))
        self.lan_finder = lan
        try:
            await lan.run()
        finally:
            self.lan_finder = None
            lan.stop()

    def _close_node(self) -> None:
        if self.node is not None:
            self.node.close()
            self.node = None


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("restarting the web UI failed: %s", exc)
