"""Bounded memory everywhere (issue 15), with real daemons in the lab: each queue driven to its limit, the
counter of what it dropped proving the limit was reached, and the daemon's resident memory (VmRSS of its
process) staying within a stated bound over its baseline while it was.

- Send queues: a UDP flood at 2 Gbit/s into a bond of two 20 Mbit/s WANs (`send_queue`/`full` on the site).
- Resend memory and reorder buffer: the same flood over the WANs unshaped, one of them losing 5 %
  (`resend_memory`/`full` on the site, `reorder`/`full` on the gateway, when the machine pushes enough: see
  the test).
- Relay queues: a member flooding another through the gateway's relay far above its relay rate
  (`relay`/`rate` and `relay`/`queue` on the gateway).
- API connections: 2000 connections to the local API that say nothing or half a request, reopened as the
  daemon closes them (`api`/`evicted_waiting`), while `quicether status` is asked again and again.

The baseline of each daemon is taken after it has carried traffic of the same kind at a rate its links
take (its buffers and queues grown as in normal use); the bound is that baseline plus RSS_MARGIN."""

from __future__ import annotations

import contextlib
import selectors
import socket
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.lab import Lab, LinkSpec, NatType
from tests.lab import nodes as qe
from tests.lab.bond import build_bond_lab
from tests.lab.floods import UsageSampler
from tests.lab.measure import iperf, ping, process_usage, start_iperf_server, wait_for
from tests.lab.mesh import build_mesh_lab

MIB = 1024 * 1024
# What a daemon may grow over its baseline while one of its limits is hit. The limits themselves allow
# less per peer for each queue: send queues at most 2 MiB per path, resend memory 24 MiB, reorder buffer
# 4096 packets (~6 MiB), relay drops past 256 KiB queued, API 32 waiting + 32 answered connections.
RSS_MARGIN = 64 * MIB
# The API's connections are Python objects of a few KiB, each reading at most MAX_REQUEST_BYTES.
API_RSS_MARGIN = 16 * MIB
FLOOD_S = 4
FLOOD_MBIT = 2000
API_FLOOD_CONNECTIONS = 2000
API_FLOOD_S = 6
API_REOPEN_PER_S = 1000


@contextlib.contextmanager
def rss_watch(pid: int, what: str, margin: int = RSS_MARGIN) -> Iterator[UsageSampler]:
    """Samples `pid`'s RSS while the block runs; prints its baseline (read as the block starts) and peak,
    and asserts the peak stayed under baseline + `margin`."""
    baseline = process_usage(pid).rss_bytes
    with UsageSampler(pid) as usage:
        yield usage
    print(f"RSS {what}: baseline {baseline / MIB:.1f} MiB, peak {usage.peak_rss / MIB:.1f} MiB"
          f" (+{(usage.peak_rss - baseline) / MIB:.1f}, bound +{margin / MIB:.0f})")
    assert usage.peak_rss - baseline < margin, f"{what}: grew {(usage.peak_rss - baseline) / MIB:.1f} MiB"


def _pid(node: qe.NodeSpec) -> int:
    assert node.proc is not None
    return node.proc.pid


def _peer_counters(node: qe.NodeSpec) -> dict[str, Any]:
    peer: dict[str, Any] = node.status()["peers"][0]
    return peer


