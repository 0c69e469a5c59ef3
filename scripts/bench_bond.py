"""Benchmark of the bond: efficiency = goodput / sum of link rates, per topology and mode, for 1 and 8 TCP
flows (iperf3 from a LAN host behind the site router to a host behind the gateway), the failover stall when
the fastest WAN is cut mid-transfer, and the latency the bond adds. Medians of --runs runs. For scale it
also measures each WAN alone through the tunnel (8 flows, the others cut) and prints the bond's 8-flow
goodput as a share of that sum: the cost of bonding itself, apart from the tunnel's per-packet overhead.
Also printed: plain TCP over one link without any tunnel and the share of a full-size tunnel packet that is
inner TCP payload (the ceilings), and redundant mode's UDP loss with 5 % loss on each of three links.
The baseline next to the bond: bare kernel MPTCP from the site router to the gateway host over every WAN (one
subflow per WAN, no tunnel), in the same lab and interleaved with the bond's runs (first mode only).
With --lane, the TCP lane (issue 16) in a lab of its own per topology, interleaved with bare MPTCP there.

Topologies: "three-wan" (100 Mbit/s 10 ms, 50 Mbit/s 30 ms, 20 Mbit/s 60 ms with 1 % loss) and
"mqvpn" (300 Mbit/s 10 ms + 80 Mbit/s 30 ms, the case mqvpn publishes 84 % for) and "2x100" (2 x 100 Mbit/s
25 ms, the case mqvpn's stream lane publishes 93 % for).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.lab import Lab, LinkSpec  # noqa: E402
from tests.lab.bond import LOSSY_WANS, THREE_WANS, BondLab, build_bond_lab  # noqa: E402
from tests.lab.measure import iperf, longest_stall_s, ping, start_iperf_server  # noqa: E402

BARE_PORT = 5202  # the bare-link iperf3 server on the gateway host, apart from the one behind it
MPTCP_PORT = 5203  # the bare-MPTCP iperf3 server on the gateway host
# iperf3 3.12 (Debian 12) has no --multipath: mptcpd's LD_PRELOAD shim makes its sockets MPTCP.
MPTCPIZE = ("mptcpize", "run")

TOPOLOGIES = {
    "three-wan": THREE_WANS,
    "mqvpn": [LinkSpec(rate_mbit=300, delay_ms=10), LinkSpec(rate_mbit=80, delay_ms=30)],
    # mqvpn's stream-lane case (93 % published): two equal 100 Mbit/s links, 25 ms each.
    "2x100": [LinkSpec(rate_mbit=100, delay_ms=25), LinkSpec(rate_mbit=100, delay_ms=25)],
}


def failover_stall_s(bond: BondLab, seconds: float = 8) -> float:
    """Cuts WAN 0 three seconds into a single-flow download; returns the longest delivery gap after it."""
    proc = bond.lan.popen(["iperf3", "-c", bond.dc_addr, "-t", str(seconds), "-i", "0.1", "-J", "-R",
                           "--connect-timeout", "3000"], stdout=-1, stderr=-1)
    time.sleep(3)
    bond.wl.set_link(0, up=False)
    out, _ = proc.communicate(timeout=seconds + 30)
    bond.wl.set_link(0, up=True)
    raw = json.loads(out)
    if "error" in raw:
        return float("inf")
    return longest_stall_s(raw["intervals"], start_s=2.5)


@contextlib.contextmanager
def only_wan(bond: BondLab, keep: int) -> Iterator[None]:
    """Cuts every WAN but `keep` for the block; afterwards restores them and waits for their paths."""
    count = len(bond.wl.wans)
    others = [i for i in range(count) if i != keep]
    for i in others:
        bond.wl.set_link(i, up=False)
    try:
        yield
    finally:
        for i in others:
            bond.wl.set_link(i, up=True)
        bond.wait_paths_up(count)


def single_wan_sum(bond: BondLab, links: list[LinkSpec], seconds: float) -> float:
    """Sum over the WANs of the tunnel's goodput (8 flows) with only that WAN up: what the bond could reach
    if bonding itself cost nothing (the tunnel's per-packet overhead and each link's TCP behaviour included)."""
    total = 0.0
    for keep in range(len(links)):
        with only_wan(bond, keep):
            time.sleep(1.0)  # the health checks mark the cut paths down
            got = iperf(bond.lan, bond.dc_addr, seconds=seconds, streams=8).mbit_s
        print(f"  wan{keep} alone through the tunnel: {got:6.1f} Mbit/s of {links[keep].rate_mbit} Mbit/s", flush=True)
        total += got
    return total


def bare_link_mbit(bond: BondLab, seconds: float) -> float:
    """TCP goodput (8 flows) from the router to the gateway host over WAN 0 without any tunnel, the others cut:
    what the link gives plain TCP (1448 payload bytes per 1514-byte frame at most), for scale."""
    server = start_iperf_server(bond.wl.host("gateway"), port=BARE_PORT)
    try:
        with only_wan(bond, 0):
            return iperf(bond.wl.router, bond.wl.addr("gateway"), seconds=seconds, streams=8, port=BARE_PORT,
                         bind=bond.wl.wans[0].router_addr).mbit_s
    finally:
        server.terminate()
        server.wait()


@contextlib.contextmanager
def bare_mptcp(bond: BondLab) -> Iterator[None]:
    """Kernel MPTCP between the site router and the gateway host, without QuicEther in the data path: one
    `subflow` endpoint per WAN address on the router (each subflow leaves by its own WAN through the
    daemon's per-WAN source rules), limits on both sides, an MPTCP iperf3 server on the gateway host."""
    count = len(bond.wl.wans)
    router, gateway = bond.wl.router, bond.wl.host("gateway")
    for ns in (router, gateway):
        ns.ip("mptcp", "limits", "set", "subflows", str(count), "add_addr_accepted", str(count))
    for wan in bond.wl.wans:
        router.ip("mptcp", "endpoint", "add", wan.router_addr, "dev", wan.router_if, "subflow")
    server = start_iperf_server(gateway, port=MPTCP_PORT, wrapper=MPTCPIZE)
    try:
        yield
    finally:
        server.terminate()
        server.wait()
        router.ip("mptcp", "endpoint", "flush")


def lane_mbit(runs: int, seconds: float, name: str, links: list[LinkSpec], congestion: str,
              ) -> tuple[dict[int, list[float]], dict[int, list[float]], list[float]]:
    """The TCP lane (tcp_lane = "auto" on both peers): iperf3 LAN host -> dc host, which the site router
    terminates and carries over MPTCP + TLS; interleaved with bare MPTCP router -> gateway host in the same
    lab over the lane's own subflow endpoints; then the lane's failover stall. Goodputs by flow count."""
    link_sum = sum(s.rate_mbit or 0 for s in links)
    lane: dict[int, list[float]] = {1: [], 8: []}
    mptcp: dict[int, list[float]] = {1: [], 8: []}
    stalls: list[float] = []
    with Lab() as lab, tempfile.TemporaryDirectory() as state:
        print(f"{name} / tcp lane: building the lab and starting QuicEther", flush=True)
        bond = build_bond_lab(lab, links, Path(state), congestion=congestion, tcp_lane=True)
        start_iperf_server(bond.dc)
        gateway = bond.wl.host("gateway")
        server = start_iperf_server(gateway, port=MPTCP_PORT, wrapper=MPTCPIZE)
        deadline = time.monotonic() + 10  # the lane's endpoints follow the paths coming up
        while len(bond.wl.router.ip("mptcp", "endpoint", "show").stdout.splitlines()) < len(links):
            if time.monotonic() > deadline:
                raise RuntimeError("the lane's MPTCP endpoints did not come up")
            time.sleep(0.1)
        try:
            for run in range(runs):
                for flows in (1, 8):
                    before = bond.site.status()["node"]["lane"]["site_connections"]
                    got = iperf(bond.lan, bond.dc_addr, seconds=seconds, streams=flows).mbit_s
                    carried = bond.site.status()["node"]["lane"]["site_connections"] - before
                    if carried < flows:  # iperf3's control connection is one more
                        raise RuntimeError(f"the lane carried {carried} of {flows} flows")
                    lane[flows].append(got)
                    print(f"  run {run + 1}: tcp lane, {flows} flow(s) {got:6.1f} Mbit/s ="
                          f" {100 * got / link_sum:4.0f}%", flush=True)
                    got, shares = bare_mptcp_mbit(bond, seconds, flows)
                    mptcp[flows].append(got)
                    print(f"  run {run + 1}: bare MPTCP, {flows} flow(s) {got:6.1f} Mbit/s ="
                          f" {100 * got / link_sum:4.0f}%; router's bytes per WAN: "
                          + ", ".join(f"wan{i} {x:.0f}%" for i, x in enumerate(shares)), flush=True)
        finally:
            server.terminate()
            server.wait()
        for run in range(runs):
            bond.wait_paths_up(len(links))
            time.sleep(1)  # the lane's endpoint for the restored WAN follows its path
            stalls.append(failover_stall_s(bond))
            print(f"  run {run + 1}: tcp lane failover stall {stalls[-1]:.2f} s", flush=True)
    return lane, mptcp, stalls


def wan_tx_bytes(bond: BondLab) -> list[int]:
    return [int(bond.wl.router.run("cat", f"/sys/class/net/{w.router_if}/statistics/tx_bytes").stdout)
            for w in bond.wl.wans]


def bare_mptcp_mbit(bond: BondLab, seconds: float, flows: int) -> tuple[float, list[float]]:
    """MPTCP goodput router -> gateway host with `flows` connections, and each WAN's share of the bytes the
    router sent meanwhile (the QUIC paths are idle but for their probes): proof that every WAN carried a
    subflow, not only the first."""
    before = wan_tx_bytes(bond)
    got = iperf(bond.wl.router, bond.wl.addr("gateway"), seconds=seconds, streams=flows, port=MPTCP_PORT,
                bind=bond.wl.wans[0].router_addr, wrapper=MPTCPIZE).mbit_s
    sent = [after - b for after, b in zip(wan_tx_bytes(bond), before, strict=True)]
    total = sum(sent) or 1
    return got, [100 * s / total for s in sent]


def tunnel_ceiling(bond: BondLab) -> float:
    """Share of a link's bytes that is inner TCP payload when every packet is full size: the TUN MTU minus
    the inner IP and TCP headers (20 + 32 with timestamps), over the outer frame (1500 + 14 bytes Ethernet,
    which the links' rate limit counts)."""
    mtu = int(bond.site.ns.run("cat", f"/sys/class/net/{bond.site.tun}/mtu").stdout)
    return (mtu - 52) / 1514


def redundant_loss_percent(runs: int, seconds: float) -> list[float]:
    """Redundant mode over three 50 Mbit/s links with 5 % loss each: UDP loss inside the tunnel per run
    (independent losses would leave 0.0125 %; the target is < 0.1 %)."""
    with Lab() as lab, tempfile.TemporaryDirectory() as state:
        bond = build_bond_lab(lab, LOSSY_WANS, Path(state), mode="redundant")
        start_iperf_server(bond.dc)
        losses = []
        for run in range(runs):
            # 1000 datagrams per second: a 0.1 % bound is a handful of packets per run.
            got = iperf(bond.lan, bond.dc_addr, seconds=max(seconds, 8), udp_mbit=8, udp_len=1000).lost_percent
            print(f"  run {run + 1}: redundant mode, 5 % loss on every link: {got:.3f}% lost", flush=True)
            losses.append(got)
    return losses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement; medians are printed (default 3)")
    parser.add_argument("--seconds", type=float, default=6, help="iperf3 run length (default 6)")
    parser.add_argument("--topology", action="append", choices=sorted(TOPOLOGIES),
                        help="topology to run; repeat (default: all)")
    parser.add_argument("--modes", default="aggregate,lowest-rtt", help="comma-separated bonding modes")
    parser.add_argument("--congestion", default="loss-tolerant", choices=["loss-tolerant", "cubic", "bbr"],
                        help="per-path congestion control of both nodes (default loss-tolerant)")
    parser.add_argument("--no-mptcp", action="store_true",
                        help="skip the bare kernel MPTCP baseline (router -> gateway host over every WAN)")
    parser.add_argument("--no-redundant", action="store_true", help="skip the redundant-mode loss measurement")
    parser.add_argument("--lane", action="store_true",
                        help="also measure the TCP lane (tcp_lane = \"auto\") in a lab of its own per topology,"
                             " interleaved with bare MPTCP over the lane's subflow endpoints, and its failover stall")
    parser.add_argument("--lane-only", action="store_true",
                        help="measure only the TCP lane and bare MPTCP beside it (implies --lane, --no-redundant)")
    args = parser.parse_args()
    if args.lane_only:
        args.lane, args.no_redundant = True, True
    rows = []
    mptcp_rows: list[tuple[str, float, float, float]] = []
    bare: list[str] = []
    lane_rows: list[tuple[str, float, dict[int, float], dict[int, float], float]] = []
    for name in args.topology or list(TOPOLOGIES):
        links = TOPOLOGIES[name]
        link_sum = sum(s.rate_mbit or 0 for s in links)
        for mode in [] if args.lane_only else args.modes.split(","):
            with Lab() as lab, tempfile.TemporaryDirectory() as state:
                print(f"{name} / {mode}: building the lab and starting QuicEther", flush=True)
                bond = build_bond_lab(lab, links, Path(state), mode=mode, congestion=args.congestion)
                start_iperf_server(bond.dc)
                idle_rtt = ping(bond.lan, bond.dc_addr, count=20, interval=0.05).median_ms
                best_rtt = min(s.delay_ms for s in links)
                ceiling = single_wan_sum(bond, links, args.seconds)
                if mode == args.modes.split(",")[0]:
                    plain = bare_link_mbit(bond, args.seconds)
                    rate = links[0].rate_mbit or 0
                    bare.append(f"{name}: plain TCP over wan0 without a tunnel {plain:.1f} of {rate} Mbit/s"
                                f" ({100 * plain / rate:.0f}%); QuicEther's full-size packets carry"
                                f" {100 * tunnel_ceiling(bond):.1f}% inner TCP payload")
                    print(f"  {bare[-1]}", flush=True)
                results: dict[int, list[float]] = {1: [], 8: []}
                mptcp: dict[int, list[float]] = {1: [], 8: []}
                with_mptcp = mode == args.modes.split(",")[0] and not args.no_mptcp
                with bare_mptcp(bond) if with_mptcp else contextlib.nullcontext():
                    for run in range(args.runs):
                        for flows in (1, 8):
                            got = iperf(bond.lan, bond.dc_addr, seconds=args.seconds, streams=flows).mbit_s
                            results[flows].append(got)
                            print(f"  run {run + 1}: {flows} flow(s) {got:6.1f} Mbit/s = {100 * got / link_sum:4.0f}%",
                                  flush=True)
                            if not with_mptcp:
                                continue
                            got, shares = bare_mptcp_mbit(bond, args.seconds, flows)
                            mptcp[flows].append(got)
                            print(f"  run {run + 1}: bare MPTCP, {flows} flow(s) {got:6.1f} Mbit/s ="
                                  f" {100 * got / link_sum:4.0f}%; router's bytes per WAN: "
                                  + ", ".join(f"wan{i} {x:.0f}%" for i, x in enumerate(shares)), flush=True)
                if with_mptcp:
                    mptcp_rows.append((name, link_sum, statistics.median(mptcp[1]), statistics.median(mptcp[8])))
                stalls = []
                for run in range(args.runs):
                    bond.wait_paths_up(len(links))  # the previous cut's WAN is back
                    stalls.append(failover_stall_s(bond))
                    print(f"  run {run + 1}: failover stall {stalls[-1]:.2f} s", flush=True)
                rows.append((name, mode, link_sum, statistics.median(results[1]), statistics.median(results[8]),
                             statistics.median(stalls), idle_rtt - best_rtt, ceiling))
        if args.lane:
            lane, mptcp_next, lane_stalls = lane_mbit(args.runs, args.seconds, name, links, args.congestion)
            lane_rows.append((name, link_sum, {f: statistics.median(v) for f, v in lane.items()},
                              {f: statistics.median(v) for f, v in mptcp_next.items()}, statistics.median(lane_stalls)))
    redundant = [] if args.no_redundant else redundant_loss_percent(args.runs, args.seconds)
    print(f"\n{'topology':<11}{'mode':<12}{'link sum':>9}{'1 flow':>16}{'8 flows':>16}{'stall':>9}{'added rtt':>11}"
          f"{'single-WAN sum':>16}{'8 flows of it':>15}")
    for name, mode, link_sum, one, eight, stall, added, ceiling in rows:
        print(f"{name:<11}{mode:<12}{link_sum:>6g} Mb{one:>8.1f} ({100 * one / link_sum:3.0f}%)"
              f"{eight:>8.1f} ({100 * eight / link_sum:3.0f}%){stall:>7.2f} s{added:>8.1f} ms"
              f"{ceiling:>11.1f} Mb{100 * eight / ceiling:>13.0f}%")
    print(f"(congestion control {args.congestion}; medians of {args.runs} runs;"
          " targets: >= 95% with 8 flows, >= 90% with 1 flow, stall < 1 s)")
    for name, link_sum, one, eight in mptcp_rows:
        print(f"{name:<11}{'bare MPTCP':<12}{link_sum:>6g} Mb{one:>8.1f} ({100 * one / link_sum:3.0f}%)"
              f"{eight:>8.1f} ({100 * eight / link_sum:3.0f}%)   (kernel MPTCP router -> gateway host, no tunnel)")
    for name, link_sum, lane_got, mptcp_got, stall in lane_rows:
        print(f"{name:<11}{'tcp lane':<12}{link_sum:>6g} Mb{lane_got[1]:>8.1f} ({100 * lane_got[1] / link_sum:3.0f}%)"
              f"{lane_got[8]:>8.1f} ({100 * lane_got[8] / link_sum:3.0f}%){stall:>7.2f} s"
              f"   (bare MPTCP in the same lab: {100 * mptcp_got[1] / link_sum:.0f}%"
              f" / {100 * mptcp_got[8] / link_sum:.0f}%;"
              " targets: >= 93%, within 3 points of bare MPTCP, stall < 1 s)")
    if redundant:
        print(f"redundant mode, three links with 5 % loss each: {statistics.median(redundant):.3f}% UDP loss in the"
              f" tunnel (runs: {', '.join(f'{x:.3f}' for x in redundant)}; target < 0.1 %)")
    if bare:
        print("ceilings, for scale:\n  " + "\n  ".join(bare))
    return 0


if __name__ == "__main__":
    sys.exit(main())
