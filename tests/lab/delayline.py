"""Runs a delay line on a TUN device in the current namespace (started by the lab with `ip netns exec`).

    python -m tests.lab.delayline --tun dl --delay-us 10000 --jitter-us 1000

Prints `ready` once attached. Reads commands on stdin, one per line: `set <delay_us> <jitter_us>` changes the
delay for packets arriving from then on; `stats` prints one JSON line of counters. Exits on EOF or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

from quicether._core import DelayLine


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tun", required=True, help="existing TUN device to attach to")
    parser.add_argument("--delay-us", type=int, default=0, help="one-way delay in microseconds")
    parser.add_argument("--jitter-us", type=int, default=0, help="uniform ± spread of the delay")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    line = DelayLine(args.tun, args.delay_us, args.jitter_us)
    print("ready", flush=True)
    try:
        for command in sys.stdin:
            words = command.split()
            if words[:1] == ["set"] and len(words) == 3:
                line.set(int(words[1]), int(words[2]))
                print("ok", flush=True)
            elif words == ["stats"]:
                print(json.dumps(line.stats()), flush=True)
            elif words:
                print(f"error: unknown command {command.strip()!r}", flush=True)
    finally:
        line.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
