"""A mesh network in the lab: a hub namespace routing between sites (each on its own link), a QuicEther
gateway on the hub that is the network's admin, and QuicEther sites configured with only their membership
certificate and the gateway. Shared by tests/test_mesh_membership.py and scripts/demo.

    site s0 10.1.0.1 ──────────────────────────┐
    site s1 10.2.0.1 ──────────────────────────┼── hub (10.N.0.2; the gateway, and the private DHT's nodes
    site sN 172.16.N.2 ── NAT nN (10.N.0.1) ───┘        on 10.1.0.2)

A site may sit behind a NAT of any type of the WAN lab (`topology.NatType`): a namespace between it and the
hub whose outside address is the one the hub routes to; the gateway stays public.
"""

from __future__ import annotations

import base64
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from quicether import _core, config_edit, network
from quicether.identity import decode_node_id, load
from tests.lab import nodes as qe
from tests.lab.dht import start_dht
from tests.lab.netns import Lab, Namespace
from tests.lab.topology import NatType, apply_nat

GATEWAY_ENDPOINT = "10.1.0.2:4433"
DHT_IP = "10.1.0.2"


def star(lab: Lab, sites: int, nats: list[NatType] | None = None) -> tuple[Namespace, list[Namespace]]:
    """A hub routing between `sites` hosts, each on its own link: site i at 10.(i+1).0.1, hub .2. With
    `nats`, site i behind a NAT of type nats[i] (NONE: none): the NAT namespace n<i> holds 10.(i+1).0.1
    and the site is at 172.16.(i+1).2 behind it."""
    hub = lab.add_namespace("hub", forwarding=True)
    spokes = []
    for i in range(sites):
        nat = nats[i] if nats else NatType.NONE
        ns = lab.add_namespace(f"s{i}")
        if nat is NatType.NONE:
            lab.veth(ns, "eth0", hub, f"s{i}")
            ns.ip("addr", "add", f"10.{i + 1}.0.1/24", "dev", "eth0")
            ns.ip("route", "add", "default", "via", f"10.{i + 1}.0.2")
        else:
            router = lab.add_namespace(f"n{i}", forwarding=True)
            lab.veth(router, "wire", hub, f"s{i}")
            router.ip("addr", "add", f"10.{i + 1}.0.1/24", "dev", "wire")
            router.ip("route", "add", "default", "via", f"10.{i + 1}.0.2")
            lab.veth(ns, "eth0", router, "lan")
            router.ip("addr", "add", f"172.16.{i + 1}.1/24", "dev", "lan")
            ns.ip("addr", "add", f"172.16.{i + 1}.2/24", "dev", "eth0")
            ns.ip("route", "add", "default", "via", f"172.16.{i + 1}.1")
            apply_nat(router, nat, inside_host=f"172.16.{i + 1}.2", outside_if="wire")
        hub.ip("addr", "add", f"10.{i + 1}.0.2/24", "dev", f"s{i}")
        spokes.append(ns)
    return hub, spokes


def second_wan_gateway(site: int) -> str:
    """The next hop of site `site`'s second WAN (see `add_second_wan`)."""
    return f"172.16.{101 + site}.1"


def add_second_wan(lab: Lab, hub: Namespace, site: int, nat: NatType) -> None:
    """Gives site `site` of a `star` a second WAN, eth1 at 172.16.(101+site).2, behind a NAT of type `nat`
    (namespace n<site>w1, outside 10.(101+site).0.1 on its own hub link): two ISPs, two public addresses.
    Call before the gateway starts (a new hub link changes the gateway's addresses)."""
    ns = lab[f"s{site}"]
    router = lab.add_namespace(f"n{site}w1", forwarding=True)
    lab.veth(router, "wire", hub, f"s{site}w1")
    router.ip("addr", "add", f"10.{101 + site}.0.1/24", "dev", "wire")
    router.ip("route", "add", "default", "via", f"10.{101 + site}.0.2")
    hub.ip("addr", "add", f"10.{101 + site}.0.2/24", "dev", f"s{site}w1")
    lab.veth(ns, "eth1", router, "lan")
    router.ip("addr", "add", f"{second_wan_gateway(site)}/24", "dev", "lan")
    ns.ip("addr", "add", f"172.16.{101 + site}.2/24", "dev", "eth1")
    apply_nat(router, nat, inside_host=f"172.16.{101 + site}.2", outside_if="wire")


