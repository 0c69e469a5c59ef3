"""LAN discovery in the lab: two members in two namespaces on one bridge (no internet, no DHT) find each
other through mDNS; a member of another network on the same LAN is seen and counted, never listed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from quicether import _core, network
from quicether.identity import decode_node_id, generate, load
from tests.lab import Lab, Namespace
from tests.lab import nodes as qe
from tests.lab.discovery_member import decode, encode
from tests.lab.measure import ping, wait_for
from tests.lab.mesh import make_member

ROOT = Path(__file__).resolve().parents[1]


class LanMember:
    def __init__(self, ns: Namespace, ip: str, network_key: bytes, seed: bytes | None = None) -> None:
        """Announces `seed`'s key (default: a fresh one) as a member of `network_key` at `ip`:4433."""
        seed = seed or _core.generate_seed()
        self.key = _core.public_key_of_seed(seed)
        self.ip = ip
        self.proc = ns.popen([sys.executable, "-m", "tests.lab.discovery_member", "--seed-hex", seed.hex(),
                              "--network-key-hex", network_key.hex(), "--lan", ip, "--port", "4433",
                              "--interface", "eth0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=str(ROOT))
        assert json.loads(self._line())["node_key"] == self.key.hex()

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "LAN member exited"
        return line

    def call(self, name: str) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"call": name, "args": encode([])}) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self._line())
        assert "error" not in answer, answer["error"]
        return decode(answer["result"])


def _lan(lab: Lab, count: int) -> list[Namespace]:
    """`count` namespaces, each with eth0 on one bridge, 192.168.77.(i+1)/24."""
    switch = lab.add_namespace("switch")
    switch.ip("link", "add", "br0", "type", "bridge")
    switch.ip("link", "set", "br0", "up")
    hosts = []
    for i in range(count):
        host = lab.add_namespace(f"m{i}")
        lab.veth(host, "eth0", switch, f"p{i}")
        switch.ip("link", "set", f"p{i}", "master", "br0")
        host.ip("addr", "add", f"192.168.77.{i + 1}/24", "dev", "eth0")
        hosts.append(host)
    return hosts


def test_two_members_on_one_lan_find_each_other_by_mdns(lab: Lab) -> None:
    hosts = _lan(lab, 3)
    network = _core.public_key_of_seed(_core.generate_seed())
    a = LanMember(hosts[0], "192.168.77.1", network)
    b = LanMember(hosts[1], "192.168.77.2", network)
    stranger = LanMember(hosts[2], "192.168.77.3", _core.public_key_of_seed(_core.generate_seed()))

    deadline = time.monotonic() + 15
    while True:
        seen_by_a, seen_by_b = a.call("members"), b.call("members")
        if seen_by_a and seen_by_b and a.call("counters")["foreign_network"]:
            break
        assert time.monotonic() < deadline, (seen_by_a, seen_by_b, a.call("counters"))
        time.sleep(0.3)
    assert [m["node_key"] for m in seen_by_a] == [b.key]
    assert [m["node_key"] for m in seen_by_b] == [a.key]
    assert "192.168.77.2:4433" in seen_by_a[0]["addrs"] and "192.168.77.1:4433" in seen_by_b[0]["addrs"]
    # The other network's member announced on the same LAN: counted, not a candidate.
    assert all(m["node_key"] != stranger.key for m in seen_by_a + seen_by_b)
    assert stranger.call("members") == []
    assert stranger.call("counters")["foreign_network"] >= 1


def test_members_on_one_lan_without_internet_find_each_other_and_connect(lab: Lab, tmp_path: Path) -> None:
    """Two members that have never met, each with only its certificate (no peers, no DHT, no internet),
    on one LAN: each dials the key the other announces, the handshakes show the certificates, and each
    routes the other. A node announcing our network with a key that holds no certificate of it (anyone on
    the LAN can) is dialed, refused in the handshake, and gets neither a path nor a route."""
    hosts = _lan(lab, 3)
    (tmp_path / "admin").mkdir()
    net = network.create(tmp_path / "admin", "home", generate(tmp_path / "admin" / "node.key"), admin_name="gw")
    a, b = (qe.make_node(hosts[i], name, "", tmp_path) for i, name in enumerate(("a", "b")))
    for node in (a, b):
        make_member(node, network.issue(net, decode_node_id(node.node_id), f"site-{node.name}"), None)
    impostor = qe.make_node(hosts[2], "impostor", "10.99.0.9/24", tmp_path)
    for node in (a, b, impostor):
        qe.start(node)
    LanMember(hosts[2], "192.168.77.3", net.public_key, seed=load(impostor.state_dir / "node.key").seed)

    def connected(node: qe.NodeSpec, name: str) -> bool:
        return any(p["name"] == name and p["connected"] for p in node.status()["peers"])

    took = wait_for(lambda: connected(a, "site-b") and connected(b, "site-a"), timeout=30, step=0.3)
    address = {n.name: network.load(tmp_path / "admin", "home").find(n.node_id).ipv4 for n in (a, b)}
    assert ping(a.ns, address["b"], count=2).received == 2 and ping(b.ns, address["a"], count=2).received == 2
    found = {node.name: next(p["found"] for p in node.status()["peers"] if p["name"].startswith("site-"))
             for node in (a, b)}
    # One dialed the key it heard announced; the other admitted it by its certificate (or dialed it too).
    assert "lan" in found.values() and set(found.values()) <= {"lan", "certificate"}, found
    assert all(node.status()["node"]["lan_discovery"]["resolved"] >= 1 for node in (a, b))
    # The impostor was dialed (it announced our network) but showed no certificate: no path, no route.
    wait_for(lambda: f"cannot reach unknown node {impostor.node_id}" in qe.read_log(a), timeout=15)
    assert "invalid peer certificate" in qe.read_log(a)
    impostor_peer = [p for p in a.status()["peers"] if p["node_id"] == impostor.node_id]
    assert all(not p["connected"] and p["member"] is None for p in impostor_peer), impostor_peer
    assert "10.99.0.9" not in a.ns.run("ip", "route", "show", "dev", "qe0").stdout
    assert took < 20, f"the members found each other on the LAN only after {took:.1f} s"
