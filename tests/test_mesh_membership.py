"""Admission by membership certificate in the lab: a gateway that is admin of a network lets in a member
that shows a valid certificate of it, with no [[peer]] entry for it, routes the LAN prefixes the
certificate names, refuses a member of another network, and cuts a member off when it is revoked."""

from __future__ import annotations

import base64
import ipaddress
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from quicether import _core, config_edit, network
from quicether.daemon import api, names
from quicether.daemon.mesh import RECHECK_S
from quicether.identity import decode_node_id, load
from tests.lab import Lab, Namespace
from tests.lab import nodes as qe
from tests.lab.measure import ping, wait_for
from tests.lab.mesh import build_mesh_lab, make_member, star

SITE_LAN = "192.168.77.0/24"


def _hosts(lab: Lab) -> tuple[Namespace, Namespace, Namespace]:
    """gw with two links: to the site (10.1.0.0/24) and to a stranger (10.2.0.0/24)."""
    gw, site, stranger = lab.add_namespace("gw"), lab.add_namespace("site"), lab.add_namespace("stranger")
    lab.veth(site, "eth0", gw, "site")
    lab.veth(stranger, "eth0", gw, "stranger")
    site.ip("addr", "add", "10.1.0.1/24", "dev", "eth0")
    gw.ip("addr", "add", "10.1.0.2/24", "dev", "site")
    stranger.ip("addr", "add", "10.2.0.1/24", "dev", "eth0")
    gw.ip("addr", "add", "10.2.0.2/24", "dev", "stranger")
    return gw, site, stranger


def _peer(node: qe.NodeSpec, node_id: str) -> dict[str, Any] | None:
    return next((p for p in node.status()["peers"] if p["node_id"] == node_id), None)


def _routes(ns: Namespace) -> str:
    return ns.run("ip", "route", "show", "dev", "qe0").stdout


def test_a_member_is_admitted_by_its_certificate_and_cut_off_when_revoked(lab: Lab, tmp_path: Path) -> None:
    gw_ns, site_ns, stranger_ns = _hosts(lab)
    gw = qe.make_node(gw_ns, "gw", "", tmp_path)
    site = qe.make_node(site_ns, "site", "", tmp_path)
    stranger = qe.make_node(stranger_ns, "stranger", "", tmp_path)
    net = network.create(gw.state_dir, "home", load(gw.state_dir / "node.key"), admin_name="gw")
    site_cert = network.issue(net, decode_node_id(site.node_id), "site-a", lan_prefixes=[SITE_LAN])
    other = network.create(stranger.state_dir, "other", load(stranger.state_dir / "node.key"), admin_name="x")
    make_member(gw, net.members[0], None)
    make_member(site, site_cert, gw)
    make_member(stranger, other.members[0], gw, gateway_endpoint="10.2.0.2:4433")
    qe.start(gw)
    qe.start(site)
    qe.start(stranger)

    # No [[peer]] for the site on the gateway: it is let in by its certificate, both ways.
    qe.wait_connected(site)
    assert ping(site_ns, "100.64.0.1", count=3).received == 3
    assert ping(gw_ns, site_cert.ipv4, count=3).received == 3
    # The IPv6 overlay: each end's ULA (from the two keys) is on its TUN, in the network's /48.
    gw_ula, site_ula = (str(_core.read_certificate(base64.b64decode(m.certificate), net.public_key, None)["ipv6"])
                        for m in (net.members[0], site_cert))
    assert f"{site_ula}/48" in site_ns.run("ip", "-6", "addr", "show", "dev", "qe0").stdout
    assert ping(site_ns, gw_ula, count=3).received == 3
    assert ping(gw_ns, site_ula, count=3).received == 3
    admitted = _peer(gw, site.node_id)
    assert admitted is not None and admitted["found"] == "certificate" and admitted["name"] == "site-a"
    assert admitted["member"]["lan_prefixes"] == [SITE_LAN]
    assert SITE_LAN in _routes(gw_ns), "the LAN prefix the certificate names is routed to the member"
    assert gw.status()["node"]["network"]["name"] == "gw"
    assert "member site-a" in qe.read_log(gw) and "admitted by its certificate" in qe.read_log(gw)

    # A member of another network is refused in the handshake: no peer, no path.
    wait_for(lambda: gw.status()["node"]["refused_handshakes"] > 0, timeout=10)
    assert _peer(gw, stranger.node_id) is None
    assert not stranger.status()["peers"][0]["connected"]
    assert "foreign network" in qe.read_log(gw)

    # Revoked and the revocation put in the gateway's config by hand: cut off at once. (Signed on a copy of
    # the ledger, the network key kept offline: only the config carries it; `quicether network revoke` on
    # the admin node itself is the next test's.)
    offline = tmp_path / "offline"
    shutil.copytree(net.directory, offline / network.NETWORKS_DIR / net.name)
    revocation = base64.b64encode(network.revoke(network.load(offline, net.name), "site-a")).decode()
    gw.sections["network"]["revoked"] = [revocation]
    gw.write_config()
    answer = api.request(gw.state_dir / "api.sock", "reload")
    assert answer["ok"] and answer["changes"] == ["network"], answer
    wait_for(lambda: _peer(gw, site.node_id) is None, timeout=5)
    wait_for(lambda: SITE_LAN not in _routes(gw_ns), timeout=5)
    assert ping(site_ns, "100.64.0.1", count=2, timeout_s=1).received == 0
    assert "peer site-a" in qe.read_log(gw).split("cut off")[0].splitlines()[-1]
    assert _peer(gw, site.node_id) is None, "its redials are refused"