def make_member(node: qe.NodeSpec, member: network.Member, gateway: qe.NodeSpec | None,
                bootstrap: list[str] | None = None, gateway_endpoint: str = GATEWAY_ENDPOINT) -> None:
    """Makes `node` a member by its certificate (its overlay address comes from it); it dials `gateway`
    (listed by key) if given, and uses the DHT at `bootstrap` (None: no DHT)."""
    node.address = ""
    node.sections["network"] = {"certificate": member.certificate}
    node.sections["discovery"] = {"dht": False} if bootstrap is None else {"bootstrap": bootstrap}
    if gateway is not None:
        network_key = base64.b64decode(member.certificate)[1:33]  # after the version byte (membership.rs)
        ula = _core.member_ula(network_key, decode_node_id(gateway.node_id))
        node.peers.append({"name": "gw", "key": gateway.node_id, "endpoint": gateway_endpoint,
                           "allowed_ips": ["100.64.0.1/32", f"{ula}/128"]})


@dataclass
class MeshLab:
    hub: Namespace
    gateway: qe.NodeSpec
    sites: list[qe.NodeSpec]
    net: network.Network
    dht: list[str] = field(default_factory=list)
    codes: dict[str, str] = field(default_factory=dict)  # by site name: the invite code it joined with
    started_at: float = 0.0   # time.monotonic() when the first daemon was started
    # By node name: time.monotonic() when its daemon was started (they start one after another).
    node_started_at: dict[str, float] = field(default_factory=dict)

    def address(self, node: qe.NodeSpec) -> str:
        """A member's overlay address, from the admin's ledger (as the daemon wrote it: joins add to it)."""
        ledger = network.load(self.gateway.state_dir, self.net.name)
        return next(m.ipv4 for m in ledger.members if m.node_id == node.node_id)

    def connected(self, node: qe.NodeSpec) -> int:
        return len([p for p in node.status()["peers"] if p["connected"]])

    def set_nat(self, site: int, nat: NatType) -> None:
        """Changes the type of the NAT site `site` is behind, at run time (it must be behind one): flows
        under way keep their mappings (see `apply_nat`)."""
        apply_nat(self.hub.lab[f"n{site}"], nat, inside_host=f"172.16.{site + 1}.2", outside_if="wire")


def join_by_invite(gateway: qe.NodeSpec, node: qe.NodeSpec, name: str) -> str:
    """`quicether invite` on the (running) gateway, `quicether join CODE` on `node` (which has only its
    key and a [node] section): the node's config is then what the join wrote. Returns the code."""
    code = gateway.ns.run(sys.executable, "-m", "quicether", "invite", "-c", str(gateway.config_path),
                          "--endpoint", GATEWAY_ENDPOINT).stdout.strip()
    node.write_config()
    node.ns.run(sys.executable, "-m", "quicether", "join", code, "-c", str(node.config_path), "--name", name)
    doc = config_edit.load_document(node.config_path)
    node.sections.update({k: doc[k] for k in ("network", "discovery")})
    node.peers = list(doc["peer"])
    return code


