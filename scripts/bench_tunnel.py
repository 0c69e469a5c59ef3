"""Benchmark: QuicEther vs wireguard-go vs the raw veth, on one veth pair between two namespaces.

Rounds alternate the three paths so machine noise hits all of them alike. Each round runs iperf3 TCP with
1 and with 4 streams and a ping series. Prints medians (Mbit/s), the ratio QuicEther / wireguard-go, and the
RTT p50 each tunnel adds over the raw veth.
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

from tests.lab import Lab, Namespace  # noqa: E402
from tests.lab import nodes as qe  # noqa: E402
from tests.lab.measure import iperf, ping, start_iperf_server  # noqa: E402

WG_PORT = 51820


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--seconds", type=float, default=4, help="length of each iperf3 run (default 4)")
    args = parser.parse_args()
    with Lab() as lab, tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        a, b = lab.add_namespace("a"), lab.add_namespace("b")
        lab.veth(a, "eth0", b, "eth0")
        a.ip("addr", "add", "10.1.0.1/24", "dev", "eth0")
        b.ip("addr", "add", "10.1.0.2/24", "dev", "eth0")
        print("starting QuicEther and wireguard-go on the same veth pair", flush=True)
        na, nb = qe.make_node(a, "a", "10.99.0.1/24", tmp), qe.make_node(b, "b", "10.99.0.2/24", tmp)
        qe.pair(na, nb, "10.1.0.2:4433")
        qe.start(nb)
        qe.start(na)
        qe.wait_connected(na)
        sockets = setup_wireguard(a, b, tmp, lab.tag)
        for sock in sockets:
            lab.on_close(lambda sock=sock: sock.unlink(missing_ok=True))
        start_iperf_server(b)
        targets = {"raw veth": "10.1.0.2", "quicether": "10.99.0.2", "wireguard-go": "10.98.0.2"}
        results: dict[str, dict[str, list[float]]] = {name: {"1": [], "4": [], "rtt": []} for name in targets}
        for r in range(args.rounds):
            for name, target in targets.items():
                one = iperf(a, target, seconds=args.seconds).mbit_s
                four = iperf(a, target, seconds=args.seconds, streams=4).mbit_s
                rtts = ping(a, target, count=40, interval=0.01).rtts_ms
                results[name]["1"].append(one)
                results[name]["4"].append(four)
                results[name]["rtt"].append(statistics.median(rtts))
                print(f"round {r + 1}/{args.rounds} {name:<13} 1 stream {one:8.0f}  4 streams {four:8.0f} Mbit/s"
                      f"  rtt p50 {statistics.median(rtts):.3f} ms", flush=True)
            time.sleep(0.5)
        for node in (na, nb):
            events = [line for line in qe.read_log(node).splitlines() if "WARNING" in line]
            if events:
                print(f"{node.name} daemon warnings during the run:", *events, sep="\n  ")
        med = {n: {k: statistics.median(v) for k, v in res.items()} for n, res in results.items()}
        print(f"\nmedians of {args.rounds} rounds, iperf3 TCP {args.seconds:g}s each")
        print(f"{'path':<14}{'1 stream':>12}{'4 streams':>12}{'rtt p50':>12}{'added rtt':>12}")
        raw_rtt = med["raw veth"]["rtt"]
        for name, m in med.items():
            print(f"{name:<14}{m['1']:>9.0f} Mb{m['4']:>9.0f} Mb{m['rtt']:>9.3f} ms{m['rtt'] - raw_rtt:>9.3f} ms")
        q, w = med["quicether"], med["wireguard-go"]
        print(f"\nratio quicether / wireguard-go: 1 stream {q['1'] / w['1']:.2f}x, 4 streams {q['4'] / w['4']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
