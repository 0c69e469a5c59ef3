"""Benchmark: QuicEther vs wireguard-go vs the raw veth, on one veth pair between two namespaces.

Rounds alternate the three paths so machine noise hits all of them alike. Each round runs iperf3 TCP with
1 and with 4 streams, iperf3 UDP at --udp-mbit, and a ping series. Prints medians (Mbit/s), each path as a
share of the raw veth, the ratio QuicEther / wireguard-go, and the RTT p50 each tunnel adds over the raw veth.

CPU per GB moved (over the TCP runs): the whole machine (/proc/stat: iperf3, the kernel and the tunnels) and
what a tunnel adds to it over the raw veth, per end (half of it); also the tunnel's own process at each end
(user + system time from /proc/PID/stat: its system calls count, the kernel's softirq work for its packets does
not). From the added time per end, an estimate of what one Raspberry Pi 4 core could move: PI4_SLOWER, the Pi
4's Cortex-A72 taken as 3.5 times slower per core than this machine's (3-4 times for this kind of work). And
QuicEther's UDP batching: datagrams per send and per receive system call at each end (its status
`udp_batching`), GSO/GRO at work.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quicether.config import MAX_IO_THREADS  # noqa: E402
from tests.lab import Lab, Namespace  # noqa: E402
from tests.lab import nodes as qe  # noqa: E402
from tests.lab.measure import iperf, ping, start_iperf_server  # noqa: E402

WG_PORT = 51820
PI4_SLOWER = 3.5
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


WG_SOCKET_DIR = Path("/var/run/wireguard")


def setup_wireguard(a: Namespace, b: Namespace, tmp: Path, tag: str) -> list[Path]:
    """Starts wireguard-go in a and b; returns the control sockets to remove afterwards (SIGKILL leaves them)."""
    keys = {}
    for name in ("a", "b"):
        private = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout.strip()
        public = subprocess.run(["wg", "pubkey"], input=private, capture_output=True, text=True, check=True).stdout
        (tmp / f"wg-{name}.key").write_text(private + "\n")
        os.chmod(tmp / f"wg-{name}.key", 0o600)
        keys[name] = public.strip()
    env = {**os.environ, "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}
    for ns, me, other, my_ip, other_ip, other_ep in (
        (a, "a", "b", "10.98.0.1", "10.98.0.2", "10.1.0.2"),
        (b, "b", "a", "10.98.0.2", "10.98.0.1", "10.1.0.1"),
    ):
        # wireguard-go's control socket lives in /var/run/wireguard/<dev>.sock, shared by all namespaces:
        # each side needs its own device name.
        dev = f"wg{tag[-6:]}{me}"
        subprocess.run(ns.argv(["wireguard-go", dev]), env=env, check=True, capture_output=True)
        ns.run("wg", "set", dev, "private-key", str(tmp / f"wg-{me}.key"), "listen-port", str(WG_PORT),
               "peer", keys[other], "allowed-ips", f"{other_ip}/32", "endpoint", f"{other_ep}:{WG_PORT}")
        ns.ip("addr", "add", f"{my_ip}/24", "dev", dev)
        ns.ip("link", "set", "dev", dev, "mtu", "1420", "up")
    return [WG_SOCKET_DIR / f"wg{tag[-6:]}{me}.sock" for me in ("a", "b")]


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of this process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14 and 15 of stat)


def machine_cpu_s() -> float:
    """CPU seconds every core spent busy (not idle or waiting) so far, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / CLOCK_TICKS


def wireguard_pids(devices: list[str]) -> list[int]:
    """wireguard-go's processes (it forks into the background), one per device."""
    found = subprocess.run(["pgrep", "-x", "wireguard-go", "-a"], capture_output=True, text=True,
                           check=False).stdout.splitlines()
    return [int(line.split()[0]) for line in found if line.split()[-1] in devices]