def build_mesh_lab(lab: Lab, sites: int, state: Path, *, dht_nodes: int = 16,
                   prepare: Callable[[Namespace], object] | None = None, by_invite: bool = False,
                   gateway_dht_port: int | None = None, nats: list[NatType] | None = None,
                   outsiders: int = 0, relay_rate_mbit: float | None = None,
                   prepare_hub: Callable[[Namespace], object] | None = None,
                   configure: Callable[[qe.NodeSpec], object] | None = None,
                   second_wans: dict[int, NatType] | None = None) -> MeshLab:
    """Starts the DHT, the gateway and `sites` sites (not waiting for them to connect); `prepare` is
    called with each site's namespace before any daemon starts. `by_invite`: each site starts with only
    what `quicether join` wrote from an invite code of the running gateway; else with a certificate issued
    by hand and the gateway as a peer. `gateway_dht_port`: the gateway serves the DHT on that port
    ([discovery] server = true, bootstrapping from no one) and is every site's only bootstrap node, at its
    address on the next site's link (with `dht_nodes=0`: the DHT is the gateway's alone; not with
    `by_invite`): the hub is multi-homed, and the route back to a site leaves from another of its
    addresses than the one the site asked, which a site accepts only from a gateway that answers from the
    address it was asked at (one DHT node per address). `nats`: the NAT
    each site is behind (see `star`). `outsiders`: the last that many sites are no members: each has the
    gateway as a configured peer (and the gateway it), every member site as a peer at its NAT's outer
    address, and dials through any peer as if it were a relay (QUICETHER_RELAY_TRY_ANY, a lab switch): the
    gateway must refuse to relay for it. `relay_rate_mbit`: each member's rate through the gateway (its
    `[network] relay_rate_mbit`; None: the default). `prepare_hub`: called with the hub before any daemon
    starts (more links there: a link added later changes the gateway's addresses, which restarts its DHT
    node). `configure`: called with each site's node before its daemon first starts (more config).
    `second_wans`: site i gets a second WAN behind a NAT of type second_wans[i] (`add_second_wan`), and
    both WANs as [[wan]] sections (so it dials and accepts from a socket per WAN)."""
    hub, spokes = star(lab, sites, nats)
    for i, nat in (second_wans or {}).items():
        add_second_wan(lab, hub, i, nat)
    for ns in spokes:
        if prepare is not None:
            prepare(ns)
    if prepare_hub is not None:
        prepare_hub(hub)
    dht = start_dht(lab, hub, dht_nodes, ip=DHT_IP)
    gateway = qe.make_node(hub, "gw", "", state)
    net = network.create(gateway.state_dir, "home", load(gateway.state_dir / "node.key"), admin_name="gw")
    make_member(gateway, net.members[0], None, dht[:4])
    gateway.sections["network"]["relay"] = True  # as on a gateway by role: where symmetric NATs meet
    if relay_rate_mbit is not None:
        gateway.sections["network"]["relay_rate_mbit"] = relay_rate_mbit
    bootstraps = [dht[:4]] * sites
    if gateway_dht_port is not None:
        gateway.sections["discovery"].update(server=True, port=gateway_dht_port)
        bootstraps = [[f"10.{(i + 1) % sites + 1}.0.2:{gateway_dht_port}"] for i in range(sites)]
    nodes = [qe.make_node(ns, f"s{i}", "", state) for i, ns in enumerate(spokes)]
    for i in second_wans or {}:
        first_hop = f"10.{i + 1}.0.2" if not nats or nats[i] is NatType.NONE else f"172.16.{i + 1}.1"
        nodes[i].wans = [{"name": "wan0", "device": "eth0", "gateway": first_hop},
                         {"name": "wan1", "device": "eth1", "gateway": second_wan_gateway(i)}]
    codes = {}
    if by_invite:
        qe.start(gateway)
        for node in nodes:
            codes[node.name] = join_by_invite(gateway, node, f"site-{node.name}")
    else:
        members = nodes[:len(nodes) - outsiders]
        for node, bootstrap in zip(members, bootstraps, strict=False):
            make_member(node, network.issue(net, decode_node_id(node.node_id), f"site-{node.name}"), gateway,
                        bootstrap)
        for k, node in enumerate(nodes[len(members):]):
            node.address = f"100.99.0.{k + 1}/24"
            node.env["QUICETHER_RELAY_TRY_ANY"] = "1"
            node.peers.append({"name": "gw", "key": gateway.node_id, "endpoint": GATEWAY_ENDPOINT,
                               "allowed_ips": ["100.64.0.1/32"]})
            gateway.peers.append({"name": node.name, "key": node.node_id, "allowed_ips": [f"100.99.0.{k + 1}/32"]})
            for i, member in enumerate(members):
                node.peers.append({"name": member.name, "key": member.node_id, "endpoint": f"10.{i + 1}.0.1:4433",
                                   "allowed_ips": [f"100.98.0.{i + 1}/32"]})
    if configure is not None:
        for node in nodes:
            configure(node)
    started_at = time.monotonic()
    node_started_at = {}
    for node in nodes if by_invite else (gateway, *nodes):
        node_started_at[node.name] = time.monotonic()
        qe.start(node)
    return MeshLab(hub=hub, gateway=gateway, sites=nodes, net=net, dht=dht, started_at=started_at, codes=codes,
                   node_started_at=node_started_at)
