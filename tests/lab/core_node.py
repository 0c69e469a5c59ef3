"""Runs a bare `_core.Node` in the current namespace (started by a lab test with `ip netns exec`), driven
over stdin, so tests can call the core's API (add_peer, remove_peer …) without the daemon around it.

    python -m tests.lab.core_node --tun qe0 --address 10.99.0.1/24 [--listen 0.0.0.0:4433] [--wans] [--seed-hex H]

The node has a fresh key unless --seed-hex gives one. Prints one JSON line `{"key": <base64>, "mtu": n}`
once it runs. Then reads one JSON command per line, `{"call": "<Node method>", "args": [...]}` (bytes
arguments as {"b64": "..."}, a list of lists is a list of tuples), and answers each with one JSON line:
`{"result": ...}` or `{"error": "<exception type>: <message>"}` (bytes in results as base64).
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
from typing import Any

from quicether import _core


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        # JSON has no tuples: a list of lists is a list of tuples in the core's API (classes).
        if value and all(isinstance(v, list) for v in value):
            return [tuple(_decode(x) for x in v) for v in value]
        return [_decode(v) for v in value]
    return value


def _encode(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tun", required=True)
    parser.add_argument("--address", required=True, help="overlay address with prefix, set on the TUN")
    parser.add_argument("--listen", default="0.0.0.0:4433")
    parser.add_argument("--mtu", type=int, default=1500)
    parser.add_argument("--seed-hex", help="the node's key seed (default: a fresh one)")
    parser.add_argument("--wans", action="store_true", help="dial from WANs added later, not the listening socket")
    args = parser.parse_args()
    seed = bytes.fromhex(args.seed_hex) if args.seed_hex else _core.generate_seed()
    node = _core.Node(args.listen, args.tun, args.mtu, seed, [],
                      wans=[] if args.wans else None)
    for command in (["addr", "add", args.address, "dev", args.tun],
                    ["link", "set", "dev", args.tun, "mtu", str(node.inner_mtu()), "up"]):
        subprocess.run(["ip", *command], check=True)
    print(json.dumps({"key": _encode(node.public_key()), "mtu": node.inner_mtu()}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        try:
            call_args = _decode(request.get("args", []))
            if request["call"] == "add_wan":  # its one argument is a tuple
                call_args = [tuple(call_args[0])]
            result = getattr(node, request["call"])(*call_args)
            answer = {"result": _encode(result)}
        except Exception as exc:  # noqa: BLE001 - the test reads which one
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)
    node.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
