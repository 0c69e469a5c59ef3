"""Benchmark of the mesh (part 1; `--nat` runs part 2, the NAT matrix: scripts/bench_mesh_nat.py): a gateway (the
network's admin) and sites configured with only their membership certificate and the gateway, on separate
links, with a private DHT of 16 plain mainline nodes (tests/lab/mesh.py). For each size (members = the gateway
and the sites) and run: the time from starting the first daemon until every member is connected to every
other, and the DHT traffic of each site (every UDP byte in and out that is not QUIC) over the first --window
seconds, per member per minute. Prints the median and worst of --runs runs per size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.lab import Lab, Namespace  # noqa: E402
from tests.lab import nodes as qe  # noqa: E402
from tests.lab.mesh import build_mesh_lab  # noqa: E402

COUNTERS = """
table ip qebench {
  chain in { type filter hook input priority 0; udp sport != 4433 udp dport != 4433 counter; }
  chain out { type filter hook output priority 0; udp sport != 4433 udp dport != 4433 counter; }
}
"""


def dht_bytes(ns: Namespace) -> int:
    """UDP bytes in and out of `ns` that are not QUIC: the DHT's (nothing else speaks UDP there)."""
    table = json.loads(ns.run("nft", "-j", "list", "table", "ip", "qebench").stdout)
    return sum(int(item["rule"]["expr"][-1]["counter"]["bytes"]) for item in table["nftables"] if "rule" in item)


def one_run(members: int, window_s: float, timeout_s: float) -> tuple[float | None, float]:
    sites = members - 1
    with Lab("qmesh") as lab, tempfile.TemporaryDirectory() as state:
        mesh = build_mesh_lab(lab, sites, Path(state), prepare=lambda ns: ns.run("nft", "-f", "-", input=COUNTERS))
        took = None
        while time.monotonic() - mesh.started_at < timeout_s:
            if all(mesh.connected(n) == sites for n in mesh.sites):
                took = time.monotonic() - mesh.started_at
                break
            time.sleep(0.25)
        time.sleep(max(0.0, mesh.started_at + window_s - time.monotonic()))
        per_minute = statistics.mean(dht_bytes(n.ns) for n in mesh.sites) * 60 / window_s
        for node in (*mesh.sites, mesh.gateway):
            qe.stop(node)
    return took, per_minute


def main() -> int:
    if sys.argv[1:2] == ["--nat"]:
        from scripts import bench_mesh_nat

        return bench_mesh_nat.main(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, action="append", help="mesh sizes (default 4 and 16)")
    parser.add_argument("--runs", type=int, default=3, help="runs per size (default 3)")
    parser.add_argument("--window", type=float, default=60, help="seconds the DHT traffic is counted (default 60)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for the full mesh (default 120)")
    args = parser.parse_args()
    sizes = args.members or [4, 16]
    if any(not 2 <= n <= 32 for n in sizes) or args.runs < 1 or args.window <= 0:
        parser.error("members from 2 to 32, runs ≥ 1, window > 0")
    print(f"{'members':>8}{'connected (median)':>20}{'worst':>10}{'DHT bytes/member/min':>24}")
    failed = False
    for members in sizes:
        results = []
        for run in range(args.runs):
            took, traffic = one_run(members, args.window, args.timeout)
            print(f"  {members} members, run {run + 1}: "
                  + (f"all connected after {took:.1f} s" if took is not None else f"not all within {args.timeout} s")
                  + f", DHT {traffic / 1000:.1f} kB per member per minute", flush=True)
            results.append((took, traffic))
        times = [t for t, _ in results if t is not None]
        failed |= len(times) < len(results)
        median = f"{statistics.median(times):.1f} s" if times else "-"
        worst = f"{max(times):.1f} s" if len(times) == len(results) else "timeout"
        traffic_kb = statistics.median(t for _, t in results) / 1000
        print(f"{members:>8}{median:>20}{worst:>10}{traffic_kb:>21.1f} kB", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
