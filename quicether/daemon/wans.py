"""Keeps the core's WANs in step with the ports: a WAN that has carrier and an address is dialed from
(with its policy route installed); one that loses either is removed at once. Re-checked on every netlink
link/address event, so no restart is ever needed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from quicether import _core
from quicether.config import WanConfig
from quicether.net import wan as wan_net

log = logging.getLogger("quicether")


class WanManager:
    def __init__(self, node: _core.Node, wans: list[WanConfig]) -> None:
        self.node = node
        self.wans = wans
        self.active: dict[str, str] = {}  # WAN name → the address its paths use
        self._monitor: socket.socket | None = None
        self._pending: asyncio.Task[None] | None = None
        self._again = False

    async def start(self) -> None:
        await asyncio.to_thread(wan_net.remove_all_policy_routes)
        self._monitor = wan_net.netlink_monitor()
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

    def _on_netlink(self) -> None:
        assert self._monitor is not None
        with contextlib.suppress(BlockingIOError):
            while self._monitor.recv(65536):
                pass
        if self._pending is None or self._pending.done():
            self._pending = asyncio.get_running_loop().create_task(self.reconcile())
        else:
            self._again = True  # an event arrived mid-check: look once more afterwards

    async def reconcile(self) -> None:
        while True:
            self._again = False
            states = await asyncio.to_thread(wan_net.read_states, self.wans)
            for index, (wan, state) in enumerate(zip(self.wans, states, strict=True)):
                current = self.active.get(wan.name)
                wanted = state.address if state.usable else None
                if current == wanted:
                    continue
                if current is not None:
                    log.warning("WAN %s (%s) removed: %s", wan.name, wan.device,
                                "no carrier" if not state.carrier else "address gone or changed")
                    self.node.remove_wan(wan.name)
                    del self.active[wan.name]
                    await asyncio.to_thread(wan_net.remove_policy_route, index, current)
                if wanted is not None:
                    await asyncio.to_thread(wan_net.install_policy_route, index, wan, wanted)
                    self.node.add_wan((wan.name, wan.device, wanted, wan.backup))
                    self.active[wan.name] = wanted
                    log.info("WAN %s (%s) up with %s%s", wan.name, wan.device, wanted,
                             ", backup" if wan.backup else "")
            if not self._again:
                return
