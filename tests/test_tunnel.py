"""The point-to-point tunnel in the lab: two nodes on one veth pair, real ping and iperf3 through it."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from quicether import _core
from quicether.identity import decode_node_id, generate
from tests.lab import Lab, Namespace
from tests.lab import nodes as qe
from tests.lab.measure import iperf, ping, start_iperf_server
from tests.lab.topology import REPO_ROOT


@dataclass
class Pair:
    lab: Lab
    a: qe.NodeSpec      # dials b
    b: qe.NodeSpec      # listens only
    tmp: Path


@pytest.fixture
def pair(lab: Lab, tmp_path: Path) -> Iterator[Pair]:
    ns_a, ns_b = qe.two_hosts(lab)
    a = qe.make_node(ns_a, "a", "10.99.0.1/24", tmp_path)
    b = qe.make_node(ns_b, "b", "10.99.0.2/24", tmp_path)
    qe.pair(a, b, "10.1.0.2:4433")
    qe.start(b)
    qe.start(a)
    qe.wait_connected(a)
    yield Pair(lab, a, b, tmp_path)


def test_ping_both_ways_and_status_shows_the_peer(pair: Pair) -> None:
    there = ping(pair.a.ns, pair.b.overlay_ip, count=5)
    back = ping(pair.b.ns, pair.a.overlay_ip, count=5)
    assert there.received == 5 and back.received == 5
    status = pair.a.status()
    peer = status["peers"][0]
    assert peer["name"] == "b" and peer["connected"] and peer["endpoint"] == "10.1.0.2:4433"
    assert peer["rx_packets"] >= 5 and peer["tx_packets"] >= 5 and peer["last_handshake"] is not None
    cli = pair.a.ns.run(sys.executable, "-m", "quicether", "status", "-c", str(pair.a.config_path))
    assert f"peer b {pair.b.node_id}" in cli.stdout and "connected" in cli.stdout


def test_a_node_without_aes_instructions_gets_chacha20_and_status_says_which_it_prefers(lab: Lab,
                                                                                       tmp_path: Path) -> None:
    ns_a, ns_b = qe.two_hosts(lab)
    a = qe.make_node(ns_a, "a", "10.99.0.1/24", tmp_path)
    b = qe.make_node(ns_b, "b", "10.99.0.2/24", tmp_path)
    qe.pair(a, b, "10.1.0.2:4433")
    b.env = {"QUICETHER_CIPHER": "chacha20"}  # as a Raspberry Pi 4 chooses by itself (no AES instructions)
    qe.start(b)
    qe.start(a)
    qe.wait_connected(a)
    assert ping(a.ns, b.overlay_ip, count=3).received == 3
    assert b.status()["node"]["cipher"] == {"preferred": "chacha20-poly1305", "why": "set by QUICETHER_CIPHER"}
    assert a.status()["node"]["cipher"]["preferred"] in ("aes-gcm", "chacha20-poly1305")
    cli = b.ns.run(sys.executable, "-m", "quicether", "status", "-c", str(b.config_path)).stdout
    assert "cipher chacha20-poly1305 preferred (set by QUICETHER_CIPHER)" in cli, cli
    qe.stop(a)
    a.env = {"QUICETHER_CIPHER": "des"}
    qe.start(a)
    qe.wait_connected(a)
    assert a.status()["node"]["cipher"]["why"].startswith('QUICETHER_CIPHER="des": expected "aes" or "chacha20"')


def _threads_named(pid: int, name: str) -> int:
    return sum((task / "comm").read_text().strip() == name for task in Path(f"/proc/{pid}/task").iterdir())


def test_the_threads_carrying_packets_are_two_unless_the_config_sets_them(lab: Lab, tmp_path: Path) -> None:
    """node.io_threads: the runtime runs the count set (one: faster bulk TCP on 2 CPUs), else two."""
    ns_a, ns_b = qe.two_hosts(lab)
    a = qe.make_node(ns_a, "a", "10.99.0.1/24", tmp_path)
    b = qe.make_node(ns_b, "b", "10.99.0.2/24", tmp_path)
    qe.pair(a, b, "10.1.0.2:4433")
    a.node_extra = {"io_threads": 1}
    qe.start(b)
    qe.start(a)
    qe.wait_connected(a)
    assert ping(a.ns, b.overlay_ip, count=3).received == 3
    assert a.status()["node"]["io_threads"] == {"count": 1, "why": "set by node.io_threads"}
    assert b.status()["node"]["io_threads"] == {"count": 2, "why": "the default"}
    # The runtime's own count, and the threads the process has by that name (its blocking pool may add some).
    assert a.proc is not None and b.proc is not None
    assert _threads_named(a.proc.pid, "quicether-io") >= 1 and _threads_named(b.proc.pid, "quicether-io") >= 2
    cli = a.ns.run(sys.executable, "-m", "quicether", "status", "-c", str(a.config_path)).stdout
    assert "io threads 1 (set by node.io_threads)" in cli, cli
    qe.stop(a)
    qe.stop(b)


def test_iperf3_tcp_and_udp_through_the_tunnel(pair: Pair) -> None:
    start_iperf_server(pair.b.ns)
    tcp = iperf(pair.a.ns, pair.b.overlay_ip, seconds=2)
    assert tcp.mbit_s > 50, tcp.mbit_s
    udp = iperf(pair.a.ns, pair.b.overlay_ip, seconds=2, udp_mbit=100, udp_len=1300)
    assert udp.lost_percent < 1.0, udp.lost_percent
    # Every byte went through DATAGRAM frames: the peer counted what iperf3 moved.
    assert pair.a.status()["peers"][0]["tx_bytes"] > 2 * 50e6 / 8


def test_a_jumbo_path_mtu_carries_bulk_traffic_in_gso_sends_the_kernel_takes(lab: Lab, tmp_path: Path) -> None:
    # At path MTU 9000 a QUIC datagram is 8972 bytes: one GSO send carries at most 7 of them (64 KB). More
    # in one send, as quinn would ask for, are refused by the kernel (EMSGSIZE) and lost.
    ns_a, ns_b = qe.two_hosts(lab)
    for ns in (ns_a, ns_b):
        ns.ip("link", "set", "eth0", "mtu", "9000")
    a = qe.make_node(ns_a, "a", "10.99.0.1/24", tmp_path)
    b = qe.make_node(ns_b, "b", "10.99.0.2/24", tmp_path)
    for node in (a, b):
        node.node_extra["path_mtu"] = 9000
    qe.pair(a, b, "10.1.0.2:4433")
    qe.start(b)
    qe.start(a)
    qe.wait_connected(a)
    assert a.status()["node"]["mtu"] > 8000
    start_iperf_server(b.ns)
    status = a.status()
    before, resent_before = status["node"]["udp_batching"], status["peers"][0]["retransmitted"]
    tcp = iperf(a.ns, b.overlay_ip, seconds=3)
    status = a.status()
    after, resent = status["node"]["udp_batching"], status["peers"][0]["retransmitted"] - resent_before
    calls = after["send_calls"] - before["send_calls"]
    sent = after["sent_datagrams"] - before["sent_datagrams"]
    # Sends the kernel refused count here too (quinn-udp reports them as sent): this only shows GSO in use.
    assert calls > 0 and sent / calls > 1.5, f"{sent} datagrams in {calls} sends: GSO in use"
    print(f"path MTU 9000: {tcp.mbit_s:.0f} Mbit/s, {sent} datagrams in {calls} sends, {resent} resent")
    # Refused sends are lost datagrams: the bond resends them (NACK), and the inner TCP slows down.
    assert resent < sent / 100, f"{resent} of {sent} datagrams resent"
    assert tcp.mbit_s > 300, f"{tcp.mbit_s:.0f} Mbit/s ({sent} datagrams in {calls} sends)"


def test_mtu_fits_exactly_and_one_byte_more_is_refused(pair: Pair) -> None:
    mtu = pair.a.status()["node"]["mtu"]
    assert 1400 <= mtu <= 1500 - 28
    fits = ping(pair.a.ns, pair.b.overlay_ip, count=3, size=mtu - 28, dont_fragment=True)
    assert fits.received == 3
    too_big = pair.a.ns.run("ping", "-c", "1", "-M", "do", "-s", str(mtu - 27), "-W", "1", pair.b.overlay_ip,
                            check=False)
    assert too_big.returncode != 0
    assert f"mtu={mtu}" in too_big.stdout + too_big.stderr  # refused with the tunnel MTU, not fragmented


def test_unknown_key_is_refused_and_logged_once(pair: Pair) -> None:
    stranger = qe.make_node(pair.a.ns, "stranger", "10.99.0.9/24", pair.tmp)
    stranger.listen, stranger.tun = "0.0.0.0:4434", "qe9"
    # The stranger knows b, but b does not know the stranger.
    stranger.peers.append({"name": "b", "key": pair.b.node_id, "endpoint": "10.1.0.2:4433",
                           "allowed_ips": ["10.99.0.2/32"]})
    qe.start(stranger)
    time.sleep(3.5)  # the stranger redials every second
    assert not stranger.status()["peers"][0]["connected"]
    refusals = [line for line in qe.read_log(pair.b).splitlines() if "refused handshake" in line]
    assert len(refusals) == 1, refusals
    assert stranger.node_id in refusals[0]
    assert len(pair.b.status()["peers"]) == 1, "nothing is kept for a refused key"
    # Logged once, but every refusal is counted (status shows the count).
    assert pair.b.status()["node"]["refused_handshakes"] >= 2


def _seconds_until_the_tunnel_is_back(pair: Pair) -> float:
    """Pings a → b until one answer comes (at most 8 s); returns how long that took."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < 8:
        if ping(pair.a.ns, pair.b.overlay_ip, count=1, timeout_s=0.2).received:
            break
    return time.monotonic() - t0