def test_send_queues_resend_memory_and_reorder_buffer_stay_bounded_under_a_udp_flood(
        lab: Lab, tmp_path: Path) -> None:
    bond = build_bond_lab(lab, [LinkSpec(rate_mbit=20, delay_ms=5), LinkSpec(rate_mbit=20, delay_ms=20)], tmp_path)
    start_iperf_server(bond.dc)
    site, gateway = _pid(bond.site), _pid(bond.gateway)
    # Normal use first: UDP at the links' rate grows the queues and buffers the daemons keep.
    iperf(bond.lan, bond.dc_addr, seconds=2, udp_mbit=30, udp_len=1300)
    tcp_before = iperf(bond.lan, bond.dc_addr, seconds=2, streams=4).mbit_s

    before = _peer_counters(bond.site)
    with rss_watch(site, "site, send queues full"), rss_watch(gateway, "gateway, send queues full"):
        iperf(bond.lan, bond.dc_addr, seconds=FLOOD_S, udp_mbit=FLOOD_MBIT, udp_len=1300)
    after = _peer_counters(bond.site)
    queue_full = after["tx_dropped_queue_full"] - before["tx_dropped_queue_full"]
    print(f"send queues: {queue_full} packets dropped for a full queue")
    assert queue_full > 10_000, (before, after)
    # The bond still carries traffic as before.
    tcp_after = iperf(bond.lan, bond.dc_addr, seconds=2, streams=4).mbit_s
    assert tcp_after > 0.7 * tcp_before, (tcp_before, tcp_after)

    # Unshaped WANs (5 and 60 ms), both losing 5 %: the site keeps what it sent for resends (600 ms of it,
    # at most 24 MiB: a few hundred Mbit/s fill it), the gateway holds what came after each gap until it is
    # repaired or 300 ms passed (at most 4096 packets). With loss on the slow WAN alone the buffer
    # overflowed only 5-32 times in a run: the fast WAN's gaps are what hold it full.
    bond.wl.set_link(0, rate_mbit=None, loss_pct=5)
    bond.wl.set_link(1, rate_mbit=None, loss_pct=5, delay_ms=60)
    iperf(bond.lan, bond.dc_addr, seconds=2, udp_mbit=100, udp_len=1300)
    before, gw_before = after, _peer_counters(bond.gateway)
    # The memory's byte bound is reached only if the site hands quinn more than ~335 Mbit/s (24 MiB in
    # 600 ms); a busy machine may not (a clean-clone run evicted nothing at 199 Mbit/s delivered): up to
    # three floods, each watched.
    for attempt in range(3):
        with rss_watch(site, "site, lossy flood"), rss_watch(gateway, "gateway, lossy flood"):
            lossy = iperf(bond.lan, bond.dc_addr, seconds=FLOOD_S, udp_mbit=FLOOD_MBIT, udp_len=1300)
        after, gw_after = _peer_counters(bond.site), _peer_counters(bond.gateway)
        evicted = after["resend_evicted"] - before["resend_evicted"]
        overflowed = gw_after["reorder"]["overflowed"] - gw_before["reorder"]["overflowed"]
        print(f"lossy flood {attempt + 1}: {lossy.mbit_s:.0f} Mbit/s delivered, resend memory evicted {evicted},"
              f" reorder buffer overflowed {overflowed}")
        if evicted > 1000 and overflowed > 100:
            break
    assert evicted > 1000, (before, after)
    assert overflowed > 100, (gw_before, gw_after)
    # The bond carries traffic after it (on clean links: 5 % loss each way on both would fail a ping check
    # by chance).
    bond.wl.set_link(0, loss_pct=0)
    bond.wl.set_link(1, loss_pct=0)
    assert ping(bond.lan, bond.dc_addr, count=5, interval=0.1).received >= 4


def test_a_member_flooding_through_the_relay_leaves_the_gateway_bounded(lab: Lab, tmp_path: Path) -> None:
    """Two members behind symmetric NATs reach each other only through the gateway's relay (20 Mbit/s per
    member): one floods the other with UDP at 2 Gbit/s."""
    mesh = build_mesh_lab(lab, 2, tmp_path, nats=[NatType.SYMMETRIC, NatType.SYMMETRIC], relay_rate_mbit=20)
    s0, s1 = mesh.sites
    target = mesh.address(s1)

    def relayed() -> bool:
        return any(p["node_id"] == s1.node_id and any(path["up"] and path["kind"] == "relayed"
                                                       for path in p["paths"]) for p in s0.status()["peers"])

    wait_for(relayed, timeout=45, step=0.25)
    start_iperf_server(s1.ns)
    gateway = _pid(mesh.gateway)
    iperf(s0.ns, target, seconds=2, udp_mbit=15, udp_len=1200)
    relay_before = mesh.gateway.status()["node"]["relay"]
    with rss_watch(gateway, "gateway, relay flood"):
        flood = iperf(s0.ns, target, seconds=FLOOD_S, udp_mbit=FLOOD_MBIT, udp_len=1200)
    relay = mesh.gateway.status()["node"]["relay"]
    dropped = {cause: relay[f"dropped_{cause}"] - relay_before[f"dropped_{cause}"] for cause in ("rate", "queue")}
    forwarded = relay["forwarded_bytes"] - relay_before["forwarded_bytes"]
    print(f"relay flood: {flood.mbit_s:.1f} Mbit/s delivered, forwarded {forwarded * 8 / FLOOD_S / 1e6:.1f}"
          f" Mbit/s, dropped {dropped}")
    assert dropped["rate"] + dropped["queue"] > 1000, (relay_before, relay)
    assert ping(s0.ns, target, count=5, interval=0.1, timeout_s=2).received >= 4