def test_a_certificate_of_another_node_is_refused_at_start(lab: Lab, tmp_path: Path) -> None:
    ns = lab.add_namespace("solo")
    node = qe.make_node(ns, "solo", "", tmp_path)
    net = network.create(tmp_path / "admin", "home", load(node.state_dir / "node.key"), admin_name="gw")
    someone = network.issue(net, b"\x07" * 32, "someone")
    make_member(node, someone, None)
    node.write_config()
    result = ns.run(sys.executable, "-m", "quicether", "up", "-c", str(node.config_path), check=False)
    assert result.returncode != 0
    assert "network.certificate: issued to node" in result.stderr + result.stdout
    assert "qe0" not in ns.run("ip", "link").stdout, "nothing left behind"


def _on_node(ns: Namespace, name: str) -> str:
    """The IPv4 addresses `<name>.home.arpa` resolves to for a program on that node (glibc, as getent).

    A name not (yet) in the hosts file goes on to DNS, to the machine's name server, which the lab's
    namespaces cannot reach: glibc then waits 10 s (two tries of 5 s), longer than the waits on a name to
    appear. The hosts file answers at once, so 1 s is plenty: a name still missing then reads as unresolved."""
    return ns.run("timeout", "1", "getent", "ahostsv4", f"{name}.home.arpa", check=False).stdout


def _known(node: qe.NodeSpec) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in node.status()["node"]["network"]["members"]}