def test_restart_of_either_side_recovers_within_5s(pair: Pair) -> None:
    for node in (pair.b, pair.a):
        assert qe.stop(node) == 0
        qe.start(node)
        recovered = _seconds_until_the_tunnel_is_back(pair)
        assert recovered < 5, f"{node.name} restart: tunnel back after {recovered:.1f}s"


def test_a_killed_and_restarted_node_is_taken_back_at_once(pair: Pair) -> None:
    """After a SIGKILL the other side still holds the dead connection. The restarted node's new one replaces
    it; it used to be refused as a duplicate path until the dead one timed out (about 3 s)."""
    for node in (pair.a, pair.b):
        assert node.proc is not None
        node.proc.kill()
        node.proc.wait()
        qe.start(node)
        recovered = _seconds_until_the_tunnel_is_back(pair)
        print(f"{node.name} killed and restarted: tunnel back after {recovered:.2f}s")
        assert recovered < 2, f"{node.name} killed and restarted: tunnel back after {recovered:.1f}s"


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_stop_leaves_no_tun_route_or_socket(pair: Pair, how: signal.Signals) -> None:
    assert pair.a.proc is not None
    pair.a.proc.send_signal(how)
    code = pair.a.proc.wait(timeout=10)
    assert code == (0 if how == signal.SIGTERM else -signal.SIGKILL)
    assert pair.a.ns.ip("link", "show", "dev", "qe0", check=False).returncode != 0
    assert "qe0" not in pair.a.ns.ip("route", "show", "table", "all").stdout
    if how == signal.SIGTERM:
        assert not (pair.a.state_dir / "api.sock").exists()
    else:  # a socket left by a killed daemon does not stop the next start
        qe.start(pair.a)
        qe.wait_connected(pair.a)


