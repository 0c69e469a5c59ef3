"""QuicEther demo in the network lab: a router with two WANs of different speed and delay.

Builds the lab (LAN host → router with 2 WANs → 2 ISPs → internet with a gateway host), measures each WAN
with iperf3, and prints per-WAN and total throughput. Everything is removed on exit, even on Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.lab import Lab, LinkSpec, build_wan_lab  # noqa: E402
from tests.lab.measure import iperf, ping, start_iperf_server  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4, help="length of each iperf3 run (default 4)")
    parser.add_argument("--wan", action="append", metavar="MBIT:RTT_MS",
                        help="a WAN link as rate and added RTT; repeat (default 100:10 and 50:30)")
    args = parser.parse_args()
    specs = []
    for text in args.wan or ["100:10", "50:30"]:
        try:
            rate, rtt = (float(x) for x in text.split(":"))
        except ValueError:
            parser.error(f"--wan {text!r}: expected MBIT:RTT_MS, e.g. 100:10")
        specs.append(LinkSpec(rate_mbit=rate, delay_ms=rtt))
    print(f"building the lab: router with {len(specs)} WANs "
          + ", ".join(f"wan{i} {s.rate_mbit:g} Mbit/s {s.delay_ms:g} ms" for i, s in enumerate(specs)), flush=True)
    with Lab() as lab:
        wl = build_wan_lab(lab, specs, internet_hosts=("gateway",))
        gateway = wl.addr("gateway")
        start_iperf_server(wl.host("gateway"))
        total = 0.0
        print(f"{'link':<8}{'rate':>10}{'rtt':>10}{'iperf3':>14}")
        for wan in wl.wans:
            rtt = ping(wl.router, gateway, source=wan.router_addr, count=5).median_ms
            got = iperf(wl.router, gateway, bind=wan.router_addr, seconds=args.seconds).mbit_s
            total += got
            print(f"{wan.router_if:<8}{wan.spec.rate_mbit or 0:>7g} Mb{rtt:>8.1f}ms{got:>9.1f} Mbit/s", flush=True)
        print(f"{'total':<8}{sum(s.rate_mbit or 0 for s in specs):>7g} Mb{'':>10}{total:>9.1f} Mbit/s")
        print("(each WAN measured on its own; bonding them through QuicEther is the next step of this demo)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
