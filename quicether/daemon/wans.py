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
from quicether.net import lan as lan_net
from quicether.net import wan as wan_net

log = logging.getLogger("quicether")


class WanManager:
    def __init__(self, node: _core.Node, wans: list[WanConfig], *, detect: bool = False,
                 not_wans: frozenset[str] = frozenset(),
                 on_change: Callable[[list[str]], Awaitable[None]] | None = None) -> None:
        self.node = node
        self.configured = wans
        self.detect = detect
        self.not_wans = not_wans  # ports never detected as WANs: the LAN and the tunnel
        self.on_change = on_change
        self.active: dict[str, tuple[str, int]] = {}  # WAN name → (address its paths use, table index)
        self._detected_index: dict[str, int] = {}     # detected WAN → its table index, fixed for the run
        self._monitor: socket.socket | None = None
        self._pending: asyncio.Task[None] | None = None
        self._again = False

    async def start(self) -> None:
        await asyncio.to_thread(wan_net.remove_all_policy_routes)
        self._monitor = wan_net.netlink_monitor(routes=self.detect)
        asyncio.get_running_loop().add_reader(self._monitor, self._on_netlink)
        await self.reconcile()

    async def stop(self) -> None:
        if self._monitor is not None:
            asyncio.get_running_loop().remove_reader(self._monitor)
            self._monitor.close()
        if self._pending is not None:
            self._pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pending
        await asyncio.to_thread(wan_net.remove_all_policy_routes)
        for wan in self.configured:
            if wan.rate_mbit is not None:
                await asyncio.to_thread(wan_net.clear_rate_cap, wan.device)

    def devices(self) -> list[str]:
        """Every port that faces an ISP now: configured WANs (up or not) and detected ones that are active."""
        configured = [w.device for w in self.configured]
        # Detected ports are never configured ones (_wanted_wans skips those).
        return configured + sorted(d for d in self._detected_index if d in self.active)

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
        wans = [(replace(w, gateway=w.gateway or gateways.get(w.device)), i) for i, w in enumerate(self.configured)]
        if not self.detect:
            return wans
        taken = {w.device for w in self.configured}
        for device, gateway in routes:
            if device in taken:
                continue
            if device not in self._detected_index:
                self._detected_index[device] = len(self.configured) + len(self._detected_index)
                log.info("port %s has a default route via %s: using it as a WAN", device, gateway or "-")
            wans.append((WanConfig(name=device, device=device, address=None, gateway=gateway, backup=False),
                         self._detected_index[device]))
        return wans

    async def reconcile(self) -> None:
        while True:
            self._again = False
            before = self.devices()
            wans = await asyncio.to_thread(self._wanted_wans)
            states = await asyncio.to_thread(wan_net.read_states, [w for w, _ in wans])
            wanted = {w.name: (w, index, s.address if s.usable else None, s)
                      for (w, index), s in zip(wans, states, strict=True)}
            for name, (current, index) in list(self.active.items()):
                entry = wanted.get(name)
                if entry is not None and entry[2] == current:
                    continue
                reason = "no default route any more" if entry is None else (
                    "no carrier" if not entry[3].carrier else "address gone or changed")
                log.warning("WAN %s removed: %s", name, reason)
                self.node.remove_wan(name)
                del self.active[name]
                await asyncio.to_thread(wan_net.remove_policy_route, index, current)
                if entry is not None and entry[0].rate_mbit is not None:
                    await asyncio.to_thread(wan_net.clear_rate_cap, entry[0].device)
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
                self.active[name] = (address, index)
                log.info("WAN %s (%s) up with %s%s", wan.name, wan.device, address, ", backup" if wan.backup else "")
            if self.on_change is not None and self.devices() != before:
                await self.on_change(self.devices())
            if not self._again:
                return


def _log_failure(task: asyncio.Task[None]) -> None:
    """A reconcile started by a netlink event has nobody awaiting it: its failure goes to the log here."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("updating the WANs failed: %s", exc, exc_info=exc)
