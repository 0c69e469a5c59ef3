"""Benchmark of the mesh (part 2): the NAT matrix. Eight sites, two behind each NAT type of the lab (none,
full-cone, port-restricted, symmetric), a public gateway that relays and a private DHT of 16 plain mainline
nodes (tests/lab/mesh.py), so each of the 10 unordered pairs of NAT types is there (same-type pairs too).
Per pair of sites: the first path up of any kind (relayed included) and the first direct or punched one,
in seconds from the start of the later of the pair's two daemons (the daemons start one after another, about
half a second apart; the DHT lookups are included), and the kind it ends with. Then
iperf3 TCP between a direct pair and a relayed pair. Prints per pair type: direct / relayed / failed over
all runs, and the medians; then the issue's goals."""

from __future__ import annotations

import itertools
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.lab import Lab  # noqa: E402
from tests.lab import nodes as qe  # noqa: E402
from tests.lab.measure import iperf, start_iperf_server  # noqa: E402
from tests.lab.mesh import MeshLab, build_mesh_lab  # noqa: E402
from tests.lab.topology import NatType  # noqa: E402

NATS = [NatType.NONE, NatType.NONE, NatType.FULL_CONE, NatType.FULL_CONE,
        NatType.PORT_RESTRICTED, NatType.PORT_RESTRICTED, NatType.SYMMETRIC, NatType.SYMMETRIC]
DIRECT_KINDS = {"direct", "punched"}
# A relay's default per-member rate (50 Mbit/s) is a policy; the benchmark measures what the relay carries.
RELAY_RATE_MBIT = 2000.0


@dataclass
class PairResult:
    first_s: float | None = None
    direct_s: float | None = None

    @property
    def outcome(self) -> str:
        return "direct" if self.direct_s is not None else "relayed" if self.first_s is not None else "failed"


def pair_type(pair: tuple[int, int]) -> str:
    return "×".join(sorted((NATS[pair[0]].value, NATS[pair[1]].value)))


def up_kinds(mesh: MeshLab) -> dict[tuple[int, int], set[str]]:
    """The kinds of the paths up between each pair of sites (i < j), as either end lists them."""
    index = {site.node_id: i for i, site in enumerate(mesh.sites)}
    kinds: dict[tuple[int, int], set[str]] = {}
    for i, site in enumerate(mesh.sites):
        for peer in site.status()["peers"]:
            j = index.get(peer["node_id"])
            if j is not None and peer["connected"]:
                kinds.setdefault((min(i, j), max(i, j)), set()).update(p["kind"] for p in peer["paths"] if p["up"])
    return kinds


def throughput(mesh: MeshLab, pair: tuple[int, int], seconds: float) -> float:
    client, server = mesh.sites[pair[0]], mesh.sites[pair[1]]
    start_iperf_server(server.ns)
    return iperf(client.ns, mesh.address(server), seconds=seconds).mbit_s


def one_run(timeout_s: float, iperf_s: float) -> tuple[dict[tuple[int, int], PairResult], dict[str, float]]:
    pairs = list(itertools.combinations(range(len(NATS)), 2))
    results = {pair: PairResult() for pair in pairs}
    with Lab("qnat") as lab, tempfile.TemporaryDirectory() as state:
        mesh = build_mesh_lab(lab, len(NATS), Path(state), nats=NATS, relay_rate_mbit=RELAY_RATE_MBIT)
        # Each pair's clock starts when the later of its two daemons was started.
        both_up = {(i, j): max(mesh.node_started_at[mesh.sites[i].name], mesh.node_started_at[mesh.sites[j].name])
                   for i, j in pairs}
        while time.monotonic() - mesh.started_at < timeout_s:
            now = time.monotonic()
            for pair, kinds in up_kinds(mesh).items():
                result = results[pair]
                if kinds and result.first_s is None:
                    result.first_s = now - both_up[pair]
                if kinds & DIRECT_KINDS and result.direct_s is None:
                    result.direct_s = now - both_up[pair]
            if all(r.direct_s is not None for r in results.values()):
                break
            time.sleep(0.25)
        spread = max(mesh.node_started_at.values()) - min(mesh.node_started_at.values())
        print(f"  the {len(mesh.node_started_at)} daemons were started over {spread:.1f} s", flush=True)
        rates: dict[str, float] = {}
        direct = next((p for p in pairs if results[p].outcome == "direct"), None)
        relayed = next((p for p in pairs if results[p].outcome == "relayed"), None)
        for label, pair in (("direct", direct), ("relayed", relayed)):
            if pair is not None:
                rates[f"{label} ({pair_type(pair)})"] = throughput(mesh, pair, iperf_s)
        for node in (*mesh.sites, mesh.gateway):
            qe.stop(node)
    return results, rates


def median(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} s" if values else "-"


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="bench-mesh --nat", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs of the whole matrix (default 3)")
    parser.add_argument("--timeout", type=float, default=45,
                        help="seconds from start a pair has to connect and go direct (default 45)")
    parser.add_argument("--iperf", type=float, default=5, help="seconds of each iperf3 run (default 5)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.timeout <= 0 or args.iperf <= 0:
        parser.error("runs ≥ 1, timeout and iperf > 0")
    runs = []
    for run in range(args.runs):
        results, rates = one_run(args.timeout, args.iperf)
        counts = {o: sum(r.outcome == o for r in results.values()) for o in ("direct", "relayed", "failed")}
        print(f"run {run + 1}: {counts['direct']} pairs direct, {counts['relayed']} relayed, "
              f"{counts['failed']} failed; "
              + ", ".join(f"{k} {v:.0f} Mbit/s" for k, v in rates.items()), flush=True)
        runs.append((results, rates))
    by_type: dict[str, list[PairResult]] = {}
    for results, _ in runs:
        for pair, result in results.items():
            by_type.setdefault(pair_type(pair), []).append(result)
    print(f"\n{'pair of NATs':<34}{'direct':>7}{'relayed':>8}{'failed':>7}{'first path':>12}{'direct':>9}")
    for label in sorted(by_type):
        res = by_type[label]
        print(f"{label:<34}" + "".join(f"{sum(r.outcome == o for r in res):>{w}}"
                                       for o, w in (("direct", 7), ("relayed", 8), ("failed", 7)))
              + f"{median([r.first_s for r in res if r.first_s is not None]):>12}"
              + f"{median([r.direct_s for r in res if r.direct_s is not None]):>9}")
    everything = [r for res in by_type.values() for r in res]
    failed = sum(r.outcome == "failed" for r in everything)
    direct_types = sum(all(r.outcome == "direct" for r in res) for res in by_type.values())
    first = [r.first_s for r in everything if r.first_s is not None]
    direct = [r.direct_s for r in everything if r.direct_s is not None]
    print(f"\ngoals: no pair failed: {failed} failed · time to first path p50 {median(first)} (goal < 2 s; from the"
          f" later daemon's start, DHT lookups included) · direct in {direct_types} of {len(by_type)} pair types in"
          f" every run (goal ≥ 8) · time to direct p50 {median(direct)} (goal < 5 s)")
    for kind in sorted({k for _, rates in runs for k in rates}):
        values = [rates[kind] for _, rates in runs if kind in rates]
        print(f"iperf3 TCP {kind}: median {statistics.median(values):.0f} Mbit/s over {len(values)} run(s)")
    return 1 if failed else 0
