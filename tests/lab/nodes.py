"""QuicEther daemons in lab namespaces: write a key and config per node, run `quicether up`, ask its API."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quicether import config_edit
from quicether.daemon import api
from quicether.identity import generate
from tests.lab.netns import Lab, LabError, Namespace

QUIC_PORT = 4433


@dataclass
class NodeSpec:
    """One node: where it runs, its overlay address, and its config directory."""

    ns: Namespace
    name: str
    address: str                      # overlay address with prefix, e.g. 10.99.0.1/24
    state_dir: Path
    listen: str = f"0.0.0.0:{QUIC_PORT}"
    tun: str = "qe0"
    congestion: str = "loss-tolerant"
    node_id: str = ""
    peers: list[dict[str, Any]] = field(default_factory=list)
    wans: list[dict[str, Any]] = field(default_factory=list)
    node_extra: dict[str, Any] = field(default_factory=dict)     # more [node] settings (role, detect_wans…)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)  # [lan], [gateway]…
    acls: list[dict[str, Any]] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None
    env: dict[str, str] = field(default_factory=dict)  # more environment for the daemon (lab switches)

    @property
    def config_path(self) -> Path:
        return self.state_dir / "quicether.toml"

    @property
    def overlay_ip(self) -> str:
        return self.address.split("/")[0]

    def write_config(self) -> None:
        node = {"listen": self.listen, "tun": self.tun, "address": self.address, "state_dir": str(self.state_dir),
                "congestion": self.congestion, **self.node_extra}
        if not self.address:  # a first-boot node: the wizard or `quicether join` sets it
            del node["address"]
        # The same writer as the web UI and `quicether join` (lists of tables become [[...]] sections).
        doc = {"node": node, **self.sections, "wan": self.wans, "peer": self.peers, "acl": self.acls}
        self.config_path.write_text(config_edit.dump(doc))

    def status(self) -> dict[str, Any]:
        return api.request(self.state_dir / "api.sock", "status")


def two_hosts(lab: Lab) -> tuple[Namespace, Namespace]:
    """Two namespaces on one veth pair: a at 10.1.0.1, b at 10.1.0.2 (/24)."""
    a, b = lab.add_namespace("a"), lab.add_namespace("b")
    lab.veth(a, "eth0", b, "eth0")
    a.ip("addr", "add", "10.1.0.1/24", "dev", "eth0")
    b.ip("addr", "add", "10.1.0.2/24", "dev", "eth0")
    return a, b


def make_node(ns: Namespace, name: str, address: str, base: Path) -> NodeSpec:
    state = base / name
    state.mkdir(parents=True, exist_ok=True)
    node = NodeSpec(ns=ns, name=name, address=address, state_dir=state)
    node.node_id = generate(state / "node.key").node_id
    return node


def pair(a: NodeSpec, b: NodeSpec, b_endpoint: str | None) -> None:
    """Makes a and b peers; a dials b at `b_endpoint` (b only listens)."""
    a.peers.append({"name": b.name, "key": b.node_id, "allowed_ips": [f"{b.overlay_ip}/32"],
                    **({"endpoint": b_endpoint} if b_endpoint else {})})
    b.peers.append({"name": a.name, "key": a.node_id, "allowed_ips": [f"{a.overlay_ip}/32"]})


def start(node: NodeSpec, log_path: Path | None = None) -> subprocess.Popen[str]:
    node.write_config()
    log = open(log_path or node.state_dir / "daemon.log", "a")  # noqa: SIM115 - lives as long as the process
    env = {"env": {**os.environ, **node.env}} if node.env else {}
    node.proc = node.ns.popen([sys.executable, "-m", "quicether", "up", "-c", str(node.config_path)],
                              stdout=log, stderr=subprocess.STDOUT, **env)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if node.proc.poll() is not None:
            raise LabError(f"{node.name} exited {node.proc.returncode}: {read_log(node)}")
        try:
            node.status()
            return node.proc
        except OSError:
            time.sleep(0.05)
    raise LabError(f"{node.name} did not start: {read_log(node)}")


def stop(node: NodeSpec, timeout: float = 10) -> int:
    assert node.proc is not None
    node.proc.terminate()
    return node.proc.wait(timeout=timeout)


def read_log(node: NodeSpec) -> str:
    path = node.state_dir / "daemon.log"
    return path.read_text() if path.exists() else ""


def wait_connected(node: NodeSpec, timeout: float = 10) -> float:
    """Waits until every peer of `node` is connected; returns the seconds it took."""
    start_t = time.monotonic()
    while time.monotonic() - start_t < timeout:
        peers = node.status()["peers"]
        if peers and all(p["connected"] for p in peers):
            return time.monotonic() - start_t
        time.sleep(0.05)
    raise LabError(f"{node.name}: peers not connected after {timeout}s: {node.status()['peers']}")