@dataclass
class ApiFlood:
    """Holds up to `connections` connections to a unix socket, each saying nothing or half a request; those
    the server closes are opened again, `reopen_per_s` a second, until stopped. (Reopened as fast as it can,
    a flood takes most places in the daemon's listen queue from other clients, whatever the daemon does.)"""

    path: Path
    connections: int
    reopen_per_s: float
    opened: int = 0
    closed_by_server: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> ApiFlood:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=10)

    def _open(self, selector: selectors.BaseSelector) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(str(self.path))
        except BlockingIOError:  # the listen backlog is full: try again later
            sock.close()
            return
        if self.opened % 2:
            with contextlib.suppress(OSError):
                sock.send(b'{"cmd": "status", "pad": "')
        self.opened += 1
        selector.register(sock, selectors.EVENT_READ)

    def _run(self) -> None:
        with selectors.DefaultSelector() as selector:
            start = time.monotonic()
            while not self._stop.is_set():
                allowed = self.connections + self.reopen_per_s * (time.monotonic() - start)
                while len(selector.get_map()) < self.connections and self.opened < allowed:
                    before = self.opened
                    self._open(selector)
                    if self.opened == before:
                        break
                for key, _ in selector.select(timeout=0.01):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    selector.unregister(sock)
                    sock.close()
                    self.closed_by_server += 1
            for key in list(selector.get_map().values()):
                assert isinstance(key.fileobj, socket.socket)
                key.fileobj.close()


def test_connections_that_say_nothing_leave_the_api_answering_and_bounded(lab: Lab, tmp_path: Path) -> None:
    a, _b = qe.two_hosts(lab)
    node = qe.make_node(a, "a", "10.99.0.1/24", tmp_path)
    qe.start(node)
    pid, sock = _pid(node), node.state_dir / "api.sock"
    for _ in range(50):  # normal use: status asked now and then
        node.status()
    answered: list[float] = []
    flood = ApiFlood(sock, API_FLOOD_CONNECTIONS, API_REOPEN_PER_S)
    with rss_watch(pid, "daemon, API flood", API_RSS_MARGIN), flood:
        wait_for(lambda: flood.opened >= API_FLOOD_CONNECTIONS, timeout=10)
        deadline = time.monotonic() + API_FLOOD_S
        while time.monotonic() < deadline:
            start = time.monotonic()
            out = a.run(sys.executable, "-m", "quicether", "status", "-c", str(node.config_path), timeout=10)
            answered.append(time.monotonic() - start)
            assert out.stdout.startswith(f"node {node.node_id}"), out
    status = node.status()["node"]
    print(f"API flood: {flood.opened} connections opened, {flood.closed_by_server} closed by the daemon,"
          f" {status['api_evicted_waiting']} evicted, {status['api_refused_busy']} busy; `quicether status`"
          f" answered {len(answered)} times, median {statistics.median(answered):.2f} s,"
          f" slowest {max(answered):.2f} s")
    assert flood.opened > 2 * API_FLOOD_CONNECTIONS, "the flood did not go on"
    assert status["api_evicted_waiting"] > API_FLOOD_CONNECTIONS, status
    assert len(answered) >= 3
