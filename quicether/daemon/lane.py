"""The TCP lane's system side (issue 16; the data path is core/io/src/lane.rs). With `tcp_lane = "auto"` on a
[[peer]]:

- this node accepts lane connections from its peers on its QUIC port + 1 (MPTCP + TLS with the pinned node
  keys), opened in the firewall like the QUIC port;
- if the peer has an endpoint (this node dials it: a site router), the LAN's TCP to the peer's IPv4
  allowed_ips is TPROXY'd (nft table `ip quicether_lane`, fwmark LANE_MARK, routing table LANE_TABLE
  with a local default route) to a transparent listener in the core, which carries each connection over
  its own MPTCP connection to the peer's lane port; one MPTCP `subflow` endpoint per WAN address lets the
  kernel add a subflow over every WAN (each leaves by its WAN through the per-WAN source rules).

TPROXY rather than `redirect`: the listener sees the original destination as its local address without
conntrack lookups, and no NAT state is involved. The far end's [[acl]] rules hold for the lane as for the
bond: each lane connection names its LAN source and destination, and the far end's core judges them by the
rules its firewall applies to traffic from the tunnel (`set_policy`) before it connects anywhere, after
checking that the peer speaks for that source (its allowed_ips). A far end connects from the LAN host's own
address where the tunnel's packets would keep it (out of a port its firewall does not masquerade, such as its
LAN): the host there sees who connects, and its replies come back to the transparent socket by the same
fwmark and routing table. Everything here is removed on stop and,
for a crashed run's leftovers, before start; the kernel's MPTCP limits, raised for a subflow per WAN, are put
back then too.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import nftables

from quicether import _core
from quicether.config import Config, PeerConfig
from quicether.net import nft
from quicether.net import wan as wan_net

if TYPE_CHECKING:
    from quicether.daemon.wans import WanManager

log = logging.getLogger("quicether")

NFT_TABLE = "quicether_lane"
# Below the WANs' routing tables and rules (7100 + i, quicether/net/wan.py); the mark is the table number.
LANE_TABLE = 7090
LANE_MARK = LANE_TABLE
# The site end's transparent listeners: one port per lane peer, on every address (TPROXY needs no bind to
# the destination: IP_TRANSPARENT lets the listener take any).
SITE_PORT_BASE = 46100
MAX_CONNECTIONS = 1024
MAX_SUBFLOWS = 8  # the kernel's limit for `ip mptcp limits`
# After a lane connection to a peer fell back to plain TCP (MPTCP stripped on the way: one path, no
# failover), the peer's TCP goes through the QUIC bond this long; then the lane is tried again.
FALLBACK_HOLD_S = 600.0
# The lane's MPTCP endpoint for WAN table index i has id ENDPOINT_ID_BASE + i: cleanup finds its own by id.
ENDPOINT_ID_BASE = 100
_LANE_IDS = range(ENDPOINT_ID_BASE, ENDPOINT_ID_BASE + wan_net.MAX_WANS)
# In the state directory while the lane runs: the kernel's `ip mptcp limits` from before the lane raised them,
# put back on stop, or by the next start after a crash.
LIMITS_FILE = "lane-mptcp-limits"


def lane_peers(config: Config) -> list[PeerConfig]:
    return [p for p in config.peers if p.tcp_lane == "auto"]


def lane_port(config: Config) -> int | None:
    """The port this node's lane listens on (its QUIC port + 1), or None if no peer has the lane on."""
    return int(config.listen.rpartition(":")[2]) + 1 if lane_peers(config) else None


def _ip(*args: str, check: bool = True) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout if proc.returncode == 0 else ""


def _nft(text: str) -> None:
    rc, _out, error = nftables.Nftables().cmd(text)
    if rc != 0:
        raise RuntimeError(f"nftables: {error.strip()}")


