"""Runs a delay line on a TUN device in the current namespace (started by the lab with `ip netns exec`).

    python -m tests.lab.delayline --tun dl --delay-us 10000 --jitter-us 1000

The delay line is the lab-only binary `qe-delayline` (core/labtools, built by scripts/setup; never part of the
appliance's `quicether._core`); this module only finds it and runs it in its place. `QUICETHER_DELAYLINE`
names another binary. Prints `ready` once attached. Reads commands on stdin, one per line:
`set <delay_us> <jitter_us>` changes the delay for packets arriving from then on (answer `ok`); `stats` prints
one JSON line of counters. Exits on EOF or SIGTERM.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

BINARY = Path(__file__).resolve().parents[2] / "core" / "target" / "release" / "qe-delayline"


def main() -> int:
    binary = os.environ.get("QUICETHER_DELAYLINE") or str(BINARY)
    if not os.access(binary, os.X_OK):
        print(f"error: {binary} not found: run scripts/setup (it builds core/labtools)", file=sys.stderr)
        return 1
    os.execv(binary, [binary, *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
