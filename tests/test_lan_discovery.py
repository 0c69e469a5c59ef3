"""LAN discovery in the lab: two members in two namespaces on one bridge (no internet, no DHT) find each
other through mDNS; a member of another network on the same LAN is seen and counted, never listed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from quicether import _core
from tests.lab import Lab, Namespace
from tests.lab.discovery_member import decode, encode

ROOT = Path(__file__).resolve().parents[1]


class LanMember:
    def __init__(self, ns: Namespace, ip: str, network_key: bytes) -> None:
        self.key = _core.public_key_of_seed(seed := _core.generate_seed())
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
