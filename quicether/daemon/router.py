"""The router around the tunnel: forwarding, the LAN address with DHCP/DNS, the exit policy that sends LAN
traffic into the bond (falling back to the raw WANs when the exit peer is down, unless the kill switch is
on), and the firewall, rebuilt whenever the set of WAN ports changes.

The router keeps what it added (forwarding, the LAN address, dnsmasq, the table, the web UI, the exit
rule) and `stop` removes exactly that, also after a failed start, so nothing is left behind. A reload
(`update`) redoes only the parts whose settings changed: the web UI that asked for it keeps running
unless its own address or port changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quicether import _core
from quicether.config import Config
from quicether.daemon import dnsmasq, lane, names
from quicether.daemon.reload import ConfigDiff
from quicether.daemon.webui_server import WebUiServer
from quicether.net import lan as lan_net
from quicether.net import nft

log = logging.getLogger("quicether")
# The exit follows the core's path and peer events for the exit peer at once; this slow re-check is only
# a safety net (an event queue overflowing under a flood of them).
EXIT_RECHECK_S = 5.0


def resolve_acls(config: Config) -> list[nft.Acl]:
    """Peer names, groups and "lan" in ACL rules become prefixes; a side that covers everything matches any."""
    by_name = {p.name: p.allowed_ips for p in config.peers}
    for peer in config.peers:
        for group in peer.groups:
            by_name.setdefault(f"group:{group}", []).extend(peer.allowed_ips)

    def prefixes(value: str) -> list[str] | None:
        """The IPv4 prefixes `value` stands for; [] for any address; None if it names nothing in IPv4."""
        if value == "lan":
            assert config.lan is not None  # checked when the config was parsed
            found = [config.lan.subnet]
        else:
            found = by_name.get(value, [value])
        nets = [ipaddress.ip_network(p, strict=False) for p in found]
        if any(n.prefixlen == 0 and n.version == 4 for n in nets):
            return []
        v4 = [str(n) for n in nets if n.version == 4]
        return v4 or None

    acls = []
    for rule in config.acls:
        sources, destinations = prefixes(rule.source), prefixes(rule.destination)
        if sources is None or destinations is None:
            # A peer or group with IPv6 addresses only: an empty list here would mean "any address".
            log.warning("ACL %s from %s to %s skipped: it names no IPv4 address", rule.action, rule.source,
                        rule.destination)
            continue
        acls.append(nft.Acl(rule.action, sources, destinations, rule.protocol, rule.port))
    return acls


class Router:
    """Owns what the router adds to the system; `stop` removes exactly that, also after a partial start."""

    def __init__(self, config: Config, node: _core.Node) -> None:
        self.config = config
        self.node = node
        self.outside = [w.device for w in config.wans]
        self.exit_active = False
        self._exit_task: asyncio.Task[None] | None = None
        self._exit_dirty = asyncio.Event()
        self._exit_key = self._find_exit_key(config)
        # Told of each firewall applied, with the config it was made from (the TCP lane judges by its ACLs).
        self.on_firewall: Callable[[Config, nft.Firewall], None] | None = None
        self._forwarding_before: str | None = None
        self._lan_address: tuple[str, str] | None = None   # (device, address) this daemon added
        self._dnsmasq: dnsmasq.Dnsmasq | None = None
        self._ui: WebUiServer | None = None
        self._firewall = False
        # One ruleset build and apply at a time (a reload and a WAN change): the last applied is the newest.
        self._firewall_lock = asyncio.Lock()
        # One change of the exit rule at a time (the watcher and a reload's stop/start of it).
        self._exit_lock = asyncio.Lock()

    @staticmethod
    def _find_exit_key(config: Config) -> bytes | None:
        return next((p.key for p in config.peers if config.lan and p.name == config.lan.exit_peer), None)

    def _outside_ports(self) -> list[str]:
        """Ports facing the internet: the WANs and the gateway's internet port."""
        internet = self.config.gateway.internet if self.config.gateway else None
        return self.outside + ([internet] if internet and internet not in self.outside else [])

    def _dht_port(self) -> list[tuple[str, int]]:
        """A node serving the DHT answers queries from the internet on its DHT port (a client's replies
        pass as established traffic)."""
        d = self.config.discovery
        return [("udp", d.port)] if self.config.network is not None and d.dht and d.server else []

    def _lane_port(self) -> list[tuple[str, int]]:
        """The TCP lane's port (QUIC port + 1), open from outside like the QUIC port when a peer uses it."""
        port = lane.lane_port(self.config)
        return [("tcp", port)] if port is not None else []

    def firewall(self) -> nft.Firewall:
        cfg = self.config
        internet = cfg.gateway.internet if cfg.gateway else None
        return nft.Firewall(
            quic_port=int(cfg.listen.rpartition(":")[2]), tun=cfg.tun, outside=self._outside_ports(),
            lan=cfg.lan.device if cfg.lan else None,
            # A node that serves a LAN is a router: default-deny on every other port from the start.
            router=cfg.lan is not None,
            webui_port=cfg.webui.port if cfg.lan and cfg.webui.enabled else None,
            dns_from_peers=bool(cfg.lan and cfg.lan.dns_from_peers),
            open_ports=[(o.protocol, o.port) for o in cfg.open_ports] + self._dht_port() + self._lane_port(),
            kill_switch=bool(cfg.lan and cfg.lan.kill_switch),
            direct=cfg.lan.direct if cfg.lan else [],
            internet=internet, forwards=cfg.gateway.forwards if cfg.gateway else [], acls=resolve_acls(cfg),
            acl_default=cfg.acl_default)

    async def start(self) -> None:
        cfg = self.config
        if cfg.lan is not None or cfg.role == "gateway":
            self._forwarding_before = await asyncio.to_thread(lan_net.write_sysctl, "net.ipv4.ip_forward", "1")
            # Loose reverse-path check on the tunnel: replies from the internet arrive there while the
            # main table would route their source out of a WAN.
            await asyncio.to_thread(lan_net.write_sysctl, f"net.ipv4.conf.{cfg.tun}.rp_filter", "2")
        await self._add_lan_address()
        await self._start_dnsmasq()
        await asyncio.to_thread(lan_net.remove_exit)
        # Firewall: replace any table a crashed run left, remove ours on the way out.
        self._firewall = True
        await self._apply_firewall()
        await self._start_ui()
        await self._start_exit()

    async def update(self, config: Config, changes: ConfigDiff) -> None:
        """Applies a reload's changes to the router parts (the node itself stays as it is). A changed web UI
        is left to `restart_ui`: the old one may be the very page waiting for this reload's answer."""
        if changes.dnsmasq:
            await self._stop_dnsmasq()
        if changes.exit:
            await self._stop_exit()
        if changes.lan_address:
            await self._remove_lan_address()
        self.config = config
        self._exit_key = self._find_exit_key(config)
        if changes.lan_address:
            await self._add_lan_address()
        if changes.dnsmasq:
            await self._start_dnsmasq()
        # Cheap and atomic, and peers' allowed_ips feed ACLs and the exit: always rebuilt.
        await self._apply_firewall()
        if changes.exit:
            await self._start_exit()

    async def _apply_firewall(self) -> None:
        async with self._firewall_lock:
            fw = self.firewall()
            await asyncio.to_thread(nft.apply, fw)
            if self.on_firewall is not None:
                self.on_firewall(self.config, fw)

    async def restart_ui(self) -> None:
        """The web UI again, with the current config's address and port (or none if it is disabled)."""
        await self._stop_ui()
        await self._start_ui()

    async def stop(self) -> None:
        await self._stop_exit()
        await self._stop_ui()
        if self._firewall:
            await asyncio.to_thread(nft.remove)
            self._firewall = False
        await self._stop_dnsmasq()
        await self._remove_lan_address()
        if self._forwarding_before is not None:
            await asyncio.to_thread(lan_net.write_sysctl, "net.ipv4.ip_forward", self._forwarding_before)
            self._forwarding_before = None

    def _address_marker(self) -> Path:
        return self.config.state_dir / "lan-address"

    async def _add_lan_address(self) -> None:
        lan = self.config.lan
        if lan is None:
            return
        # The address is removed on stop if this daemon (or a crashed run of it, per the marker file)
        # added it; an address the system configured itself is left alone.
        marker = self._address_marker()
        added = await asyncio.to_thread(lan_net.add_lan_address, lan.device, lan.address)
        owned = f"{lan.device} {lan.address}"
        if added or (marker.exists() and marker.read_text() == owned):
            marker.write_text(owned)
            self._lan_address = (lan.device, lan.address)

    async def _remove_lan_address(self) -> None:
        if self._lan_address is not None:
            await asyncio.to_thread(lan_net.remove_lan_address, *self._lan_address)
            self._address_marker().unlink(missing_ok=True)
            self._lan_address = None

    async def _start_dnsmasq(self) -> None:
        lan = self.config.lan
        if lan is not None and (lan.dhcp or lan.dns):
            names_dir = names.directory(self.config.state_dir) if self.config.network is not None else None
            server = dnsmasq.Dnsmasq(lan, self.config.state_dir, names_dir)
            self._dnsmasq = server  # before start: a failed start still has its process reaped
            await server.start()

    async def _stop_dnsmasq(self) -> None:
        if self._dnsmasq is not None:
            await self._dnsmasq.stop()
            self._dnsmasq = None

    async def _start_ui(self) -> None:
        cfg = self.config
        if cfg.lan is not None and cfg.webui.enabled:
            self._ui = WebUiServer(cfg.path, cfg.state_dir, cfg.lan.ip, cfg.webui.port)
            await self._ui.start()

    async def _stop_ui(self) -> None:
        if self._ui is not None:
            await self._ui.stop()
            self._ui = None

    async def wans_changed(self, devices: list[str]) -> None:
        """The WAN manager found ports coming or going: the firewall's outside set follows."""
        self.outside = devices
        try:
            await self._apply_firewall()
        except nft.FirewallError as exc:
            log.error("firewall not updated for WAN ports %s: %s", devices, exc)

    def _exit_peer_up(self) -> bool:
        for peer in self.node.peers():
            if peer["key"] == self._exit_key:
                return bool(peer["connected"]) and any(p["up"] for p in peer["paths"])
        return False

    async def _start_exit(self) -> None:
        if self.config.lan is not None and self._exit_key is not None:
            await self._update_exit()
            self._exit_task = asyncio.get_running_loop().create_task(self._watch_exit())

    async def _stop_exit(self) -> None:
        # The lock first: an update the watcher started (its set_exit runs in a thread, which a cancel
        # would not stop) finishes before the rule is removed, so it cannot put the rule back afterwards.
        async with self._exit_lock:
            if self._exit_task is not None:
                self._exit_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._exit_task
                self._exit_task = None
            await asyncio.to_thread(lan_net.remove_exit)
            self.exit_active = False

    async def _update_exit(self) -> None:
        async with self._exit_lock:
            await self._update_exit_locked()

    async def _update_exit_locked(self) -> None:
        assert self.config.lan is not None
        peer_up = self._exit_peer_up()
        # With the kill switch, LAN traffic is routed into the tunnel even while it is down (and dropped
        # there), never to a raw WAN.
        active = peer_up or self.config.lan.kill_switch
        if active != self.exit_active:
            await asyncio.to_thread(lan_net.set_exit, self.config.lan.device, self.config.tun, active,
                                    self.config.lan.direct)
            self.exit_active = active
            log.info("LAN internet traffic %s", f"goes through peer {self.config.lan.exit_peer}" if peer_up
                     else "is held (kill switch): the exit peer is down" if active
                     else "leaves by the WANs directly: the exit peer is down", extra={"event": "exit_changed"})

    def peer_changed(self, key: bytes | None) -> None:
        """The core reported a path or peer event for `key`: if it is the exit peer, look again now."""
        if key is not None and key == self._exit_key:
            self._exit_dirty.set()

    async def _watch_exit(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exit_dirty.wait(), EXIT_RECHECK_S)
            self._exit_dirty.clear()
            try:
                await self._update_exit()
            except Exception:  # noqa: BLE001 - keep watching; the next round retries
                log.exception("updating the exit route")

    def status(self) -> dict[str, Any]:
        lan = self.config.lan
        return {
            "role": self.config.role,
            "outside": self._outside_ports(),
            "lan": None if lan is None else {
                "device": lan.device, "address": lan.address, "dhcp": lan.dhcp, "dns": lan.dns,
                "exit_peer": lan.exit_peer, "exit_active": self.exit_active, "kill_switch": lan.kill_switch,
                "leases": dnsmasq.leases(self.config.state_dir) if lan.dhcp else [],
            },
        }