def test_members_learn_of_each_other_and_a_revocation_spreads_to_all(lab: Lab, tmp_path: Path) -> None:
    hub, (a_ns, b_ns, c_ns) = star(lab, 3)
    gw = qe.make_node(hub, "gw", "", tmp_path)
    a, b, c = (qe.make_node(ns, name, "", tmp_path) for ns, name in ((a_ns, "a"), (b_ns, "b"), (c_ns, "c")))
    net = network.create(gw.state_dir, "home", load(gw.state_dir / "node.key"), admin_name="gw")
    make_member(gw, net.members[0], None)
    for node, name in ((a, "site-a"), (b, "site-b"), (c, "site-c")):
        make_member(node, network.issue(net, decode_node_id(node.node_id), name), gw)
    # b also dials a (a has no [[peer]] for b: it admits b by its certificate).
    b.peers.append({"name": "a", "key": a.node_id, "endpoint": "10.1.0.1:4433", "allowed_ips": ["100.64.0.2/32"]})
    # a is a router: a LAN host asks its dnsmasq for the members' names.
    lan_host = lab.add_namespace("lanhost")
    lab.veth(lan_host, "eth0", a_ns, "lan0")
    lan_host.ip("addr", "add", "192.168.61.10/24", "dev", "eth0")
    a.sections["lan"] = {"device": "lan0", "address": "192.168.61.1/24", "dhcp": False, "dns_servers": []}
    for node in (gw, a, b, c):
        qe.start(node)
    qe.wait_connected(b)
    wait_for(lambda: _peer(a, b.node_id) is not None, timeout=10)

    # c has a [[peer]] for the gateway only: a knows of it from the gateway's news, not from c (and then
    # reaches it through the gateway as relay, or c reaches a so, whichever dials first).
    wait_for(lambda: {"gw", "site-b", "site-c"} <= set(_known(a)), timeout=10)
    assert _known(a)["site-b"]["connected"]
    assert "learned of member site-c" in qe.read_log(a)

    def lookup(name: str) -> str:
        return lan_host.run("busybox", "nslookup", "-type=a", f"{name}.home.arpa", "192.168.61.1", check=False).stdout

    # Every member by name under home.arpa, a itself too, c learned only from the gateway's news.
    addresses = {m.name: m.ipv4 for m in network.load(gw.state_dir, "home").members}
    for name in ("gw", "site-a", "site-b", "site-c"):
        wait_for(lambda name=name: addresses[name] in lookup(name), timeout=5, step=0.25)
    aaaa = lan_host.run("busybox", "nslookup", "-type=aaaa", "site-c.home.arpa", "192.168.61.1").stdout
    assert _known(a)["site-c"]["ipv4"] == addresses["site-c"] and "fd" in aaaa.split("site-c.home.arpa")[-1], aaaa
    assert "100.64." not in lookup("nobody"), "an unknown name is not answered"
    # And on the nodes themselves, through their hosts file: the gateway (no dnsmasq) and the router.
    ula_c = next(p["member"]["ipv6"] for p in gw.status()["peers"] if p["name"] == "site-c")
    for ns in (hub, a_ns):
        for name in ("gw", "site-a", "site-b", "site-c"):
            wait_for(lambda ns=ns, name=name: addresses[name] in _on_node(ns, name), timeout=5, step=0.25)
        ula = ns.run("getent", "ahostsv6", "site-c.home.arpa").stdout.split()[0]
        assert ipaddress.ip_address(ula) == ipaddress.ip_address(ula_c.split("/")[0]), (ula, ula_c)
    assert not _on_node(hub, "nobody")

    # b is revoked with `quicether network revoke` on the admin node, nothing else (no config edited): the
    # running gateway cuts b off at once and tells its peers; a and c hear of it from the gateway, a cuts b
    # off too (the issue's bound: within 60 s), and keeps it across a restart.
    before = gw.config_path.read_text()
    revoked = hub.run(sys.executable, "-m", "quicether", "network", "revoke", "home", "site-b", "--state-dir",
                      str(gw.state_dir))
    revocation = revoked.stdout.strip()
    assert "the running daemon cut it off and tells every member now" in revoked.stderr, revoked.stderr
    wait_for(lambda: _peer(gw, b.node_id) is None, timeout=5)
    cut = wait_for(lambda: _peer(a, b.node_id) is None, timeout=60)
    assert cut < 10, cut
    assert "learned that member site-b was revoked" in qe.read_log(a)
    wait_for(lambda: "site-b" not in _known(c) and c.status()["node"]["network"]["revoked"] == 1, timeout=10)
    assert "learned that member site-b was revoked" in qe.read_log(c)
    assert gw.config_path.read_text() == before and gw.status()["node"]["network"]["revoked"] == 1
    assert ping(b_ns, "100.64.0.1", count=2, timeout_s=1).received == 0
    assert (a.state_dir / "revocations").read_text().strip() == revocation
    assert ping(b_ns, "100.64.0.2", count=2, timeout_s=1).received == 0
    wait_for(lambda: addresses["site-b"] not in lookup("site-b"), timeout=5, step=0.25)
    assert addresses["site-c"] in lookup("site-c"), "the revoked member's name went, the others stay"
    for ns in (hub, a_ns):
        wait_for(lambda ns=ns: not _on_node(ns, "site-b"), timeout=5, step=0.25)
        assert addresses["site-c"] in _on_node(ns, "site-c")
    system_hosts = Path("/etc/hosts").read_text()
    assert a_ns.hosts_file.read_text().startswith(system_hosts), "the system's lines are kept as they were"
    qe.stop(a)
    assert not names.directory(a.state_dir).exists(), "nothing left behind"
    assert a_ns.hosts_file.read_text() == system_hosts and not _on_node(a_ns, "site-c"), "nothing left behind"
    # A crash leaves the names until the daemon starts again, which takes them out before anything else.
    qe.start(a)
    wait_for(lambda: addresses["site-c"] in _on_node(a_ns, "site-c"), timeout=10, step=0.25)
    assert a.proc is not None
    a.proc.kill()
    a.proc.wait()
    assert addresses["site-c"] in _on_node(a_ns, "site-c"), "a SIGKILL leaves the block (nothing can remove it)"
    qe.start(a)
    wait_for(lambda: addresses["site-c"] in _on_node(a_ns, "site-c"), timeout=10, step=0.25)
    assert a_ns.hosts_file.read_text().count("# quicether ") == 2, "one block (begin and end), not two"
    assert not _on_node(a_ns, "site-b")
    wait_for(lambda: a.status()["node"]["refused_handshakes"] > 0, timeout=10)
    assert _peer(a, b.node_id) is None, "the learned revocation still holds after a restart"
    assert a.status()["node"]["network"]["revoked"] == 1


