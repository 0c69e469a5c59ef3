"""UDP helpers for NAT tests, run inside lab namespaces with `ip netns exec`.

    python -m tests.lab.udpprobe serve --port 4000
        answer each datagram with the source address and port it came from ("ip:port")
    python -m tests.lab.udpprobe probe --sport 5000 --to 198.18.0.2:4000 --to 198.18.0.3:4000 [--listen 2]
        send from one local port to each server, print one JSON object: the mappings the servers observed,
        and (with --listen) any unsolicited datagrams that reached the local port afterwards
    python -m tests.lab.udpprobe send --to 10.40.0.1:5000 --text hello
        send one datagram
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time

ANSWER_TIMEOUT_S = 2.0


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def serve(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    print("ready", flush=True)
    while True:
        _data, (host, sport) = sock.recvfrom(2048)
        sock.sendto(f"{host}:{sport}".encode(), (host, sport))


def probe(sport: int, targets: list[tuple[str, int]], listen_s: float) -> dict[str, object]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", sport))
    sock.settimeout(ANSWER_TIMEOUT_S)
    observed: dict[str, str | None] = {}
    for target in targets:
        sock.sendto(b"probe", target)
        try:
            data, _ = sock.recvfrom(2048)
            observed[f"{target[0]}:{target[1]}"] = data.decode()
        except TimeoutError:
            observed[f"{target[0]}:{target[1]}"] = None
    print(json.dumps({"observed": observed}), flush=True)
    unsolicited: list[str] = []
    deadline = time.monotonic() + listen_s
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data, (host, port) = sock.recvfrom(2048)
            unsolicited.append(f"{host}:{port} {data.decode(errors='replace')}")
        except TimeoutError:
            break
    return {"observed": observed, "unsolicited": unsolicited}


def main() -> int:
    parser = argparse.ArgumentParser(description="UDP helpers for the lab's NAT tests.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="echo the observed source address")
    s.add_argument("--port", type=int, required=True)
    p = sub.add_parser("probe", help="send from one port to several servers")
    p.add_argument("--sport", type=int, required=True)
    p.add_argument("--to", action="append", type=_addr, required=True)
    p.add_argument("--listen", type=float, default=0.0, help="seconds to wait for unsolicited datagrams")
    t = sub.add_parser("send", help="send one datagram")
    t.add_argument("--to", type=_addr, required=True)
    t.add_argument("--sport", type=int, default=0)
    t.add_argument("--text", default="hello")
    args = parser.parse_args()
    if args.cmd == "serve":
        serve(args.port)
    elif args.cmd == "probe":
        print(json.dumps(probe(args.sport, args.to, args.listen)), flush=True)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("0.0.0.0", args.sport))
        sock.sendto(args.text.encode(), args.to)
    return 0


if __name__ == "__main__":
    sys.exit(main())
