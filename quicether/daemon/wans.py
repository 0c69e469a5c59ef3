"""Keeps the core's WANs in step with the ports: a WAN that has carrier and an address is dialed from
(with its policy route installed); one that loses either is removed at once. Re-checked on every netlink
link/address/route event, so no restart is ever needed.

WANs are the `[[wan]]` entries of the config and, with `detect_wans`, every other port that has a default
route in the main table (a DHCP lease or a static gateway): such a port becomes a WAN when its route
appears and stops being one when the route goes. A `[[wan]]` without a gateway takes the one of its
port's default route, so a WAN chosen in the wizard works with whatever its DHCP lease says.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import replace

from pyroute2.netlink.exceptions import NetlinkError

from quicether import _core
from quicether.config import WanConfig
from quicether.daemon.portmap import PortMaps
from quicether.net import lan as lan_net
from quicether.net import wan as wan_net

log = logging.getLogger("quicether")


class WanManager:
    def __init__(self, node: _core.Node, wans: list[WanConfig], *, detect: bool = False,
                 not_wans: frozenset[str] = frozenset(),
                 on_change: Callable[[list[str]], Awaitable[None]] | None = None,
                 portmaps: PortMaps | None = None) -> None:
        self.node = node
        self.portmaps = portmaps  # asks each WAN's gateway for a port mapping as the WAN comes up
        self.configured = wans
        self.detect = detect
        self.not_wans = not_wans  # ports never detected as WANs: the LAN and the tunnel
        self.on_change = on_change
        self.active: dict[str, tuple[str, int]] = {}  # WAN name → (address its paths use, table index)
        self._index: dict[str, int] = {}              # WAN name → its table index, kept while it is known
        self._detected: set[str] = set()              # detected WAN ports (named after the port)
        self._applied: dict[str, WanConfig] = {}      # active WAN → the settings it was added with
        self._reconcile_lock = asyncio.Lock()
        self._monitor: socket.socket | None = None
        self._pending: asyncio.Task[None] | None = None
        self._again = False

    async def start(self) -> None:
        await asyncio.to_thread(wan_net.remove_all_policy_routes)
        self._watch()
        await self.reconcile()

    def _watch(self) -> None:
        self._unwatch()
        self._monitor = wan_net.netlink_monitor(routes=self.detect)
        asyncio.get_running_loop().add_reader(self._monitor, self._on_netlink)

    def _unwatch(self) -> None:
        if self._monitor is not None:
            asyncio.get_running_loop().remove_reader(self._monitor)
            self._monitor.close()
            self._monitor = None

    async def update(self, wans: list[WanConfig], detect: bool, not_wans: frozenset[str]) -> None:
        """A reload changed the [[wan]] entries or detect_wans: WANs whose settings changed or that are no
        longer wanted are removed (and re-added with the new settings by the reconcile); the others keep
        their paths."""
        if detect != self.detect:
            self.detect = detect
            self._watch()
        self.configured = wans
        self.not_wans = not_wans
        if not detect:
            self._detected.clear()
        await self.reconcile()

    async def stop(self) -> None:
        self._unwatch()
        if self._pending is not None:
            self._pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pending
        await asyncio.to_thread(wan_net.remove_all_policy_routes)
        for wan in self._applied.values():
            if wan.rate_mbit is not None:
                await asyncio.to_thread(wan_net.clear_rate_cap, wan.device)

    @property
    def applied(self) -> dict[str, WanConfig]:
        """Each active WAN's settings (device, role) as it was added."""
        return self._applied

    def devices(self) -> list[str]:
        """Every port that faces an ISP now: configured WANs (up or not) and detected ones that are active."""
        configured = [w.device for w in self.configured]
        # Detected ports are never configured ones (_wanted_wans skips those).
        return configured + sorted(d for d in self._detected if d in self.active)

    def _index_of(self, name: str) -> int:
        """A table index for WAN `name`: the one it had, else the lowest one no known WAN holds, so a
        reload that removes a WAN never moves another one's table."""
        if name not in self._index:
            taken = set(self._index.values())
            self._index[name] = next(i for i in range(wan_net.MAX_WANS + 1) if i not in taken)
            if self._index[name] >= wan_net.MAX_WANS:
                del self._index[name]
                raise ValueError(f"WAN {name}: more than {wan_net.MAX_WANS} WANs")
        return self._index[name]

    def _on_netlink(self) -> None:
        assert self._monitor is not None
        with contextlib.suppress(BlockingIOError):
            while self._monitor.recv(65536):
                pass
        if self._pending is None or self._pending.done():
            self._pending = asyncio.get_running_loop().create_task(self.reconcile())
            self._pending.add_done_callback(_log_failure)
        else:
            self._again = True  # an event arrived mid-check: look once more afterwards

    def _wanted_wans(self) -> list[tuple[WanConfig, int]]:
        routes = lan_net.default_routes(set(self.not_wans))
        gateways = dict(routes)
        # A configured WAN without a gateway uses the one its default route names (a DHCP lease's router).
        wans = [(replace(w, gateway=w.gateway or gateways.get(w.device)), self._index_of(w.name))
                for w in self.configured]
        if not self.detect:
            return wans
        taken = {w.device for w in self.configured}
        for device, gateway in routes:
            if device in taken:
                continue
            if device not in self._detected:
                self._detected.add(device)
                log.info("port %s has a default route via %s: using it as a WAN", device, gateway or "-")
            wans.append((WanConfig(name=device, device=device, address=None, gateway=gateway, backup=False),
                         self._index_of(device)))
        return wans

    async def reconcile(self) -> None:
        # One at a time: a reload's reconcile and one started by a netlink event (often by the reload's own
        # route changes) would both see a WAN as new and add it twice.
        async with self._reconcile_lock:
            await self._reconcile()

    async def _reconcile(self) -> None:
        while True:
            self._again = False
            before = self.devices()
            wans = await asyncio.to_thread(self._wanted_wans)
            states = await asyncio.to_thread(wan_net.read_states, [w for w, _ in wans])
            wanted = {w.name: (w, index, s.address if s.usable else None, s)
                      for (w, index), s in zip(wans, states, strict=True)}
            for name, (current, index) in list(self.active.items()):
                entry = wanted.get(name)
                applied = self._applied[name]
                # A WAN keeps its paths while its address and settings (port, gateway, role, cap) stay.
                if entry is not None and entry[2] == current and entry[0] == applied:
                    continue
                reason = ("not configured any more" if entry is None and name not in self._detected
                          else "no default route any more" if entry is None
                          else "settings changed" if entry[0] != applied
                          else "no carrier" if not entry[3].carrier else "address gone or changed")
                log.warning("WAN %s removed: %s", name, reason, extra={"event": "wan_removed"})
                self.node.remove_wan(name)
                if self.portmaps is not None:
                    self.portmaps.wan_down(name)
                del self.active[name]
                del self._applied[name]
                await asyncio.to_thread(wan_net.remove_policy_route, index, current)
                if applied.rate_mbit is not None:
                    await asyncio.to_thread(wan_net.clear_rate_cap, applied.device)
            for name in set(self._index) - set(wanted) - set(self.active):
                del self._index[name]  # gone for good: its table index is free again
                self._detected.discard(name)
            for name, (wan, index, address, _state) in wanted.items():
                if address is None or name in self.active:
                    continue
                await asyncio.to_thread(wan_net.install_policy_route, index, wan, address)
                if wan.rate_mbit is not None:
                    try:
                        await asyncio.to_thread(wan_net.set_rate_cap, wan.device, wan.rate_mbit)
                    except (NetlinkError, OSError, ValueError) as exc:
                        # The WAN is still worth bonding without its cap; the owner sees why in the log.
                        log.error("WAN %s: upload cap of %s Mbit/s not applied: %s", wan.name, wan.rate_mbit, exc)
                self.node.add_wan((wan.name, wan.device, address, wan.backup, wan_net.wan_mark(index)))
                if self.portmaps is not None:
                    self.portmaps.wan_up(wan.name, wan.gateway)
                self.active[name] = (address, index)
                self._applied[name] = wan
                log.info("WAN %s (%s) up with %s%s", wan.name, wan.device, address, ", backup" if wan.backup else "",
                         extra={"event": "wan_added"})
            if self.on_change is not None and self.devices() != before:
                await self.on_change(self.devices())
            if not self._again:
                return


def _log_failure(task: asyncio.Task[None]) -> None:
    """A reconcile started by a netlink event has nobody awaiting it: its failure goes to the log here."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("updating the WANs failed: %s", exc, exc_info=exc)
