"""Floods at a mesh gateway's DHT port, for tests/test_floods.py and scripts/bench-flood: the mesh lab with
the gateway serving the DHT (its sites' only DHT node), site s0's link shaped so that the bond's goodput is
the link's and not the machine's, and an attacker host on the hub with several source addresses.

    s0 10.1.0.1 ──(rate)── hub: gateway, DHT server on 10.1.0.2:6881 ── attacker 10.200.0.1, .11 …
    s1 10.2.0.1 ───────────┘
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.lab.measure import process_usage, wait_for
from tests.lab.mesh import MeshLab, build_mesh_lab
from tests.lab.netns import Lab, LabError, Namespace

FLOODER = Path(__file__).resolve().parents[2] / "core" / "target" / "release" / "qe-flood"
DHT_PORT = 6881
ATTACKER_SOURCES = 8


@dataclass
class DhtFloodLab:
    mesh: MeshLab
    attacker: Namespace
    sources: list[str]          # the attacker's addresses, each can run a flooder of its own

    @property
    def target(self) -> str:
        return f"10.1.0.2:{DHT_PORT}"

    @property
    def gateway_pid(self) -> int:
        assert self.mesh.gateway.proc is not None
        return self.mesh.gateway.proc.pid

    def flood(self, mode: str, seconds: float, rate: int, source: int = 0) -> subprocess.Popen[str]:
        """Starts qe-flood at the gateway's DHT port from the attacker's `source`-th address."""
        return self.attacker.popen([str(FLOODER), "--target", self.target, "--mode", mode, "--seconds", str(seconds),
                                    "--rate", str(rate), "--bind", self.sources[source]],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def dht_counters(self) -> dict[str, int]:
        dht = self.mesh.gateway.status()["node"]["dht"]
        return {k: int(v) for k, v in dht["counters"].items()}


def finish(flood: subprocess.Popen[str], timeout: float) -> str:
    """Waits for a flooder; its JSON line of what it sent (LabError if it failed)."""
    out, err = flood.communicate(timeout=timeout)
    if flood.returncode != 0:
        raise LabError(f"qe-flood failed: {err.strip()}")
    return out


def _shape(ns: Namespace, dev: str, rate_mbit: float) -> None:
    ns.run("tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{rate_mbit}mbit", "burst", "64kb",
           "latency", "30ms")


def build_dht_flood_lab(lab: Lab, state: Path, rate_mbit: float = 50) -> DhtFloodLab:
    if not FLOODER.exists():
        raise LabError(f"{FLOODER} is missing: run ./scripts/setup (it builds core/labtools)")
    sources = ["10.200.0.1", *(f"10.200.0.{11 + i}" for i in range(ATTACKER_SOURCES - 1))]
    attacker = lab.add_namespace("attacker")

    def link_attacker(hub: Namespace) -> None:
        lab.veth(attacker, "eth0", hub, "attacker")
        hub.ip("addr", "add", "10.200.0.254/24", "dev", "attacker")
        for addr in sources:
            attacker.ip("addr", "add", f"{addr}/24", "dev", "eth0")
        attacker.ip("route", "add", "default", "via", "10.200.0.254")

    mesh = build_mesh_lab(lab, 2, state, dht_nodes=0, gateway_dht_port=DHT_PORT, prepare_hub=link_attacker)
    _shape(mesh.hub, "s0", rate_mbit)
    _shape(mesh.sites[0].ns, "eth0", rate_mbit)
    wait_for(lambda: all(mesh.connected(s) >= 2 for s in mesh.sites), timeout=60, step=0.5)
    return DhtFloodLab(mesh=mesh, attacker=attacker, sources=sources)


@dataclass
class UsageSampler:
    """A process's peak RSS and CPU share while it runs (a sample every 0.2 s)."""

    pid: int
    peak_rss: int = 0
    cpu_share: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _start: tuple[float, float] = (0.0, 0.0)

    def __enter__(self) -> UsageSampler:
        usage = process_usage(self.pid)
        self.peak_rss, self._start = usage.rss_bytes, (usage.cpu_s, time.monotonic())
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak_rss = max(self.peak_rss, process_usage(self.pid).rss_bytes)

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        usage = process_usage(self.pid)
        self.peak_rss = max(self.peak_rss, usage.rss_bytes)
        self.cpu_share = (usage.cpu_s - self._start[0]) / (time.monotonic() - self._start[1])
