"""Relays run by the user (issue 14): members behind NATs that defeat hole punching (symmetric ×
symmetric, symmetric × port-restricted) connect through the network's public gateway as relay. Their QUIC
connection is end to end: the gateway forwards ciphertext tagged with keys, so a marker sent inside the
tunnel never shows in a capture of every frame on the gateway's links (a capture that does see the same
marker sent in clear, as a check of the capture itself). A node that is no member of the network cannot
use the relay, even configured as the gateway's peer and asking it. Relaying turned off at run time ends
the relayed paths, and the members stop asking.

    s0 symmetric ─┐
    s1 symmetric ─┼── hub: gateway (relay = true), DHT
    s2 port-restr ┤
    s3 outsider  ─┘ (no NAT; a configured peer of the gateway, no member)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from quicether.daemon import api
from tests.lab import Lab
from tests.lab import nodes as qe
from tests.lab.measure import iperf, ping, start_iperf_server
from tests.lab.mesh import MeshLab, build_mesh_lab
from tests.lab.topology import NatType

NATS = [NatType.SYMMETRIC, NatType.SYMMETRIC, NatType.PORT_RESTRICTED, NatType.NONE]
MEMBERS = 3
PAIRS = [(0, 1), (0, 2), (1, 2)]
MARKER = b"QE-RELAY-MARKER!"  # 16 bytes: ping's -p takes at most 16
TIMEOUT_S = 45.0
IPERF_S = 3
RELAY_RATE_MBIT = 20  # each member's rate through the gateway: low enough to see the limit bite
RELAYED_IDLE_S = 4.5  # a relayed path that hears nothing closes after the idle timeout (3 s; node.rs)
REDIAL_S = 6.0        # more than a relayed dial's retry interval (5 s; proto relay.rs)


def _pair_paths(mesh: MeshLab) -> dict[tuple[int, int], set[str]]:
    """The kinds of the paths up between each pair of member sites, as either end lists them."""
    index = {site.node_id: i for i, site in enumerate(mesh.sites[:MEMBERS])}
    kinds: dict[tuple[int, int], set[str]] = {}
    for i, site in enumerate(mesh.sites[:MEMBERS]):
        for peer in site.status()["peers"]:
            j = index.get(peer["node_id"])
            if j is not None and peer["connected"]:
                kinds.setdefault((min(i, j), max(i, j)), set()).update(p["kind"] for p in peer["paths"] if p["up"])
    return kinds


def _label(pair: tuple[int, int]) -> str:
    return "×".join(NATS[i].value for i in pair) + f" (s{pair[0]}-s{pair[1]})"


def _event_time(site: qe.NodeSpec, *parts: str) -> float | None:
    """When `site` first logged an event whose message holds every one of `parts` (Unix s)."""
    events = api.request(site.state_dir / "api.sock", "events")["events"]
    return min((e["time"] for e in events if all(p in e["message"] for p in parts)), default=None)


def _first_packet_after(mesh: MeshLab, pair: tuple[int, int]) -> float | None:
    """Seconds from the first of the pair finding the other in the DHT to the first relayed path up between
    them (at either end): how long the relay took to carry the first packet."""
    a, b = (mesh.sites[i] for i in pair)
    found = [t for x, y in ((a, b), (b, a)) if (t := _event_time(x, f"found member site-{y.name} ")) is not None]
    up = [t for x, y in ((a, b), (b, a))
          if (t := _event_time(x, f"peer site-{y.name} (", "relayed path", " up (")) is not None]
    return min(up) - min(found) if found and up else None


def _start_capture(mesh: MeshLab, out: Path) -> subprocess.Popen[str]:
    return mesh.hub.popen([sys.executable, "-m", "tests.lab.capture", "--marker", MARKER.hex(), "--out", str(out)])


def _stop_capture(proc: subprocess.Popen[str], out: Path) -> dict[str, int]:
    proc.terminate()
    proc.wait(timeout=5)
    counts: dict[str, int] = json.loads(out.read_text())
    return counts


def test_symmetric_pairs_connect_through_the_gateway_which_cannot_read_or_serve_outsiders(
        lab: Lab, tmp_path: Path) -> None:
    mesh = build_mesh_lab(lab, len(NATS), tmp_path, nats=NATS, outsiders=1, relay_rate_mbit=RELAY_RATE_MBIT)
    connected_after: dict[tuple[int, int], float] = {}
    deadline = mesh.started_at + TIMEOUT_S
    while len(connected_after) < len(PAIRS) and time.monotonic() < deadline:
        for pair, up in _pair_paths(mesh).items():
            if pair not in connected_after and up:
                connected_after[pair] = time.monotonic() - mesh.started_at
        time.sleep(0.25)
    kinds = _pair_paths(mesh)
    report = "\n".join(f"  {_label(p)}: " + (f"{connected_after[p]:.1f} s, paths {sorted(kinds.get(p, []))}"
                                             if p in connected_after else "not connected") for p in PAIRS)
    print(f"\nrelayed pairs (seconds from the first daemon's start):\n{report}")
    for site in (mesh.gateway, *mesh.sites):
        status = site.status()
        print(f"  {site.name}: relay {status['node']['relay']}, nat {status['node']['nat']},"
              f" peers {[(p['name'], p['connected'], p.get('found')) for p in status['peers']]}")
    assert len(connected_after) == len(PAIRS), f"pairs not connected:\n{report}"
    for pair in PAIRS:
        assert "relayed" in kinds[pair], f"{_label(pair)} not relayed:\n{report}"
    address = [mesh.address(site) for site in mesh.sites[:MEMBERS]]
    after_found = {pair: _first_packet_after(mesh, pair) for pair in PAIRS}
    print("  relayed path up after the DHT found the member: "
          + ", ".join(f"s{a}-s{b} " + (f"{t:.1f} s" if t is not None else "?") for (a, b), t in after_found.items()))

    # The capture sees a marker sent in clear across the gateway's links...
    clear = tmp_path / "capture-clear.json"
    proc = _start_capture(mesh, clear)
    time.sleep(0.5)
    mesh.sites[2].ns.run(sys.executable, "-m", "tests.lab.udpprobe", "send", "--to", "10.3.0.2:9",
                         "--text", MARKER.decode())
    time.sleep(0.5)
    seen_clear = _stop_capture(proc, clear)
    assert seen_clear["marked"] >= 1, f"the capture does not work: {seen_clear}"

    # ... and not the same marker sent through the relayed tunnel, which it carries.
    tunnel = tmp_path / "capture-tunnel.json"
    proc = _start_capture(mesh, tunnel)
    time.sleep(0.5)
    sent = mesh.sites[0].ns.run("ping", "-n", "-c", "10", "-i", "0.1", "-W", "2", "-s", "400", "-p", MARKER.hex(),
                                address[1], check=False)
    relay_before = mesh.gateway.status()["node"]["relay"]["forwarded_packets"]
    time.sleep(0.3)
    seen_tunnel = _stop_capture(proc, tunnel)
    print(f"  capture on the gateway's links: clear marker {seen_clear}, tunnel {seen_tunnel}")
    assert sent.stdout.count("bytes from") >= 8, sent.stdout
    assert seen_tunnel["marked"] == 0, "the relay's links carried the marker in clear"
    assert seen_tunnel["udp_bytes"] > 10 * 400, "the pings did not cross the gateway"

    for a, b in PAIRS:
        assert ping(mesh.sites[a].ns, address[b], count=3, interval=0.1, timeout_s=2).received >= 2, _label((a, b))

    # Throughput: relayed (s0 → s1 through the gateway, held to s0's rate there) against direct (s0 → the
    # gateway); meanwhile s2 pings s1 through the gateway too, within its own rate: not throttled.
    start_iperf_server(mesh.sites[1].ns)
    start_iperf_server(mesh.gateway.ns)
    dropped_before = mesh.gateway.status()["node"]["relay"]["dropped_rate"]
    other = mesh.sites[2].ns.popen(["ping", "-n", "-c", "20", "-i", "0.1", "-W", "2", address[1]],
                                   stdout=subprocess.PIPE)
    relayed = iperf(mesh.sites[0].ns, address[1], seconds=IPERF_S)
    other_out, _ = other.communicate(timeout=10)
    direct = iperf(mesh.sites[0].ns, mesh.address(mesh.gateway), seconds=IPERF_S)
    relay = mesh.gateway.status()["node"]["relay"]
    print(f"  iperf3 TCP {IPERF_S} s: relayed s0→s1 {relayed.mbit_s:.1f} Mbit/s (limit {RELAY_RATE_MBIT}), direct"
          f" s0→gw {direct.mbit_s:.0f} Mbit/s; s2→s1 pings meanwhile: {other_out.count('bytes from')}/20"
          f"\n  gateway relay counters: {relay}")
    for site in mesh.sites:
        print(f"  {site.name}: relay {site.status()['node']['relay']}")
    assert 1 < relayed.mbit_s <= RELAY_RATE_MBIT * 1.1, "the relay did not hold s0 to its rate"
    assert relay["dropped_rate"] > dropped_before
    assert other_out.count("bytes from") >= 18, f"s2 was throttled with s0:\n{other_out}"
    assert relay["forwarded_packets"] > relay_before

    # The outsider asked the gateway to relay for it, and was refused.
    outsider = mesh.sites[MEMBERS].status()
    assert outsider["node"]["relay"]["dials"] >= 1, outsider["node"]["relay"]
    assert relay["dropped_not_member"] >= 1, relay
    reached = [p["name"] for p in outsider["peers"] if p["connected"] and p["name"] != "gw"]
    assert reached == [], f"the outsider reached members: {reached}"

    # Relaying turned off on the gateway (a reload, in place): the relayed paths end, and the members,
    # told so, stop dialing through it (the outsider, which never heard an offer, goes on asking).
    mesh.gateway.sections["network"]["relay"] = False
    mesh.gateway.write_config()
    assert api.request(mesh.gateway.state_dir / "api.sock", "reload")["ok"]
    time.sleep(RELAYED_IDLE_S)
    assert _pair_paths(mesh) == {}, "relayed paths outlived the relay"
    dials = [site.status()["node"]["relay"]["dials"] for site in mesh.sites[:MEMBERS]]
    time.sleep(REDIAL_S)
    assert [site.status()["node"]["relay"]["dials"] for site in mesh.sites[:MEMBERS]] == dials, \
        "members still dial through a relay that stopped"
    assert mesh.gateway.status()["node"]["relay"]["enabled"] == 0
    for site in mesh.sites:
        qe.stop(site)