def test_after_a_restart_members_reconnect_from_their_peer_cache_without_dht_or_gateway(lab: Lab,
                                                                                        tmp_path: Path) -> None:
    mesh = build_mesh_lab(lab, 3, tmp_path)
    sites = mesh.sites
    wait_for(lambda: all(mesh.connected(n) == len(sites) for n in sites), timeout=60, step=0.5)

    def cached(node: qe.NodeSpec) -> int:
        path = node.state_dir / "peers.json"
        return len(json.loads(path.read_text())) if path.exists() else 0

    # Connected first through the gateway as relay, whose made-up addresses are not kept: each site caches
    # the others once it has a direct (punched) path to them or found their records.
    wait_for(lambda: all(cached(n) >= len(sites) - 1 for n in sites), timeout=30, step=0.5)
    for node in (*sites, mesh.gateway):
        qe.stop(node)
    # The DHT and the gateway are gone for good: only what each site kept can bring the mesh back.
    mesh.hub.run("nft", "-f", "-", input="table ip cut {\n chain input {\n type filter hook input priority 0;\n"
                                          " udp dport 7000-7015 drop\n }\n}\n")
    for node in sites:
        assert len(json.loads((node.state_dir / "peers.json").read_text())) >= len(sites) - 1
        qe.start(node)
    took = wait_for(lambda: all(mesh.connected(n) == len(sites) - 1 for n in sites), timeout=30, step=0.25)
    assert took < 10, f"reconnected from the caches only after {took:.1f} s"
    assert all("peer cache: dialing" in qe.read_log(n) for n in sites)
    for node in sites:
        for other in sites:
            if other is not node:
                # Restarted together, two sites dial each other at once and one of the two paths is closed as
                # a duplicate. What was sent on it is sent again on its twin, but a site whose only path was
                # the one closed has none until the twin's handshake ends there, and drops what it sends
                # meanwhile. The pair has settled once one ping passes; then both of two must.
                wait_for(lambda n=node, o=other: ping(n.ns, mesh.address(o), count=1).received == 1, timeout=5)
                assert ping(node.ns, mesh.address(other), count=2).received == 2


