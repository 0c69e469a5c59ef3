"""Faults the daemon must report instead of limping on: the TUN device going away stops it with a non-zero
exit (its supervisor restarts it), after it removed what it had set up."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from tests.lab import Lab
from tests.lab import nodes as qe


def test_a_lost_tun_device_stops_the_daemon_with_an_error(lab: Lab, tmp_path: Path) -> None:
    ns_a, ns_b = qe.two_hosts(lab)
    a = qe.make_node(ns_a, "a", "10.99.0.1/24", tmp_path)
    b = qe.make_node(ns_b, "b", "10.99.0.2/24", tmp_path)
    qe.pair(a, b, "10.1.0.2:4433")
    qe.start(b)
    proc = qe.start(a)
    qe.wait_connected(a)
    # Before the fix the TUN reader returned silently: the daemon ran on and no packet left the node.
    ns_a.ip("link", "del", a.tun)
    assert proc.wait(timeout=10) == 1
    log = qe.read_log(a)
    assert "the TUN device qe0 failed" in log and "quicether: error:" in log, log
    assert not (a.state_dir / "api.sock").exists()


def test_a_rate_cap_the_kernel_refuses_leaves_the_wan_bonded_and_logged(monkeypatch: pytest.MonkeyPatch,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """Issue 18 item 9: a cap that passes validation but that tbf refuses (before the fix, a division by zero
    or a u32 overflow) must not kill the daemon: the WAN is bonded without its cap and the log says why."""
    from pyroute2.netlink.exceptions import NetlinkError

    from quicether.config import WanConfig
    from quicether.daemon import wans as wans_module
    from quicether.net.wan import WanState

    class Node:
        def __init__(self) -> None:
            self.added: list[tuple[str, str, str, bool, int]] = []

        def add_wan(self, wan: tuple[str, str, str, bool, int]) -> None:
            self.added.append(wan)

    def refuse(device: str, rate_mbit: float) -> None:
        raise NetlinkError(22, "Invalid argument")

    wan = WanConfig(name="wan0", device="eth1", address=None, gateway="192.0.2.1", backup=False, rate_mbit=0.1)
    monkeypatch.setattr(wans_module.lan_net, "default_routes", lambda exclude: [("eth1", "192.0.2.1")])
    monkeypatch.setattr(wans_module.wan_net, "read_states", lambda wans: [
        WanState(name=w.name, device=w.device, address="192.0.2.2", carrier=True, backup=False) for w in wans])
    monkeypatch.setattr(wans_module.wan_net, "install_policy_route", lambda index, wan, address: None)
    monkeypatch.setattr(wans_module.wan_net, "set_rate_cap", refuse)
    node = Node()
    manager = wans_module.WanManager(node, [wan])  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="quicether"):
        asyncio.run(manager.reconcile())
    assert [w[:3] for w in node.added] == [("wan0", "eth1", "192.0.2.2")]
    assert "wan0" in manager.active
    assert "WAN wan0: upload cap of 0.1 Mbit/s not applied" in caplog.text, caplog.text
