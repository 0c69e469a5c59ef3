"""Runs a `_core.Discovery` in the current namespace (a lab test starts it with `ip netns exec`), driven
over stdin, so a test can publish and look up records from inside the lab:

    python -m tests.lab.discovery_member --seed-hex S --network-key-hex N --bootstrap a:p,b:p [--port P]
    python -m tests.lab.discovery_member --seed-hex S --network-key-hex N --lan IP --port P --interface IF

Prints one JSON line {"node_key": hex, "addr": "ip:port"} once the DHT node (or with --lan, the mDNS
announcement: `_core.LanDiscovery`) runs, then answers each JSON command line {"call": "<method>",
"args": [...]} with one JSON line {"result": …} or {"error": "<exception type>: <message>"}. Bytes travel
as {"hex": "…"} both ways.
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
    parser.add_argument("--bootstrap", default="", help="comma-separated ip:port list")
    parser.add_argument("--lan", help="announce on the LAN with mDNS from this address instead of the DHT")
    parser.add_argument("--interface", help="with --lan: the LAN interface")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--bind", default="127.0.0.1")
    args = parser.parse_args()
    seed, network_key = bytes.fromhex(args.seed_hex), bytes.fromhex(args.network_key_hex)
    disc: _core.Discovery | _core.LanDiscovery
    if args.lan:
        disc = _core.LanDiscovery(network_key, _core.public_key_of_seed(seed), args.port, [args.lan],
                                  [args.interface] if args.interface else None)
        hello = {"node_key": _core.public_key_of_seed(seed).hex(), "addr": f"{args.lan}:{args.port}"}
    else:
        disc = _core.Discovery(args.port, [b for b in args.bootstrap.split(",") if b], False, seed, network_key,
                               bind=args.bind)
        hello = {"node_key": disc.node_key().hex(), "addr": disc.local_addr()}
    print(json.dumps(hello), flush=True)
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