def test_with_the_gateway_stopped_a_site_on_a_new_wan_address_is_found_again_through_the_dht(
        lab: Lab, tmp_path: Path) -> None:
    """Discovery works with no node of ours in the middle: the gateway is gone when site s0 gets a new
    address from its ISP; s0 publishes a new record and the other sites find it there and reconnect."""
    mesh = build_mesh_lab(lab, 3, tmp_path, by_invite=True)
    sites = mesh.sites
    wait_for(lambda: all(mesh.connected(n) == len(sites) for n in sites), timeout=60, step=0.5)
    qe.stop(mesh.gateway)
    moved, others = sites[0], sites[1:]
    # A new address in the same ISP subnet; the old one is gone (packets to it go nowhere).
    moved.ns.ip("addr", "flush", "dev", "eth0")
    moved.ns.ip("addr", "add", "10.1.0.9/24", "dev", "eth0")
    moved.ns.ip("route", "add", "default", "via", "10.1.0.2")
    target = mesh.address(moved)

    def reconnected() -> bool:
        for node in others:
            peer = next((p for p in node.status()["peers"] if p["name"] == f"site-{moved.name}"), None)
            if peer is None or not any(path["up"] and path["remote"].startswith("10.1.0.9:") for path in peer["paths"]):
                return False
        return True

    took = wait_for(reconnected, timeout=90, step=0.5)
    assert took < 60, f"the other sites reached the moved site only after {took:.0f} s"
    # Its new address is in the DHT too (a put right after the change may fail once; it is retried).
    wait_for(lambda: "published our record (10.1.0.9:4433" in qe.read_log(moved), timeout=40, step=0.5)
    for node in others:
        assert ping(node.ns, target, count=2).received == 2, node.name


def test_certificates_due_are_renewed_by_the_admin_and_a_member_stays_past_its_old_expiry(
        lab: Lab, tmp_path: Path) -> None:
    """The admin node renews the certificates that are due and tells them as member news; each member
    takes its own (config file, handshakes) with no restart, and the admin keeps a member admitted by its
    old certificate after that one expired."""
    hub, (site_ns,) = star(lab, 1)
    gw = qe.make_node(hub, "gw", "", tmp_path)
    site = qe.make_node(site_ns, "site", "", tmp_path)
    net = network.create(gw.state_dir, "home", load(gw.state_dir / "node.key"), admin_name="gw")
    # A day's validity each, both due: the gateway's has an hour left, the site's expired so long ago that
    # it is honoured (clock tolerance) for only 45 s more.
    now = int(time.time())
    gw_cert = network.issue(net, decode_node_id(gw.node_id), "gw", days=1, now=now - 86400 + 3600)
    old = network.issue(net, decode_node_id(site.node_id), "site-a", days=1,
                        now=now - 86400 - network.CLOCK_TOLERANCE_S + 45)
    honoured_until = old.not_after + network.CLOCK_TOLERANCE_S
    make_member(gw, gw_cert, None)
    make_member(site, old, gw)
    qe.start(gw)
    qe.start(site)
    qe.wait_connected(site)

    def renewed(node: qe.NodeSpec) -> bool:
        return int(node.status()["node"]["network"]["not_after"]) >= now + 86400

    wait_for(lambda: renewed(site) and renewed(gw), timeout=30, step=0.5)
    assert "this node's certificate was renewed" in qe.read_log(site)
    for node, cert in ((site, old), (gw, gw_cert)):
        on_disk = config_edit.load_document(node.config_path)["network"]["certificate"]
        assert on_disk != cert.certificate, f"{node.name}: the renewal is in its config file"
        node.sections["network"]["certificate"] = on_disk  # what a restart below reads
    ledger = {m.name: m for m in network.load(gw.state_dir, "home").members}
    assert ledger["site-a"].not_after >= now + 86400 and ledger["site-a"].ipv4 == old.ipv4
    wait_for(lambda: _known(gw)["site-a"]["not_after"] >= now + 86400, timeout=10)

    # Past the old certificate's end and the admin's next recheck: the member is still in, on the same path.
    time.sleep(max(0.0, honoured_until - time.time()) + RECHECK_S + 3)
    admitted = _peer(gw, site.node_id)
    assert admitted is not None and admitted["connected"], "kept by its renewed certificate"
    assert "cut off" not in qe.read_log(gw)
    assert ping(site_ns, "100.64.0.1", count=2).received == 2
    assert "restarting" not in qe.read_log(site) + qe.read_log(gw), "renewed without a restart"

    # A new handshake shows the renewed certificate: the gateway restarted from its (renewed) config admits
    # the site again (its old certificate would be refused as expired).
    qe.stop(gw)
    qe.start(gw)
    wait_for(lambda: (p := _peer(gw, site.node_id)) is not None and p["connected"], timeout=15, step=0.25)
    assert "expired" not in qe.read_log(gw).rpartition("listening on")[2]