def mptcp_limits() -> dict[str, int]:
    """The kernel's MPTCP limits (`ip mptcp limits show`: "add_addr_accepted 0 subflows 2")."""
    words = _ip("mptcp", "limits", "show").split()
    return {name: int(value) for name, value in zip(words[::2], words[1::2], strict=True)}


def _set_mptcp_limits(limits: dict[str, int]) -> None:
    _ip("mptcp", "limits", "set", *(word for name, value in sorted(limits.items()) for word in (name, str(value))))


def _raise_mptcp_limits(state_dir: Path) -> None:
    """Raises the limits for a subflow per WAN, first keeping the kernel's (a crashed run's file already
    holds them: the limits in force now are that run's)."""
    saved = state_dir / LIMITS_FILE
    if not saved.exists():
        saved.write_text(json.dumps(mptcp_limits()) + "\n")
    _set_mptcp_limits({"subflows": MAX_SUBFLOWS, "add_addr_accepted": MAX_SUBFLOWS})


def _restore_mptcp_limits(state_dir: Path) -> None:
    saved = state_dir / LIMITS_FILE
    try:
        limits = json.loads(saved.read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError) as exc:  # unreadable: the raised limits stay, which harms nothing
        log.warning("tcp lane: cannot read the MPTCP limits to restore from %s: %s", saved, exc)
    else:
        _set_mptcp_limits({str(k): int(v) for k, v in limits.items()})
    saved.unlink(missing_ok=True)


def cleanup(state_dir: Path) -> None:
    """Removes the lane's nft table, rule, routes and MPTCP endpoints, if present, and puts the kernel's
    MPTCP limits back."""
    _nft(f"add table ip {NFT_TABLE}; delete table ip {NFT_TABLE}")
    for _ in range(16):  # one rule per run; more only if something added it twice
        if f"{LANE_TABLE}:" not in _ip("rule", "show"):
            break
        _ip("rule", "del", "pref", str(LANE_TABLE), check=False)
    _ip("route", "flush", "table", str(LANE_TABLE), check=False)
    for endpoint_id in _lane_endpoint_ids():
        _ip("mptcp", "endpoint", "delete", "id", str(endpoint_id), check=False)
    _restore_mptcp_limits(state_dir)


def _endpoint_id(wan_index: int) -> int:
    return ENDPOINT_ID_BASE + wan_index


def _lane_endpoint_ids() -> list[int]:
    """The MPTCP endpoints present that are the lane's (by their id range)."""
    ids = []
    for line in _ip("mptcp", "endpoint", "show", check=False).splitlines():
        words = line.split()
        if "id" in words and (i := int(words[words.index("id") + 1])) in _LANE_IDS:
            ids.append(i)
    return ids


def tcp_sockets_to(ports: list[int]) -> list[tuple[str, dict[str, int]]]:
    """The established TCP sockets (MPTCP subflows are ones) to any of `ports`: each one's local address and
    its byte counters from `ss -Htin` (bytes_sent, bytes_acked, bytes_received)."""
    if not ports:
        return []
    match = " or ".join(f"dport = :{port}" for port in ports)
    proc = subprocess.run(["ss", "-Htin", "state", "established", f"( {match} )"], capture_output=True, text=True,
                          check=False)
    sockets: list[tuple[str, dict[str, int]]] = []
    for line in proc.stdout.splitlines():
        words = line.split()
        if not words:
            continue
        if not line[0].isspace() and len(words) >= 4:
            # "Recv-Q Send-Q local peer"; a socket bound to its device shows as "address%device:port".
            sockets.append((words[2].rpartition(":")[0].partition("%")[0].strip("[]"), {}))
        elif sockets:  # the socket's TCP info, on the line after it
            for word in words:
                name, _, value = word.partition(":")
                if name in ("bytes_sent", "bytes_acked", "bytes_received") and value.isdigit():
                    sockets[-1][1][name] = int(value)
    return sockets


