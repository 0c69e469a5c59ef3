"""Benchmark of unauthenticated floods at the gateway's QUIC port while a bond carries traffic (the
three-WAN lab of bench-bond, plus an attacker host on the internet). Per round, in turn: no flood, then
each flood of qe-flood (core/labtools/src/flood.rs) — garbage datagrams, handshakes with fresh unknown
keys, one captured Initial replayed — during a download through the bond (iperf3, 8 flows). Prints per
mode the median goodput and its share of the no-flood goodput (the target: at least 80 %), the gateway
daemon's CPU share and peak RSS during the flood, what the flooder sent, and the gateway's counters:
handshakes refused, answered with a Retry, dropped, and the refusal lines its log gained.

With --dht, the same at a mesh gateway's DHT port (tests/lab/floods.py: the gateway serves its network's
DHT, site s0's link is 50 Mbit/s): no flood, garbage, bogus KRPC requests (dht-queries), each at --rate,
during a download to s0; besides goodput, CPU and RSS: the share of a member's DHT requests answered and
the requests the gateway refused for their source's rate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quicether.identity import decode_node_id  # noqa: E402
from tests.lab import Lab  # noqa: E402
from tests.lab import nodes as qe  # noqa: E402
from tests.lab.bond import THREE_WANS, BondLab, build_bond_lab  # noqa: E402
from tests.lab.dht import probe_dht  # noqa: E402
from tests.lab.floods import DhtFloodLab, UsageSampler, build_dht_flood_lab, finish  # noqa: E402
from tests.lab.measure import iperf, process_usage, start_iperf_server  # noqa: E402

FLOODER = Path(__file__).resolve().parents[1] / "core" / "target" / "release" / "qe-flood"
MODES = ["none", "garbage", "handshakes", "replay"]
DHT_MODES = ["none", "garbage", "dht-queries"]


def dht_round(fl: DhtFloodLab, mode: str, seconds: float, rate: int) -> dict[str, float]:
    s0, s1 = fl.mesh.sites
    refused_before = fl.dht_counters()["server_refused_source_rate"]
    flood = fl.flood(mode, seconds + 2, rate) if mode != "none" else None
    if flood is not None:
        time.sleep(1)
    probe: list[tuple[int, int]] = []
    prober = threading.Thread(target=lambda: probe.append(probe_dht(s1.ns, fl.target, int(seconds * 10), 0.1)))
    with UsageSampler(fl.gateway_pid) as usage:
        prober.start()
        result = iperf(s0.ns, fl.mesh.address(fl.mesh.gateway), seconds=seconds, streams=4, reverse=True)
        prober.join()
    if flood is not None:
        finish(flood, 60)
    sent, answered = probe[0]
    return {"mbit": result.mbit_s, "cpu": usage.cpu_share, "rss_mb": usage.peak_rss / 1e6,
            "answered": answered / sent, "refused": fl.dht_counters()["server_refused_source_rate"] - refused_before}


def bench_dht(runs: int, seconds: float, rate: int) -> None:
    results: dict[str, list[dict[str, float]]] = {m: [] for m in DHT_MODES}
    with tempfile.TemporaryDirectory(prefix="qe-bench-flood-") as tmp, Lab() as lab:
        print("==> building the mesh lab: the gateway serves the DHT, an attacker on the hub", flush=True)
        fl = build_dht_flood_lab(lab, Path(tmp))
        server = start_iperf_server(fl.mesh.hub)
        try:
            for run in range(runs):
                for mode in DHT_MODES:
                    r = dht_round(fl, mode, seconds, rate)
                    results[mode].append(r)
                    print(f"run {run + 1} {mode:<12} {r['mbit']:6.1f} Mbit/s  gateway cpu {r['cpu'] * 100:4.0f} %"
                          f"  rss {r['rss_mb']:5.1f} MB  member answered {r['answered'] * 100:3.0f} %", flush=True)
        finally:
            server.terminate()
    base = statistics.median(r["mbit"] for r in results["none"])
    print(f"\n{'DHT flood':<13}{'goodput':>9}{'kept':>7}{'gw cpu':>8}{'gw rss':>9}{'answered':>10}{'refused':>10}")
    for mode in DHT_MODES:
        rs = results[mode]
        med = {k: statistics.median(r[k] for r in rs) for k in ("mbit", "cpu", "answered", "refused")}
        print(f"{mode:<13}{med['mbit']:>6.1f} Mb{med['mbit'] / base * 100:>6.0f}%{med['cpu'] * 100:>7.0f}%"
              f"{max(r['rss_mb'] for r in rs):>7.1f}MB{med['answered'] * 100:>9.0f}%{med['refused']:>10.0f}")
    print(f"(medians of {runs} runs; answered: a member's DHT requests answered within 1 s; refused: requests"
          " refused for their source's rate)")


def counters(bond: BondLab) -> dict[str, int]:
    node = bond.gateway.status()["node"]
    return {k: int(node.get(k, 0)) for k in ("refused_handshakes", "handshakes_retried", "handshakes_dropped")}


def one_round(bond: BondLab, mode: str, seconds: float, rate: int, concurrency: int) -> dict[str, float]:
    attacker = bond.wl.host("attacker")
    target = f"{bond.wl.addr('gateway')}:{qe.QUIC_PORT}"
    pid = bond.gateway.proc.pid if bond.gateway.proc else 0
    before, log_before = counters(bond), qe.read_log(bond.gateway).count("refused handshake")
    flood = None
    if mode != "none":
        key = decode_node_id(bond.gateway.node_id).hex()
        flood = attacker.popen([str(FLOODER), "--target", target, "--mode", mode, "--seconds", str(seconds + 2),
                                "--rate", str(rate), "--concurrency", str(concurrency), "--server-key", key],
                               stdout=-1, stderr=-1)
        time.sleep(1)  # the flood is on before the transfer starts
    peak = [process_usage(pid).rss_bytes]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.25):
            peak.append(process_usage(pid).rss_bytes)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cpu0, t0 = process_usage(pid).cpu_s, time.monotonic()
    result = iperf(bond.lan, bond.dc_addr, seconds=seconds, streams=8, reverse=True)
    cpu = (process_usage(pid).cpu_s - cpu0) / (time.monotonic() - t0)
    done.set()
    sampler.join()
    sent = {"datagrams": 0, "handshakes": 0}
    if flood is not None:
        out, err = flood.communicate(timeout=60)
        if flood.returncode != 0:
            raise SystemExit(f"qe-flood {mode} failed: {err.strip()}")
        sent = json.loads(out)
    after = counters(bond)
    return {"mbit": result.mbit_s, "cpu": cpu, "rss_mb": max(peak) / 1e6, **sent,
            **{k: after[k] - before[k] for k in after},
            "log_lines": qe.read_log(bond.gateway).count("refused handshake") - log_before}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="rounds of every mode (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=6, help="transfer per measurement (default %(default)s)")
    parser.add_argument("--rate", type=int, default=20000,
                        help="garbage/replay datagrams per second (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=32,
                        help="handshakes in flight from the attacker (default %(default)s)")
    parser.add_argument("--dht", action="store_true", help="flood a mesh gateway's DHT port instead")
    args = parser.parse_args()
    if not FLOODER.exists():
        raise SystemExit(f"{FLOODER} not found: run scripts/setup (it builds core/labtools)")
    if args.dht:
        bench_dht(args.runs, args.seconds, args.rate)
        return 0
    results: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory(prefix="qe-bench-flood-") as tmp, Lab() as lab:
        print("==> building the three-WAN lab with an attacker on the internet", flush=True)
        bond = build_bond_lab(lab, THREE_WANS, Path(tmp), extra_hosts=("attacker",))
        server = start_iperf_server(bond.dc)
        try:
            for run in range(args.runs):
                for mode in MODES:
                    r = one_round(bond, mode, args.seconds, args.rate, args.concurrency)
                    results[mode].append(r)
                    print(f"run {run + 1} {mode:<10} {r['mbit']:7.1f} Mbit/s  gateway cpu {r['cpu'] * 100:4.0f} %"
                          f"  rss {r['rss_mb']:5.1f} MB", flush=True)
        finally:
            server.terminate()
    base = statistics.median(r["mbit"] for r in results["none"])
    print(f"\n{'flood':<11}{'goodput':>9}{'kept':>7}{'gw cpu':>8}{'gw rss':>8}{'sent':>10}{'handsh.':>9}"
          f"{'refused':>9}{'retried':>9}{'dropped':>9}{'log':>5}")
    for mode in MODES:
        rs = results[mode]

        def med(key: str, rs: list[dict[str, float]] = rs) -> float:
            return statistics.median(r[key] for r in rs)

        print(f"{mode:<11}{med('mbit'):>6.1f} Mb{med('mbit') / base * 100:>6.0f}%{med('cpu') * 100:>7.0f}%"
              f"{max(r['rss_mb'] for r in rs):>6.1f}MB{med('datagrams'):>10.0f}{med('handshakes'):>9.0f}"
              f"{med('refused_handshakes'):>9.0f}{med('handshakes_retried'):>9.0f}{med('handshakes_dropped'):>9.0f}"
              f"{med('log_lines'):>5.0f}")
    print(f"(medians of {args.runs} runs; 'kept': goodput as a share of the no-flood median, target >= 80 %;"
          f" rss: the peak; sent: datagrams per flood, handsh.: handshakes started)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
