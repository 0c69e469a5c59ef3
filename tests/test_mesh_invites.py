"""Joining a network with an invite code, in the lab: sites that start with nothing but a key and the code
`quicether invite` printed on the gateway (the network's admin) get their certificates, find each other
through a private DHT and connect; a used, expired, damaged, forged or foreign code gets a clear error and
changes nothing."""

from __future__ import annotations

import base64
import sys
import time
from pathlib import Path

from quicether import network
from quicether.daemon import api
from quicether.identity import load
from quicether.invite import NetworkInvite, decode_network
from tests.lab import Lab
from tests.lab import nodes as qe
from tests.lab.measure import ping, wait_for
from tests.lab.mesh import GATEWAY_ENDPOINT, MeshLab, build_mesh_lab


def _join(node: qe.NodeSpec, code: str, *extra: str) -> tuple[int, str]:
    done = node.ns.run(sys.executable, "-m", "quicether", "join", code, "-c", str(node.config_path), *extra,
                       check=False)
    return done.returncode, done.stdout + done.stderr


def _all_connected(mesh: MeshLab) -> bool:
    return all(mesh.connected(n) == len(mesh.sites) for n in mesh.sites)


def _found_in_dht(node: qe.NodeSpec, other: qe.NodeSpec) -> bool:
    """One side of the pair found the other's record in the DHT. The sites connect before that (told of
    each other by the gateway's member news, they reach each other through it and punch), then each looks
    every member up once: the endpoints to dial should those paths go."""
    return (f"found member site-{other.name}" in qe.read_log(node)
            or f"found member site-{node.name}" in qe.read_log(other))


def test_sites_started_with_only_an_invite_code_find_each_other_through_a_private_dht(lab: Lab,
                                                                                     tmp_path: Path) -> None:
    """The issue's first lab test: one gateway (admin) and four sites, each started with only what `quicether
    join CODE` wrote; 16 plain mainline nodes as the DHT. Every member sees every other within 30 s."""
    mesh = build_mesh_lab(lab, 4, tmp_path, by_invite=True)
    took = wait_for(lambda: _all_connected(mesh), timeout=60, step=0.5)
    assert took < 30, f"every member connected to every other only after {took:.0f} s"
    ledger = network.load(mesh.gateway.state_dir, "home")
    assert {m.name for m in ledger.active()} == {"gw"} | {f"site-{n.name}" for n in mesh.sites}
    used = network.invitations(ledger)
    assert len(used) == 4 and all(i.used_by for i in used)
    for node in mesh.sites:
        assert "node.address" not in node.config_path.read_text(), "the certificate gives the address"
        peers = {p["name"]: p for p in node.status()["peers"]}
        assert set(peers) == {"gw"} | {f"site-{n.name}" for n in mesh.sites if n is not node}, peers.keys()
        for other in mesh.sites:
            if other is not node:
                assert ping(node.ns, mesh.address(other), count=2).received == 2, (node.name, other.name)
                # The sites were told only of the gateway: one side of each pair found the other in the DHT.
                wait_for(lambda n=node, o=other: _found_in_dht(n, o), timeout=30, step=0.5)
    assert "joined network home as site-s0" in qe.read_log(mesh.gateway)
    # Status lists every member: how it was found, its DHT record, its certificate; and the DHT's counters.
    for node in mesh.sites:
        net = node.status()["node"]["network"]
        members = {m["name"]: m for m in net["members"]}
        assert set(members) == {"gw"} | {f"site-{n.name}" for n in mesh.sites if n is not node}
        assert all(m["connected"] and m["found"] in ("dht", "certificate", "config", "news") for m in members.values())
        for other in mesh.sites:
            m = members.get(f"site-{other.name}")
            if m is not None and m["found"] == "dht":
                assert m["record_seen"] is not None and m["record_seen"] > time.time() - 120
        text = node.ns.run(sys.executable, "-m", "quicether", "status", "-c", str(node.config_path)).stdout
        assert f"network: this node is member site-{node.name} {net['address']}" in text
        assert "records refused: bad signature 0" in text
        assert "dht: published 10." in text, text
    dialed = [m for n in mesh.sites for m in n.status()["node"]["network"]["members"] if m["found"] == "dht"]
    assert dialed, "at least one site dialed another it found in the DHT"