def _v4_prefixes(prefixes: list[str]) -> list[str]:
    return [str(n) for p in prefixes if (n := ipaddress.ip_network(p, strict=False)).version == 4]


@dataclass(frozen=True)
class Endpoint:
    address: str
    device: str
    backup: bool


class Lane:
    """The lane's system side for one run of the daemon. Its subflow endpoints follow WAN health: a WAN is
    one while it is active (carrier, address) and the QUIC path over it to a lane peer is up; the moment
    its path goes down (the QUIC probes' verdict, well under 1 s) its endpoint is deleted, which makes the
    kernel close that WAN's subflows and send their data again on the others; when the path is back, the
    endpoint is added again and the kernel opens a subflow over it on every lane connection. When every
    path is down at once, the endpoints in place stay: there is no other WAN to move to."""

    def __init__(self, node: _core.Node, config: Config) -> None:
        self.node = node
        self.config = config
        self.wans: WanManager | None = None
        # The lane peers this node dials (its site end): those with an endpoint and IPv4 allowed_ips.
        self.dialing = [p for p in lane_peers(config) if p.endpoint and _v4_prefixes(p.allowed_ips)]
        self._dialing_keys = {p.key for p in self.dialing}
        self.started = False
        self._paths_up: set[tuple[bytes, str]] = set()  # (lane peer key, our WAN name) with a path up
        self._applied: dict[int, Endpoint] = {}  # endpoint id → what it was added as
        self._sync_lock = asyncio.Lock()
        self._listen_ports = [SITE_PORT_BASE + i for i in range(len(self.dialing))]
        self._from_lan = ""  # the nft match for the LAN's packets (set at start)
        # Peers whose lane fell back to plain TCP: key → (unix time the lane is tried again, its retry timer).
        self._bypassed: dict[bytes, tuple[float, asyncio.TimerHandle]] = {}

    async def start(self, wans: WanManager | None) -> None:
        self.wans = wans
        await asyncio.to_thread(cleanup, self.config.state_dir)
        peers, port = lane_peers(self.config), lane_port(self.config)
        if not peers or port is None:
            return
        self.started = True
        await asyncio.to_thread(self._start_system, peers, port)
        await self.sync()
        log.info("tcp lane: listening on port %d for %s", port, ", ".join(p.name for p in peers))

    def _start_system(self, peers: list[PeerConfig], port: int) -> None:
        host = self.config.listen.rpartition(":")[0] or "0.0.0.0"
        _raise_mptcp_limits(self.config.state_dir)
        self.node.start_lane_gateway(f"{host}:{port}", MAX_CONNECTIONS)
        # From the LAN port only (a router); else from anything but the tunnel and the configured WANs.
        not_lan = ", ".join(f'"{d}"' for d in [self.config.tun, *(w.device for w in self.config.wans)])
        self._from_lan = (f'iifname "{self.config.lan.device}"' if self.config.lan is not None
                          else f"iifname != {{ {not_lan} }}")
        for peer, listen in zip(self.dialing, self._listen_ports, strict=True):
            assert peer.endpoint is not None
            endpoint_host, _, endpoint_port = peer.endpoint.rpartition(":")
            self.node.start_lane_site(peer.key, f"0.0.0.0:{listen}",
                                      f"{endpoint_host.strip('[]')}:{int(endpoint_port) + 1}", MAX_CONNECTIONS)
        # Both ends: the packets of the lane's transparent sockets are this host's (routing table LANE_TABLE).
        # At the site, those of the LAN's connections the listeners took; at the far end, the replies to a
        # connection that comes from the LAN host's address (lane.rs `connect_out`).
        _nft("; ".join([f"add table ip {NFT_TABLE}",
                        f"add chain ip {NFT_TABLE} prerouting {{ type filter hook prerouting priority mangle; }}",
                        *self._tproxy_rules()]))
        _ip("rule", "add", "fwmark", str(LANE_MARK), "lookup", str(LANE_TABLE), "pref", str(LANE_TABLE))
        _ip("route", "replace", "local", "0.0.0.0/0", "dev", "lo", "table", str(LANE_TABLE))

    def set_policy(self, config: Config, fw: nft.Firewall) -> None:
        """What the far end judges and does with each lane connection, from the firewall just applied (at
        start, at each reload, when WAN ports come or go): its ACLs (resolved to prefixes), with
        `acl_default = "deny"` refusing what no rule allows to another site (a peer's allowed_ips or this
        node's LAN); and its ports, which decide where a connection keeps the LAN host's address."""
        sites = [p for peer in config.peers for p in peer.allowed_ips] + ([config.lan.subnet] if config.lan else [])
        rules = [(a.action == "allow", a.sources, a.destinations, a.protocol, a.port) for a in fw.acls]
        self.node.set_lane_policy(rules, fw.acl_default == "deny", sites, fw.tun, fw.lan if fw.router else None,
                                  fw.outside)

    def _tproxy_rules(self) -> list[str]:
        """The prerouting chain's rules, made anew: the LAN's TCP to each lane peer's allowed_ips goes to its
        transparent listener, except to a peer whose lane fell back (its TCP goes through the QUIC bond).
        First, the packets of connections the listeners already hold stay theirs (those of a peer just
        bypassed too): they would otherwise be routed on into the tunnel, where nobody knows them."""
        rules = [f"flush chain ip {NFT_TABLE} prerouting",
                 f"add rule ip {NFT_TABLE} prerouting meta l4proto tcp socket transparent 1 meta mark set {LANE_MARK}"
                 " accept"]
        for peer, listen in zip(self.dialing, self._listen_ports, strict=True):
            if peer.key not in self._bypassed:
                prefixes = ", ".join(_v4_prefixes(peer.allowed_ips))
                rules.append(f"add rule ip {NFT_TABLE} prerouting {self._from_lan} meta l4proto tcp"
                             f" ip daddr {{ {prefixes} }} tproxy to :{listen} meta mark set {LANE_MARK} accept")
        return rules

    def _rewrite_rules(self) -> None:
        if self.started:
            task = asyncio.get_running_loop().create_task(asyncio.to_thread(_nft, "; ".join(self._tproxy_rules())))
            task.add_done_callback(_log_failure)

    def fell_back(self, key: bytes, who: str, detail: str) -> None:
        """Lane connections to peer `key` keep falling back to plain TCP (the core still carries them):
        MPTCP is stripped on the way, so the lane would give one path and no failover. The peer's next TCP
        connections go through the QUIC bond for FALLBACK_HOLD_S, then the lane is tried again."""
        if not self.started or key not in self._dialing_keys or key in self._bypassed:
            return
        loop = asyncio.get_running_loop()
        self._bypassed[key] = (time.time() + FALLBACK_HOLD_S, loop.call_later(FALLBACK_HOLD_S, self._retry, key, who))
        log.warning("%s: %s: its TCP goes through the QUIC bond for %d minutes, then the tcp lane is tried again",
                    who, detail, FALLBACK_HOLD_S // 60, extra={"event": "lane_fallback"})
        self._rewrite_rules()

    def _retry(self, key: bytes, who: str) -> None:
        if self._bypassed.pop(key, None) is not None:
            log.info("%s: trying the tcp lane again (it fell back to plain TCP %d minutes ago)", who,
                     FALLBACK_HOLD_S // 60)
            self._rewrite_rules()

    def bypassed(self) -> dict[str, float]:
        """The lane peers whose TCP goes through the QUIC bond because their lane fell back to plain TCP:
        name → unix time the lane is tried again."""
        return {p.name: self._bypassed[p.key][0] for p in self.dialing if p.key in self._bypassed}

    def path_changed(self, key: bytes | None, local_wan: str | None, up: bool) -> None:
        """A QUIC path to a peer went up or down: the lane's subflow over that WAN follows at once (paths
        are followed from before the start, which only then applies them)."""
        if key is None or key not in self._dialing_keys or not local_wan:
            return
        if up:
            self._paths_up.add((key, local_wan))
        else:
            self._paths_up.discard((key, local_wan))
        if not self.started:
            return
        task = asyncio.get_running_loop().create_task(self.sync())
        task.add_done_callback(_log_failure)

    def _wanted(self) -> dict[int, Endpoint]:
        if self.wans is None or not self.dialing:
            return {}
        healthy = {wan for _key, wan in self._paths_up}
        wanted = {}
        for name, (address, index) in self.wans.active.items():
            applied = self.wans.applied.get(name)
            if applied is None:
                continue
            endpoint_id, endpoint = _endpoint_id(index), Endpoint(address, applied.device, applied.backup)
            # With no path up there is no better WAN to move the subflows to: removing every endpoint
            # would leave the lane's connections with no subflow at all, so those in place stay.
            if name in healthy or (not healthy and self._applied.get(endpoint_id) == endpoint):
                wanted[endpoint_id] = endpoint
        return wanted

    async def sync(self) -> None:
        """Makes the MPTCP endpoints what WAN health says (also after a WAN came, went or changed)."""
        if not self.started:
            return
        async with self._sync_lock:
            wanted = self._wanted()
            if wanted != self._applied:
                await asyncio.to_thread(self._apply, wanted)

    def _apply(self, wanted: dict[int, Endpoint]) -> None:
        for endpoint_id, endpoint in list(self._applied.items()):
            if wanted.get(endpoint_id) != endpoint:
                _ip("mptcp", "endpoint", "delete", "id", str(endpoint_id), check=False)
                del self._applied[endpoint_id]
                log.info("tcp lane: subflows over %s (%s) removed", endpoint.device, endpoint.address)
        for endpoint_id, endpoint in wanted.items():
            if endpoint_id in self._applied:
                continue
            _ip("mptcp", "endpoint", "add", endpoint.address, "dev", endpoint.device, "id", str(endpoint_id),
                "subflow", *(["backup"] if endpoint.backup else []))
            self._applied[endpoint_id] = endpoint
            log.info("tcp lane: subflows over %s (%s)%s", endpoint.device, endpoint.address,
                     " as backup" if endpoint.backup else "")

    async def subflows(self) -> dict[str, dict[str, int]]:
        """Per WAN, at the site end: the lane's open subflows over it and the bytes they carried so far
        (sent, received), as the kernel reports each subflow's TCP socket: how MPTCP spreads the lane over
        the WANs. Closed connections' bytes are in the core's counters (`lane_stats`), not here."""
        if not self.started or not self.dialing or self.wans is None:
            return {}
        by_address = {address: name for name, (address, _index) in self.wans.active.items()}
        ports = sorted({int(p.endpoint.rpartition(":")[2]) + 1 for p in self.dialing if p.endpoint})
        found: dict[str, dict[str, int]] = {}
        for local, counters in await asyncio.to_thread(tcp_sockets_to, ports):
            wan = by_address.get(local)
            if wan is None:
                continue
            entry = found.setdefault(wan, {"subflows": 0, "bytes_sent": 0, "bytes_received": 0})
            entry["subflows"] += 1
            entry["bytes_sent"] += counters.get("bytes_sent", 0)
            entry["bytes_received"] += counters.get("bytes_received", 0)
        return found

    async def stop(self) -> None:
        self.started = False
        for _until, timer in self._bypassed.values():
            timer.cancel()
        self._bypassed.clear()
        self.node.stop_lanes()
        async with self._sync_lock:
            await asyncio.to_thread(cleanup, self.config.state_dir)
            self._applied.clear()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("tcp lane: updating the MPTCP endpoints failed: %s", exc, exc_info=exc)