def _up(ns: Namespace, config: Path, *wrap: str) -> subprocess.CompletedProcess[str]:
    return ns.run(*wrap, sys.executable, "-m", "quicether", "up", "-c", str(config), check=False, timeout=20)


def test_port_in_use_is_one_clear_error_and_leaves_nothing(pair: Pair) -> None:
    twin = qe.make_node(pair.b.ns, "twin", "10.99.0.7/24", pair.tmp)
    twin.tun = "qe7"  # same listen port as b, which is running
    twin.write_config()
    proc = _up(pair.b.ns, twin.config_path)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("quicether: error:")]
    assert len(errors) == 1 and "0.0.0.0:4433" in errors[0] and "in use" in errors[0], proc.stderr
    assert pair.b.ns.ip("link", "show", "dev", "qe7", check=False).returncode != 0


def test_missing_dev_net_tun_is_one_clear_error(lab: Lab, tmp_path: Path) -> None:
    ns = lab.add_namespace("solo")
    node = qe.make_node(ns, "solo", "10.99.0.1/24", tmp_path)
    node.write_config()
    # A private mount namespace where /dev/net is empty, as on a kernel without TUN.
    proc = _up(ns, node.config_path, "unshare", "-m", "sh", "-c", 'mount -t tmpfs none /dev/net && exec "$0" "$@"')
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("quicether: error:") and "/dev/net/tun" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_aioquic_client_handshakes_and_exchanges_datagrams(pair: Pair) -> None:
    """aioquic is an independent QUIC stack: if it completes the handshake with a pinned key and gets an
    ICMP echo reply back in a DATAGRAM frame, our endpoint speaks standard QUIC + RFC 9221."""
    seed_file = pair.tmp / "aioquic" / "node.key"
    peer_id = generate(seed_file).node_id
    qe.stop(pair.b)
    pair.b.peers.append({"name": "aioquic", "key": peer_id, "allowed_ips": ["10.99.0.3/32"]})
    qe.start(pair.b)
    out = subprocess.run(
        pair.a.ns.argv([sys.executable, "-m", "tests.lab.aioquic_peer", "--seed-file", str(seed_file),
                        "--server", "10.1.0.2:4433", "--src", "10.99.0.3", "--dst", pair.b.overlay_ip]),
        capture_output=True, text=True, timeout=30, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert base64.b64decode(result["server_key"]) == decode_node_id(pair.b.node_id)
    # "ok" and the address the acceptor sees the aioquic client at (no NAT between them here).
    assert result["hello_answer"].startswith("ok 10.1.0.1:")
    assert result["echo_reply"] and result["reply_src"] == pair.b.overlay_ip


def test_unreachable_endpoint_is_reported_once_and_the_node_keeps_trying(lab: Lab, tmp_path: Path) -> None:
    ns_a, _ns_b = qe.two_hosts(lab)
    a = qe.make_node(ns_a, "a", "10.99.0.1/24", tmp_path)
    nobody = qe.make_node(ns_a, "nobody", "10.99.0.2/24", tmp_path)  # a key, but no node runs with it
    a.peers.append({"name": "nobody", "key": nobody.node_id, "endpoint": "10.1.0.99:4433",
                    "allowed_ips": ["10.99.0.2/32"]})
    qe.start(a)
    time.sleep(7.5)  # two handshake time-outs (3 s each) and their redials
    assert a.proc is not None and a.proc.poll() is None, "an unreachable peer is not fatal"
    reports = [line for line in qe.read_log(a).splitlines() if "cannot reach peer nobody" in line]
    assert len(reports) == 1, reports
    assert not a.status()["peers"][0]["connected"]


class CoreNode:
    """A bare `_core.Node` in a namespace (tests/lab/core_node.py), called over its stdin."""

    def __init__(self, ns: Namespace, tun: str, address: str, *options: str) -> None:
        self.proc = ns.popen([sys.executable, "-m", "tests.lab.core_node", "--tun", tun, "--address", address,
                              *options],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO_ROOT)
        assert self.proc.stdout is not None
        hello = json.loads(self.proc.stdout.readline())
        self.key = base64.b64decode(hello["key"])
        self.address = address.split("/")[0]

    def call(self, method: str, *args: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        wire = [{"b64": base64.b64encode(a).decode()} if isinstance(a, bytes) else a for a in args]
        self.proc.stdin.write(json.dumps({"call": method, "args": wire}) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer["result"]

    def peer(self, key: bytes) -> dict[str, Any] | None:
        wanted = base64.b64encode(key).decode()
        return next((p for p in self.call("peers") if p["key"] == wanted), None)

    def wait(self, condition: Callable[[], object], timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "condition not met in time"
            time.sleep(0.1)


def _core_pair(lab: Lab, *a_options: str) -> tuple[Namespace, Namespace, CoreNode, CoreNode]:
    ns_a, ns_b = qe.two_hosts(lab)
    return ns_a, ns_b, CoreNode(ns_a, "qe0", "10.99.0.1/24", *a_options), CoreNode(ns_b, "qe0", "10.99.0.2/24")


def _settled_paths(node: CoreNode, key: bytes, seconds: float = 3) -> list[dict[str, Any]]:
    """The node's paths to `key` once they stopped changing for `seconds` (duplicates closed)."""
    node.wait(lambda: (node.peer(key) or {}).get("connected"))
    last, since = None, time.monotonic()
    while time.monotonic() - since < seconds:
        now = sorted((p["local_wan"], p["peer_wan"], p["origin"], p["remote"]) for p in node.peer(key)["paths"])  # type: ignore[index]
        if now != last:
            last, since = now, time.monotonic()
        time.sleep(0.2)
    paths: list[dict[str, Any]] = node.peer(key)["paths"]  # type: ignore[index]
    return paths


def test_both_nodes_dialing_each_other_keep_one_path_the_same_on_both(lab: Lab) -> None:
    _ns_a, _ns_b, a, b = _core_pair(lab)
    # Each knows the other's endpoint, so both dial. If both dials meet, both nodes keep the one dialed by
    # the lower key; a dial that would only reach an address a path already reaches is not made. Either
    # way one connection runs over the one link, and both nodes see the same one.
    a.call("add_peer", b.key, ["10.1.0.2:4433"], ["10.99.0.2/32"], "aggregate", "redundant", [])
    b.call("add_peer", a.key, ["10.1.0.1:4433"], ["10.99.0.1/32"], "aggregate", "redundant", [])
    a_paths, b_paths = _settled_paths(a, b.key), _settled_paths(b, a.key)
    assert len(a_paths) == 1 and len(b_paths) == 1, (a_paths, b_paths)
    assert {a_paths[0]["origin"], b_paths[0]["origin"]} == {"dialed", "accepted"}, (a_paths, b_paths)
    assert a_paths[0]["kind"] == "direct" and a_paths[0]["via"] is None
    assert ping(_ns_a, b.address, count=3).received == 3


def test_a_wan_socket_accepts_and_an_address_already_reached_is_not_dialed(lab: Lab) -> None:
    ns_a, ns_b = qe.two_hosts(lab)
    # `w` has one WAN and dials `l` from it; `l` learns w's WAN socket (its address as l sees it, as a NAT's
    # mapping would be learned) and is told to dial it. A path already runs between those two sockets, so
    # that dial would only make a duplicate replacing a working path: it is not made.
    seeds = sorted((_core.generate_seed() for _ in range(2)), key=_core.public_key_of_seed)
    low = CoreNode(ns_b, "qe0", "10.99.0.2/24", "--seed-hex", seeds[0].hex())
    w = CoreNode(ns_a, "qe0", "10.99.0.1/24", "--wans", "--seed-hex", seeds[1].hex())
    assert low.key < w.key
    low.call("add_peer", w.key, [], ["10.99.0.1/32"], "aggregate", "redundant", [])
    w.call("add_peer", low.key, ["10.1.0.2:4433"], ["10.99.0.2/32"], "aggregate", "redundant", [])
    w.call("add_wan", ["w0", None, "10.1.0.1", False, 0])
    first = _settled_paths(w, low.key, seconds=1)
    assert [(p["local_wan"], p["origin"]) for p in first] == [("w0", "dialed")], first
    wan_socket = _settled_paths(low, w.key, seconds=0.5)[0]["remote"]
    assert wan_socket.startswith("10.1.0.1:") and not wan_socket.endswith(":4433")
    low.call("update_peer", w.key, [wan_socket], ["10.99.0.1/32"], "aggregate", "redundant", [])
    kept = _settled_paths(w, low.key, seconds=2)
    assert [(p["local_wan"], p["origin"], p["remote"]) for p in kept] == [
        (p["local_wan"], p["origin"], p["remote"]) for p in first], kept
    # w forgets l and takes it back with no address to dial: only l's dial to w's WAN socket, which that
    # socket accepts, connects them now.
    assert w.call("remove_peer", low.key) is True
    w.call("add_peer", low.key, [], ["10.99.0.2/32"], "aggregate", "redundant", [])
    accepted = _settled_paths(w, low.key)
    assert [(p["local_wan"], p["peer_wan"], p["origin"]) for p in accepted] == [("w0", "default", "accepted")], accepted
    assert [p["origin"] for p in _settled_paths(low, w.key)] == ["dialed"]
    assert ping(ns_a, low.address, count=3).received == 3


def test_peer_added_updated_and_removed_at_run_time(lab: Lab) -> None:
    ns_a, _ns_b, a, b = _core_pair(lab)
    # Both start with no peers. b dials a; a only listens, so after its removal b's redials reach a.
    assert a.call("peers") == [] and b.call("peers") == []
    b.call("add_peer", a.key, ["10.1.0.1:4433"], ["10.99.0.1/32"], "aggregate", "redundant", [])
    a.call("add_peer", b.key, [], ["10.99.0.2/32"], "aggregate", "redundant", [])
    with pytest.raises(RuntimeError, match="ValueError"):
        a.call("add_peer", b.key, [], ["10.99.0.2/32"], "aggregate", "redundant", [])
    with pytest.raises(RuntimeError, match="ValueError"):
        a.call("add_peer", bytes(32), [], ["10.99.0.300/32"], "aggregate", "redundant", [])
    a.wait(lambda: (a.peer(b.key) or {}).get("connected"))
    assert ping(ns_a, b.address, count=3).received == 3

    # Modes and classes change in place: the path stays, no ping is lost.
    paths_before = [p["remote"] for p in a.peer(b.key)["paths"]]  # type: ignore[index]
    a.call("update_peer", b.key, [], ["10.99.0.2/32"], "redundant", "aggregate", [(17, 53, None, "lowest-rtt")])
    assert ping(ns_a, b.address, count=5, interval=0.1).received == 5
    assert [p["remote"] for p in a.peer(b.key)["paths"]] == paths_before  # type: ignore[index]
    with pytest.raises(RuntimeError, match="KeyError"):
        a.call("update_peer", bytes(32), [], [], "aggregate", "redundant", [])

    a.call("events")  # drop what happened so far
    refused_before = a.call("refused_handshakes")
    assert a.call("remove_peer", b.key) is True
    assert a.call("remove_peer", b.key) is False
    assert a.call("peers") == []
    drops = a.call("no_route_drops")
    assert ping(ns_a, b.address, count=2, timeout_s=0.5).received == 0
    assert a.call("no_route_drops") > drops, "b's prefix is gone from a's routing"
    # b notices its path closed and redials every second: a refuses the key it no longer has.
    time.sleep(3)
    assert not (b.peer(a.key) or {}).get("connected")
    assert a.call("refused_handshakes") > refused_before
    # Reported although b's key was refused (and reported) before a added it: its removal is news.
    refused = [e for e in a.call("events") if e["kind"] == "handshake_refused"]
    assert refused and all(base64.b64decode(e["key"]) == b.key for e in refused), refused


# One thread adds and removes a peer (the core lets go of the GIL meanwhile) while another calls the node.
_GIL_AND_LOCK = """
import threading
from quicether import _core
node = _core.Node("0.0.0.0:4433", "qe0", 1500, _core.generate_seed(), [])
done = threading.Event()
def other():
    while not done.is_set():
        node.local_addr()
thread = threading.Thread(target=other)
thread.start()
key = bytes(range(32))
for _ in range(2000):
    node.add_peer(key, ["192.0.2.1:4433"], ["10.99.0.9/32"], "aggregate", "redundant", [])
    node.remove_peer(key)
done.set()
thread.join()
node.close()
print("done")
"""


def test_peers_changed_while_another_thread_calls_the_node_do_not_deadlock(lab: Lab) -> None:
    """The daemon adds peers on its event loop while worker threads call the node (a member told of by
    member news, added as the LAN finder starts): the binding must not hold the node's lock while it waits
    for the GIL. It did, and a site hung at its start."""
    ns, _ = qe.two_hosts(lab)
    try:
        done = ns.run(sys.executable, "-c", _GIL_AND_LOCK, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        raise AssertionError("deadlocked: 2000 peer changes beside a thread calling the node took over 60 s") from None
    assert done.returncode == 0 and done.stdout.strip() == "done", done.stderr


def test_events_are_typed_and_a_lost_tun_device_is_a_fatal_event(lab: Lab) -> None:
    ns_a, _ns_b, a, b = _core_pair(lab)
    b.call("add_peer", a.key, ["10.1.0.1:4433"], ["10.99.0.1/32"], "aggregate", "redundant", [])
    a.call("add_peer", b.key, [], ["10.99.0.2/32"], "aggregate", "redundant", [])
    a.wait(lambda: (a.peer(b.key) or {}).get("connected"))
    events = a.call("events")
    # (b may have dialed before a added it: a refusal first.)
    kinds = [e["kind"] for e in events if e["kind"] != "handshake_refused"]
    assert kinds == ["peer_added", "peer_connected", "path_up"], kinds
    up = next(e for e in events if e["kind"] == "path_up")
    assert (up["path_kind"], up["origin"], up["reason"], up["local_wan"], up["peer_wan"]) == (
        "direct", "accepted", "connected", "default", "default"), up
    assert up["via"] is None and up["remote"].startswith("10.1.0.2:")
    a.call("remove_peer", b.key)
    seen: list[dict[str, Any]] = []
    a.wait(lambda: seen.extend(a.call("events")) or any(
        e["kind"] == "path_down" and e["reason"] == "peer_removed" for e in seen))
    assert "peer_removed" in [e["kind"] for e in seen] and "peer_disconnected" not in [e["kind"] for e in seen]
    # The TUN device deleted under the node: reads fail, and that is an event, not a silent stop.
    assert not any(e["kind"] == "tun_failed" for e in seen)
    ns_a.ip("link", "del", "qe0")
    a.wait(lambda: any(e["kind"] == "tun_failed" and e["key"] is None for e in a.call("events")), timeout=5)


def test_remove_wan_closes_our_wans_paths_not_a_peers_path_with_the_same_label(lab: Lab) -> None:
    """Issue 18 item 5: paths are keyed by (peer, our WAN). A peer's path whose hello names its WAN "wan0"
    is not ours to close when our own WAN "wan0" goes; peer-supplied names are also made safe."""
    ns_a, ns_b = qe.two_hosts(lab)
    ns_a.ip("addr", "add", "10.1.0.11/24", "dev", "eth0")
    ns_b.ip("addr", "add", "10.1.0.12/24", "dev", "eth0")
    ours = CoreNode(ns_a, "qe0", "10.99.0.1/24", "--wans")
    theirs = CoreNode(ns_b, "qe0", "10.99.0.2/24", "--wans")
    ours.call("add_peer", theirs.key, [], ["10.99.0.2/32"], "aggregate", "redundant", [])
    theirs.call("add_peer", ours.key, ["10.1.0.1:4433"], ["10.99.0.1/32"], "aggregate", "redundant", [])
    # Their WAN is called wan0 and so is ours, on another address than the one they dial.
    theirs.call("add_wan", ["wan0", None, "10.1.0.2", False, 0])
    ours.call("add_wan", ["wan0", None, "10.1.0.11", False, 0])
    path = _settled_paths(ours, theirs.key, seconds=1)
    assert [(p["local_wan"], p["peer_wan"], p["wan"]) for p in path] == [("default", "wan0", "wan0")], path
    assert ours.call("remove_wan", "wan0") is True
    time.sleep(1)
    assert [p["peer_wan"] for p in ours.peer(theirs.key)["paths"]] == ["wan0"]  # type: ignore[index]
    assert ping(ns_a, theirs.address, count=3).received == 3
    # A WAN name that is not a safe label reaches the peer made safe.
    theirs.call("add_wan", ["evil\nquicether: WARNING", None, "10.1.0.12", False, 0])
    ours.wait(lambda: len(ours.peer(theirs.key)["paths"]) == 2)  # type: ignore[index]
    names = sorted(p["peer_wan"] for p in ours.peer(theirs.key)["paths"])  # type: ignore[index]
    assert names == ["evil_quicether__WARNING", "wan0"], names
