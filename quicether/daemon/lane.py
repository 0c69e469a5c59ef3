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
conntrack lookups, and no NAT state is involved. Not applied yet: [[acl]] rules (TPROXY'd connections go to
the router's input, past the forward chain the ACLs live in), so a config with ACLs keeps the lane off and
says so. Everything here is removed on stop and, for a crashed run's leftovers, before start.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import subprocess

import nftables

from quicether import _core
from quicether.config import Config, PeerConfig

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


def cleanup(wan_devices: list[str]) -> None:
    """Removes the lane's nft table, rule, routes and the MPTCP endpoints on `wan_devices`, if present."""
    _nft(f"add table ip {NFT_TABLE}; delete table ip {NFT_TABLE}")
    for _ in range(16):  # one rule per run; more only if something added it twice
        if f"{LANE_TABLE}:" not in _ip("rule", "show"):
            break
        _ip("rule", "del", "pref", str(LANE_TABLE), check=False)
    _ip("route", "flush", "table", str(LANE_TABLE), check=False)
    for line in _ip("mptcp", "endpoint", "show", check=False).splitlines():
        words = line.split()
        if "dev" in words and words[words.index("dev") + 1] in wan_devices and "id" in words:
            _ip("mptcp", "endpoint", "delete", "id", words[words.index("id") + 1], check=False)


def _wan_address(device: str) -> str | None:
    for line in _ip("-4", "-o", "addr", "show", "dev", device, check=False).splitlines():
        words = line.split()
        if "inet" in words:
            return words[words.index("inet") + 1].split("/")[0]
    return None


def _v4_prefixes(prefixes: list[str]) -> list[str]:
    return [str(n) for p in prefixes if (n := ipaddress.ip_network(p, strict=False)).version == 4]


class Lane:
    def __init__(self, node: _core.Node, config: Config) -> None:
        self.node = node
        self.config = config
        self.wan_devices = [w.device for w in config.wans]
        self.started = False

    async def start(self) -> None:
        await asyncio.to_thread(cleanup, self.wan_devices)
        peers, port = lane_peers(self.config), lane_port(self.config)
        if not peers or port is None:
            return
        if self.config.acls:
            log.warning("tcp_lane is on for %s, but [[acl]] rules do not apply to the lane yet: the lane stays"
                        " off and TCP goes through the QUIC bond", ", ".join(p.name for p in peers))
            return
        self.started = True
        await asyncio.to_thread(self._start_system, peers, port)
        log.info("tcp lane: listening on port %d for %s", port, ", ".join(p.name for p in peers))

    def _start_system(self, peers: list[PeerConfig], port: int) -> None:
        host = self.config.listen.rpartition(":")[0] or "0.0.0.0"
        _ip("mptcp", "limits", "set", "subflows", str(MAX_SUBFLOWS), "add_addr_accepted", str(MAX_SUBFLOWS))
        self.node.start_lane_gateway(f"{host}:{port}", MAX_CONNECTIONS)
        dialing = [p for p in peers if p.endpoint]
        if not dialing:
            return
        for device in self.wan_devices:
            address = _wan_address(device)
            if address is not None:
                _ip("mptcp", "endpoint", "add", address, "dev", device, "subflow")
        not_lan = ", ".join(f'"{d}"' for d in [self.config.tun, *self.wan_devices])
        rules = [f"add table ip {NFT_TABLE}",
                 f"add chain ip {NFT_TABLE} prerouting {{ type filter hook prerouting priority mangle; }}"]
        for i, peer in enumerate(dialing):
            prefixes = _v4_prefixes(peer.allowed_ips)
            if not prefixes or peer.endpoint is None:
                continue
            endpoint_host, _, endpoint_port = peer.endpoint.rpartition(":")
            listen = SITE_PORT_BASE + i
            self.node.start_lane_site(peer.key, f"0.0.0.0:{listen}",
                                      f"{endpoint_host.strip('[]')}:{int(endpoint_port) + 1}", MAX_CONNECTIONS)
            rules.append(f"add rule ip {NFT_TABLE} prerouting iifname != {{ {not_lan} }} meta l4proto tcp"
                         f" ip daddr {{ {', '.join(prefixes)} }} tproxy to :{listen}"
                         f" meta mark set {LANE_MARK} accept")
        _nft("; ".join(rules))
        _ip("rule", "add", "fwmark", str(LANE_MARK), "lookup", str(LANE_TABLE), "pref", str(LANE_TABLE))
        _ip("route", "replace", "local", "0.0.0.0/0", "dev", "lo", "table", str(LANE_TABLE))

    async def stop(self) -> None:
        self.node.stop_lanes()
        await asyncio.to_thread(cleanup, self.wan_devices)