def test_invite_errors_are_clear_and_change_nothing(lab: Lab, tmp_path: Path) -> None:
    mesh = build_mesh_lab(lab, 2, tmp_path, dht_nodes=0, by_invite=True)  # no DHT: each site reaches the gateway
    wait_for(lambda: all(mesh.connected(n) >= 1 for n in mesh.sites), timeout=30, step=0.5)
    gw = mesh.gateway
    s0, s1 = mesh.sites
    # A fresh node on site 1's host (the sites' daemons keep running: the lab's namespaces are shared).
    fresh = qe.make_node(s1.ns, "fresh", "", tmp_path)
    fresh.write_config()
    before = fresh.config_path.read_bytes()

    def refused(code: str, *extra: str) -> str:
        rc, out = _join(fresh, code, *extra)
        assert rc == 1, out
        assert fresh.config_path.read_bytes() == before, "a failed join changed the config"
        return out

    # Used: site 0's code, once more (from another node).
    assert "already used" in refused(mesh.codes[s0.name])

    # Damaged: one character changed (the CRC catches it before anything is sent).
    fresh_code = gw.ns.run(sys.executable, "-m", "quicether", "invite", "-c", str(gw.config_path), "--endpoint",
                           GATEWAY_ENDPOINT).stdout.strip()
    damaged = fresh_code[:30] + ("A" if fresh_code[30] != "A" else "B") + fresh_code[31:]
    assert "damaged" in refused(damaged)

    # Expired: made (on the admin) with a date in the past; the joining node says so without asking.
    ledger = network.load(gw.state_dir, "home")
    old = network.invite(ledger, load(gw.state_dir / "node.key"), [GATEWAY_ENDPOINT], now=int(time.time()) - 90000)
    assert "expired on" in refused(old.encode())

    # Forged: a well-formed code whose secret the admin never made: refused in the handshake.
    invite = decode_network(fresh_code)
    forged = NetworkInvite(**{**invite.__dict__, "secret": base64.urlsafe_b64encode(bytes(32)).decode().rstrip("=")})
    assert "does not know it" in refused(forged.encode())

    # Foreign: site 1 is a member of "home"; a code of another network is refused on its side.
    other = network.create(fresh.state_dir, "other", load(fresh.state_dir / "node.key"), admin_name="x")
    foreign = network.invite(other, load(fresh.state_dir / "node.key"), ["10.2.0.1:4433"])
    rc, out = _join(s1, foreign.encode())
    assert rc == 1 and "member of another network" in out, out
    # The same through the daemon's API (the web UI's wizard asks it: the node key is root's).
    answer = api.request(s1.state_dir / "api.sock", "join_network", code=foreign.encode(), name="x")
    assert not answer["ok"] and "member of another network" in answer["error"], answer

    # A name another member holds: the admin refuses, the code stays usable (nothing was certified).
    assert "already has a member called 'site-s0'" in refused(fresh_code, "--name", "site-s0")

    # And the good code works for the fresh node, once.
    rc, out = _join(fresh, fresh_code, "--name", "fresh")
    assert rc == 0, out
    assert "joined network home as fresh" in out
    address = network.load(gw.state_dir, "home").find("fresh").ipv4
    assert f"({address}/16)" in out and "[network]" in fresh.config_path.read_text()
    rc, out = _join(fresh, fresh_code, "--name", "fresh")
    assert rc == 0 and "joined network home as fresh" in out, "the node that used a code may ask again"



def test_sites_find_each_other_through_a_dht_served_by_the_multihomed_gateway_alone(lab: Lab,
                                                                                   tmp_path: Path) -> None:
    """No plain DHT node anywhere: the gateway serves the DHT ([discovery] server = true on a fixed port)
    and is each site's only bootstrap node, each site knowing it by an address on another site's link (the
    hub has one per link; the route back to the site leaves from the site's own). The gateway answers on
    each address from that address (a DHT node bound to each), so the sites, told of each other only by
    the gateway's member news, publish their records there, find each other's and connect. The gateway's
    own record is stored at its own DHT server nodes."""
    port = 6881
    mesh = build_mesh_lab(lab, 3, tmp_path, dht_nodes=0, gateway_dht_port=port)
    took = wait_for(lambda: _all_connected(mesh), timeout=60, step=0.5)
    assert took < 30, f"every member connected to every other only after {took:.0f} s"
    for i, node in enumerate(mesh.sites):
        wait_for(lambda n=node: bool(n.status()["node"]["dht"]["published"]), timeout=30, step=0.5)
        dht = node.status()["node"]["dht"]
        assert dht["published"] == [f"10.{i + 1}.0.1:4433"] and dht["publish_failed"] is None, (node.name, dht)
        for other in mesh.sites:
            if other is not node:
                assert ping(node.ns, mesh.address(other), count=2).received == 2, (node.name, other.name)
                wait_for(lambda n=node, o=other: _found_in_dht(n, o), timeout=30, step=0.5)
    # Site s1 (on 10.2.0.0/24) knew the gateway only as 10.3.0.2, the address on s2's link.
    assert f"private bootstrap 10.3.0.2:{port}" in qe.read_log(mesh.sites[1])
    gateway_dht = mesh.gateway.status()["node"]["dht"]
    assert sorted(gateway_dht["serving"]) == [f"10.{i}.0.2:{port}" for i in (1, 2, 3)], gateway_dht
    wait_for(lambda: mesh.gateway.status()["node"]["dht"]["counters"]["published"] >= 1, timeout=20, step=0.5)
    assert mesh.gateway.status()["node"]["dht"]["publish_failed"] is None
