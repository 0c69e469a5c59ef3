"""Faults the daemon must report instead of limping on: the TUN device going away stops it with a non-zero
exit (its supervisor restarts it), after it removed what it had set up."""

from __future__ import annotations

from pathlib import Path

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
