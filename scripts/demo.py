"""QuicEther demo in the network lab: a LAN host behind a QuicEther router with two WANs bonding to a gateway.

    lan host ── QuicEther router ═ wan0 (100 Mbit/s, 10 ms) ═╗
                                 ═ wan1 ( 50 Mbit/s, 30 ms) ═╩═ internet ── QuicEther gateway ── dc host

Measures each WAN alone (iperf3 from the router out of that WAN), then iperf3 from the LAN host to the dc
host through the bond, and prints per-WAN and total throughput.

Then the mesh (--mesh-sites, default 3): a gateway that is admin of a network and sites joined with
only an invite code of the gateway, on separate links, each behind a NAT of its own (--mesh-nat: by
default two port-restricted ones, whose sites can only meet by a coordinated hole punch, then a
full-cone one); a private mainline DHT of 16 plain nodes. Each site learns of the others from the gateway,
reaches each at once through the gateway as relay and punches through the NATs to a direct path (the
relayed one stays as the fallback), then finds their records in the DHT; prints when each pair connected,
how (the paths' kinds, how the member was found) and the RTT between sites. Everything is removed on exit,
even on Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.lab import Lab, LinkSpec  # noqa: E402
from tests.lab import nodes as qe  # noqa: E402
from tests.lab.bond import build_bond_lab  # noqa: E402
from tests.lab.measure import iperf, ping, start_iperf_server  # noqa: E402
from tests.lab.mesh import MeshLab, build_mesh_lab  # noqa: E402
from tests.lab.topology import NatType  # noqa: E402

# How long the mesh part waits for every site to connect to every other.
MESH_TIMEOUT_S = 60


def parse_wans(values: list[str] | None, parser: argparse.ArgumentParser) -> list[LinkSpec]:
    specs = []
    for text in values or ["100:10", "50:30"]:
        try:
            rate, rtt = (float(x) for x in text.split(":"))
        except ValueError:
            parser.error(f"--wan {text!r}: expected MBIT:RTT_MS, e.g. 100:10")
        specs.append(LinkSpec(rate_mbit=rate, delay_ms=rtt))
    if len(specs) < 2:
        parser.error("bonding needs at least two --wan links")
    return specs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8, help="length of the bonded iperf3 run (default 8)")
    parser.add_argument("--streams", type=int, default=4, help="parallel TCP streams through the bond (default 4)")
    parser.add_argument("--mode", default="aggregate", choices=["aggregate", "lowest-rtt", "redundant"],
                        help="bonding mode (default aggregate)")
    parser.add_argument("--wan", action="append", metavar="MBIT:RTT_MS",
                        help="a WAN link as rate and added round-trip time; repeat (default 100:10 and 50:30)")
    parser.add_argument("--mesh-sites", type=int, default=3, metavar="N",
                        help="sites in the mesh part (default 3; 0: skip it)")
    parser.add_argument("--mesh-nat", default="port-restricted,port-restricted,full-cone", metavar="TYPES",
                        help="the NAT in front of each mesh site, in turn (none, full-cone, port-restricted, "
                             "symmetric; default %(default)s)")
    args = parser.parse_args()
    if not 0 <= args.mesh_sites <= 8:
        parser.error("--mesh-sites: from 0 to 8")
    known = {t.value: t for t in NatType}
    nat_names = [n.strip() for n in args.mesh_nat.split(",") if n.strip()]
    if not nat_names or any(n not in known for n in nat_names):
        parser.error(f"--mesh-nat: a comma-separated list of {', '.join(known)}")
    nats = [known[nat_names[i % len(nat_names)]] for i in range(args.mesh_sites)]
    specs = parse_wans(args.wan, parser)
    bond_demo(args, specs)
    return mesh_demo(nats) if nats else 0


def _kinds_between(mesh: MeshLab, node: qe.NodeSpec, other: qe.NodeSpec) -> str:
    """The kinds of the paths up from `node` to `other` (direct, punched), as `node` reports them."""
    peer = next((p for p in node.status()["peers"] if p["node_id"] == other.node_id), None)
    kinds = sorted({str(p["kind"]) for p in peer["paths"] if p["up"]}) if peer else []
    return ", ".join(kinds) or "no path"


def _may_stay_relayed(a: NatType, b: NatType) -> bool:
    """Whether two sites behind these NATs may be left relayed (the issue's NAT matrix: symmetric with
    symmetric or port-restricted)."""
    hard = {NatType.SYMMETRIC, NatType.PORT_RESTRICTED}
    return NatType.SYMMETRIC in (a, b) and {a, b} <= hard


# How a member came to be a peer (`quicether status`'s "found"), in words.
FOUND = {"news": "told of by the gateway", "dht": "found in the DHT", "certificate": "it dialed us",
         "cache": "from the peer cache", "lan": "found on the LAN"}


def mesh_demo(nats: list[NatType]) -> int:
    sites = len(nats)
    print(f"\nthe mesh: a gateway (the network's admin) and {sites} sites, each joined with only an invite code"
          " (`quicether invite` on the gateway, `quicether join CODE` on the site) and behind its own NAT ("
          + ", ".join(f"site-s{i} {nat.value}" for i, nat in enumerate(nats)) + "); a private mainline DHT of 16"
          " nodes", flush=True)
    with Lab() as lab, tempfile.TemporaryDirectory() as state:
        t0 = time.monotonic()
        mesh = build_mesh_lab(lab, sites, Path(state), by_invite=True, nats=nats)
        print(f"  {sites} sites joined and started in {time.monotonic() - t0:.1f} s; waiting for every site to reach"
              " every other ...", flush=True)
        t0, seen = time.monotonic(), {n.name: 0 for n in mesh.sites}
        while time.monotonic() - t0 < MESH_TIMEOUT_S and min(seen.values()) < sites:
            for node in mesh.sites:
                count = mesh.connected(node)
                if count != seen[node.name]:
                    seen[node.name] = count
                    print(f"  {time.monotonic() - t0:5.1f} s  site-{node.name} connected to {count} of {sites}"
                          " (the gateway and the other sites)", flush=True)
            time.sleep(0.25)
        if min(seen.values()) < sites:
            print(f"mesh: FAILED: not every site connected within {MESH_TIMEOUT_S} s: {seen}", file=sys.stderr)
            return 1
        print(f"  every site connected to every other in {time.monotonic() - t0:.1f} s (through the gateway as"
              " relay first); waiting for the punched paths ...", flush=True)

        def every_pair_direct() -> bool:
            # A symmetric NAT next to a symmetric or port-restricted one may stay relayed: not waited for.
            pairs = [(n, o) for i, n in enumerate(mesh.sites) for j, o in enumerate(mesh.sites)
                     if o is not n and not _may_stay_relayed(nats[i], nats[j])]
            return all("punched" in k or "direct" in k for k in (_kinds_between(mesh, n, o) for n, o in pairs))

        while time.monotonic() - t0 < MESH_TIMEOUT_S and not every_pair_direct():
            time.sleep(0.25)
        some_may_stay = any(_may_stay_relayed(a, b) for i, a in enumerate(nats) for b in nats[i + 1:])
        which = "every pair the NATs let through" if some_may_stay else "every pair"
        print(f"  {which} direct {time.monotonic() - t0:.1f} s after the start" if every_pair_direct() else
              "  not every pair went direct: the gateway relays for those", flush=True)
        print("\nsite to site, on the punched path where there is one (a relayed path through the gateway stays"
              " as the fallback):")
        for node in mesh.sites:
            members = {m["name"]: m for m in node.status()["node"]["network"]["members"]}
            for other in mesh.sites:
                if other is not node:
                    result = ping(node.ns, mesh.address(other), count=3)
                    how = members.get(f"site-{other.name}", {}).get("found")
                    found = FOUND.get(str(how), str(how))
                    print(f"  site-{node.name} -> site-{other.name} ({mesh.address(other)}): "
                          f"{result.received}/3 replies, {result.median_ms:.1f} ms, path "
                          f"{_kinds_between(mesh, node, other)}  ({found})", flush=True)
        for node in mesh.sites:
            print(f"  site-{node.name} hole punching: {node.status()['node'].get('punch')}")
    return 0


def bond_demo(args: argparse.Namespace, specs: list[LinkSpec]) -> None:
    print(f"building the lab: router with {len(specs)} WANs: "
          + ", ".join(f"wan{i} {s.rate_mbit:g} Mbit/s {s.delay_ms:g} ms" for i, s in enumerate(specs)), flush=True)
    with Lab() as lab, tempfile.TemporaryDirectory() as state:
        print("starting QuicEther on the router and on the gateway", flush=True)
        bond = build_bond_lab(lab, specs, Path(state), mode=args.mode)
        print(f"bond up: {len(bond.paths())} paths; LAN host {bond.lan_addr} -> dc host {bond.dc_addr}", flush=True)
        gateway_ip = bond.wl.addr("gateway")
        start_iperf_server(bond.wl.host("gateway"), port=5202)
        start_iperf_server(bond.dc)

        print("\neach WAN alone (iperf3 from the router, no tunnel):")
        alone = []
        for wan in bond.wl.wans:
            got = iperf(bond.wl.router, gateway_ip, port=5202, bind=wan.router_addr, seconds=3).mbit_s
            alone.append(got)
            print(f"  {wan.router_if}: {got:6.1f} Mbit/s", flush=True)

        print(f"\nthrough the bond ({args.mode}, {args.streams} TCP streams, {args.seconds:g} s) ...", flush=True)
        before = {p["wan"]: p["tx_bytes"] for p in bond.paths()}
        t0 = time.monotonic()
        result = iperf(bond.lan, bond.dc_addr, seconds=args.seconds, streams=args.streams)
        elapsed = time.monotonic() - t0
        rtt = ping(bond.lan, bond.dc_addr, count=10).median_ms
        print(f"\n{'link':<8}{'link rate':>12}{'alone':>12}{'in the bond':>14}{'share':>8}{'rtt':>10}")
        paths = {p["wan"]: p for p in bond.paths()}
        sent = {w: paths[w]["tx_bytes"] - before.get(w, 0) for w in paths}
        total_sent = sum(sent.values()) or 1
        for wan, alone_mbit in zip(bond.wl.wans, alone, strict=True):
            p = paths.get(wan.router_if)
            share = sent.get(wan.router_if, 0) / total_sent
            rtt_text = f"{p['rtt_ms']:.1f} ms" if p else "-"
            print(f"{wan.router_if:<8}{wan.spec.rate_mbit or 0:>7g} Mb/s{alone_mbit:>7.1f} Mb/s"
                  f"{result.mbit_s * share:>9.1f} Mb/s{share * 100:>7.0f}%{rtt_text:>10}")
        link_sum = sum(s.rate_mbit or 0 for s in specs)
        print(f"{'total':<8}{link_sum:>7g} Mb/s{sum(alone):>7.1f} Mb/s{result.mbit_s:>9.1f} Mb/s"
              f"{'':>8}{rtt:>7.1f} ms")
        print(f"\nbond goodput {result.mbit_s:.1f} Mbit/s = {100 * result.mbit_s / link_sum:.0f}% of the link sum, "
              f"{result.mbit_s / max(alone):.2f}x the best single WAN (run took {elapsed:.1f} s)")


if __name__ == "__main__":
    sys.exit(main())
