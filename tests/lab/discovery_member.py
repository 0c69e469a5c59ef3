"""Runs a `_core.Discovery` in the current namespace (a lab test starts it with `ip netns exec`), driven
over stdin, so a test can publish and look up records from inside the lab:

    python -m tests.lab.discovery_member --seed-hex S --network-key-hex N --bootstrap a:p,b:p [--port P]

Prints one JSON line {"node_key": hex, "addr": "ip:port"} once the DHT node runs, then answers each JSON
command line {"call": "publish" | "lookup" | "counters", "args": [...]} with one JSON line {"result": …}
or {"error": "<exception type>: <message>"}. Bytes travel as {"hex": "…"} both ways.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from quicether import _core


def decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"hex"}:
            return bytes.fromhex(value["hex"])
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def encode(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [encode(v) for v in value]
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed-hex", required=True)
    parser.add_argument("--network-key-hex", required=True)
    parser.add_argument("--bootstrap", required=True, help="comma-separated ip:port list")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--bind", default="127.0.0.1")
    args = parser.parse_args()
    disc = _core.Discovery(args.port, [b for b in args.bootstrap.split(",") if b], False,
                           bytes.fromhex(args.seed_hex), bytes.fromhex(args.network_key_hex), bind=args.bind)
    print(json.dumps({"node_key": disc.node_key().hex(), "addr": disc.local_addr()}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            result = getattr(disc, cmd["call"])(*decode(cmd["args"]))
            print(json.dumps({"result": encode(result)}), flush=True)
        except Exception as e:  # any error: the test reads its text
            print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
    disc.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