def batching(node: qe.NodeSpec) -> tuple[int, int, int, int]:
    b = node.status()["node"]["udp_batching"]
    return b["send_calls"], b["sent_datagrams"], b["recv_calls"], b["received_datagrams"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--seconds", type=float, default=4, help="length of each iperf3 run (default 4)")
    parser.add_argument("--udp-mbit", type=float, default=2000,
                        help="iperf3 UDP send rate, 1200-byte datagrams (default 2000)")
    parser.add_argument("--io-threads", type=int, choices=range(1, MAX_IO_THREADS + 1), metavar="N",
                        help=f"node.io_threads of both QuicEther nodes, 1 to {MAX_IO_THREADS} (default: the daemon's"
                             " default)")
    args = parser.parse_args()
    with Lab() as lab, tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        a, b = lab.add_namespace("a"), lab.add_namespace("b")
        lab.veth(a, "eth0", b, "eth0")
        a.ip("addr", "add", "10.1.0.1/24", "dev", "eth0")
        b.ip("addr", "add", "10.1.0.2/24", "dev", "eth0")
        print("starting QuicEther and wireguard-go on the same veth pair", flush=True)
        na, nb = qe.make_node(a, "a", "10.99.0.1/24", tmp), qe.make_node(b, "b", "10.99.0.2/24", tmp)
        if args.io_threads is not None:
            for node in (na, nb):
                node.node_extra["io_threads"] = args.io_threads
        qe.pair(na, nb, "10.1.0.2:4433")
        qe.start(nb)
        qe.start(na)
        qe.wait_connected(na)
        threads = na.status()["node"]["io_threads"]
        print(f"QuicEther's threads carrying packets: {threads['count']} ({threads['why']})", flush=True)
        sockets = setup_wireguard(a, b, tmp, lab.tag)
        for sock in sockets:
            lab.on_close(lambda sock=sock: sock.unlink(missing_ok=True))
        start_iperf_server(b)
        targets = {"raw veth": "10.1.0.2", "quicether": "10.99.0.2", "wireguard-go": "10.98.0.2"}
        wg_devices = [f"wg{lab.tag[-6:]}{me}" for me in ("a", "b")]
        assert na.proc is not None and nb.proc is not None
        ends: dict[str, list[int]] = {"raw veth": [], "quicether": [na.proc.pid, nb.proc.pid],
                                      "wireguard-go": wireguard_pids(wg_devices)}
        if len(ends["wireguard-go"]) != 2:
            print(f"warning: wireguard-go's processes not found ({ends['wireguard-go']}): no CPU figures for it")
        results: dict[str, dict[str, list[float]]] = {
            name: {k: [] for k in ("1", "4", "udp", "rtt", "gb", "machine_s", "end0_s", "end1_s")} for name in targets}
        batch_before = {n.name: batching(n) for n in (na, nb)}
        for r in range(args.rounds):
            for name, target in targets.items():
                pids = ends[name]
                cpu_before = [process_cpu_s(pid) for pid in pids] if len(pids) == 2 else []
                machine_before = machine_cpu_s()
                one = iperf(a, target, seconds=args.seconds).mbit_s
                four = iperf(a, target, seconds=args.seconds, streams=4).mbit_s
                res = results[name]
                res["machine_s"].append(machine_cpu_s() - machine_before)
                for i, before in enumerate(cpu_before):
                    res[f"end{i}_s"].append(process_cpu_s(pids[i]) - before)
                res["gb"].append((one + four) * args.seconds / 8 / 1000)  # GB moved by the two TCP runs
                udp = iperf(a, target, seconds=args.seconds, udp_mbit=args.udp_mbit).mbit_s
                rtts = ping(a, target, count=40, interval=0.01).rtts_ms
                res["1"].append(one)
                res["4"].append(four)
                res["udp"].append(udp)
                res["rtt"].append(statistics.median(rtts))
                print(f"round {r + 1}/{args.rounds} {name:<13} TCP 1 stream {one:6.0f}, 4 streams {four:6.0f},"
                      f" UDP {udp:6.0f} Mbit/s, rtt p50 {statistics.median(rtts):.3f} ms", flush=True)
            time.sleep(0.5)
        batch = {n.name: [x - y for x, y in zip(batching(n), batch_before[n.name], strict=True)] for n in (na, nb)}
        for node in (na, nb):
            events = [line for line in qe.read_log(node).splitlines() if "WARNING" in line]
            if events:
                print(f"{node.name} daemon warnings during the run:", *events, sep="\n  ")
        med = {n: {k: statistics.median(v) for k, v in res.items() if v} for n, res in results.items()}
        print(f"\nmedians of {args.rounds} rounds, iperf3 {args.seconds:g} s each (UDP at {args.udp_mbit:g} Mbit/s)")
        print(f"{'path':<14}{'1 stream':>12}{'4 streams':>12}{'UDP':>12}{'rtt p50':>12}{'added rtt':>12}")
        raw = med["raw veth"]
        for name, m in med.items():
            print(f"{name:<14}{m['1']:>9.0f} Mb{m['4']:>9.0f} Mb{m['udp']:>9.0f} Mb{m['rtt']:>9.3f} ms"
                  f"{m['rtt'] - raw['rtt']:>9.3f} ms")
        print("\nshare of the raw veth")
        for name in ("quicether", "wireguard-go"):
            m = med[name]
            print(f"{name:<14}1 stream {100 * m['1'] / raw['1']:5.1f} %, 4 streams {100 * m['4'] / raw['4']:5.1f} %,"
                  f" UDP {100 * m['udp'] / raw['udp']:5.1f} %")
        q, w = med["quicether"], med["wireguard-go"]
        print(f"\nratio quicether / wireguard-go: 1 stream {q['1'] / w['1']:.2f}x, 4 streams {q['4'] / w['4']:.2f}x,"
              f" UDP {q['udp'] / w['udp']:.2f}x")
        print("\nCPU seconds per GB moved (TCP runs; medians of the rounds' ratios)")
        per_gb = {name: {k: statistics.median(v / gb for v, gb in zip(res[k], res["gb"], strict=True))
                         for k in ("machine_s", "end0_s", "end1_s") if res[k]} for name, res in results.items()}
        for name, cpu in per_gb.items():
            line = f"{name:<14}machine {cpu['machine_s']:5.2f} s/GB"
            if name != "raw veth":
                # What the tunnel adds to the whole machine (both ends, kernel work for its packets included),
                # split evenly between the two ends: the basis of the estimate for a Pi core.
                per_end = (cpu["machine_s"] - per_gb["raw veth"]["machine_s"]) / 2
                line += f", added per end {per_end:5.2f}"
                if "end0_s" in cpu:
                    line += f" (its process: sender {cpu['end0_s']:5.2f}, receiver {cpu['end1_s']:5.2f})"
                line += f"; one Raspberry Pi 4 core (est.) {8 / (per_end * PI4_SLOWER):.2f} Gbit/s"
            print(line)
        print("\nquicether UDP batching over the run (datagrams per system call)")
        for node_name, (send_calls, sent, recv_calls, received) in batch.items():
            print(f"{node_name}: {sent / max(send_calls, 1):.1f} per send ({send_calls} calls),"
                  f" {received / max(recv_calls, 1):.1f} per receive ({recv_calls} calls)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
