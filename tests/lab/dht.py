"""A private mainline DHT for the lab: N plain DHT nodes (`dht_node` of core/labdht, none of them a
QuicEther member) in one lab namespace, and a lying DHT node that serves whatever items a test gives it.

    addrs = start_dht(lab, ns, 16)            # ["127.0.0.1:7000", …], all answering
    liar = LyingDhtNode.start(ns, 7100)       # then liar.serve(target, [item, …])

The liar speaks just enough KRPC (BEP 5, BEP 44) for querying nodes to keep it in their routing tables,
ask it for values and store values at it: it answers ping, find_node and get_peers with its id and no
nodes, `get` with the item it was told to serve for that target (none: no value), and `put` by keeping
what was put (so a test can replay it later). It runs as `python -m tests.lab.dht liar IP PORT` in the
namespace and reads JSON lines: {"serve": target hex, "item": {"k", "sig", "v": hex, "seq": int}} or
{"captured": public key hex} (answered with the items put under that key, salt included, oldest first).

`probe_dht(ns, addr, count, interval)` asks a DHT node `count` times (a `get` each, as a member's lookup
does) from `ns` and returns how many it answered: what a member sees of a node under a flood.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.lab.measure import readline_within
from tests.lab.netns import Lab, LabError, Namespace

DHT_NODE = Path(__file__).resolve().parents[2] / "core" / "target" / "release" / "dht_node"
READY_TIMEOUT_S = 10.0


def start_dht(lab: Lab, ns: Namespace, count: int, *, ip: str = "127.0.0.1", base_port: int = 7000) -> list[str]:
    """Starts `count` DHT server nodes on ip:base_port…, each bootstrapping from the ones before it;
    returns their addresses once every one has printed `ready`. The lab stops them on close."""
    if not DHT_NODE.exists():
        raise LabError(f"{DHT_NODE} is missing: run ./scripts/setup (it builds the lab's DHT node)")
    addrs: list[str] = []
    for i in range(count):
        addr = f"{ip}:{base_port + i}"
        proc = ns.popen([str(DHT_NODE), addr, ",".join(addrs[-4:])], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        line = readline_within(proc.stdout, READY_TIMEOUT_S)
        if line.strip() != f"ready {addr}":
            raise LabError(f"dht_node {addr} did not start: {line!r}")
        addrs.append(addr)
    return addrs


def target(public_key: bytes, salt: bytes) -> bytes:
    """A BEP 44 mutable item's DHT target: sha1(key ‖ salt)."""
    return hashlib.sha1(public_key + salt).digest()


def signable(salt: bytes, seq: int, value: bytes) -> bytes:
    """What BEP 44 signs: the bencoded salt (if any), seq and v, without the outer dictionary."""
    head = b"4:salt%d:%s" % (len(salt), salt) if salt else b""
    return head + b"3:seqi%de1:v%d:%s" % (seq, len(value), value)


class LyingDhtNode:
    """A DHT node under a test's control, started in a namespace."""

    def __init__(self, proc: subprocess.Popen[str], addr: str) -> None:
        self.proc = proc
        self.addr = addr

    @classmethod
    def start(cls, ns: Namespace, port: int, ip: str = "127.0.0.1") -> LyingDhtNode:
        proc = ns.popen([sys.executable, "-m", "tests.lab.dht", "liar", ip, str(port)], stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE, cwd=str(Path(__file__).resolve().parents[2]))
        assert proc.stdout is not None
        line = readline_within(proc.stdout, READY_TIMEOUT_S)
        if line.strip() != f"ready {ip}:{port}":
            raise LabError(f"lying DHT node did not start: {line!r}")
        return cls(proc, f"{ip}:{port}")

    def serve(self, item_target: bytes, item: dict[str, Any]) -> None:
        """From now on answers `get` for `item_target` with this item (k, sig, v: bytes; seq: int)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        encoded = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in item.items()}
        self.proc.stdin.write(json.dumps({"serve": item_target.hex(), "item": encoded}) + "\n")
        self.proc.stdin.flush()
        if readline_within(self.proc.stdout, READY_TIMEOUT_S).strip() != '"ok"':
            raise LabError("lying DHT node did not take the item")

    def captured(self, public_key: bytes) -> list[dict[str, Any]]:
        """The items other nodes put here under `public_key` (k, sig, v, salt: bytes; seq: int), oldest first."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"captured": public_key.hex()}) + "\n")
        self.proc.stdin.flush()
        items: list[dict[str, Any]] = json.loads(readline_within(self.proc.stdout, READY_TIMEOUT_S))
        return [{k: (bytes.fromhex(v) if isinstance(v, str) else v) for k, v in i.items()} for i in items]


def probe_dht(ns: Namespace, addr: str, count: int, interval: float) -> tuple[int, int]:
    """(sent, answered): `count` get requests to the DHT node at `addr`, one every `interval` s, from `ns`
    (its default source address); an answer counts if it comes within a second of its request."""
    proc = ns.popen([sys.executable, "-m", "tests.lab.dht", "probe", addr, str(count), str(interval)],
                    stdout=subprocess.PIPE, cwd=str(Path(__file__).resolve().parents[2]))
    out, _ = proc.communicate(timeout=count * interval + 30)
    if proc.returncode != 0:
        raise LabError(f"DHT probe of {addr} failed ({proc.returncode})")
    result = json.loads(out)
    return int(result["sent"]), int(result["answered"])


def _run_probe(addr: str, count: int, interval: float) -> None:
    ip, port = addr.rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(0.05)
    sent_at: dict[bytes, float] = {}
    answered = 0
    next_send = time.monotonic()
    while len(sent_at) < count or (sent_at and time.monotonic() < max(sent_at.values()) + 1.0):
        now = time.monotonic()
        if len(sent_at) < count and now >= next_send:
            tid = len(sent_at).to_bytes(4, "big")  # mainline takes 4-byte transaction ids only
            query = {"t": tid, "y": "q", "q": "get", "a": {"id": secrets.token_bytes(20),
                                                         "target": secrets.token_bytes(20)}}
            sock.sendto(bencode(query), (ip, int(port)))
            sent_at[tid] = now
            next_send += interval
        try:
            data, _ = sock.recvfrom(4096)
            msg, _ = bdecode(data)
            tid = msg.get(b"t", b"")
            if msg.get(b"y") == b"r" and tid in sent_at and time.monotonic() - sent_at[tid] <= 1.0:
                answered += 1
                sent_at[tid] = -1e9  # counted once
        except (TimeoutError, ValueError, AttributeError):
            pass
    print(json.dumps({"sent": count, "answered": answered}), flush=True)


# --- bencode, just what KRPC needs ---

def bencode(value: Any) -> bytes:
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, str):
        return bencode(value.encode())
    if isinstance(value, list):
        return b"l" + b"".join(bencode(v) for v in value) + b"e"
    if isinstance(value, dict):
        keys = sorted((k.encode() if isinstance(k, str) else k, v) for k, v in value.items())
        return b"d" + b"".join(bencode(k) + bencode(v) for k, v in keys) + b"e"
    raise TypeError(f"cannot bencode {type(value).__name__}")


def bdecode(data: bytes, at: int = 0, depth: int = 0) -> tuple[Any, int]:
    """Decodes one value at `at`; raises ValueError on anything malformed (the liar ignores those)."""
    if depth > 8 or at >= len(data):
        raise ValueError("malformed bencode")
    c = data[at:at + 1]
    if c == b"i":
        end = data.index(b"e", at)
        return int(data[at + 1:end]), end + 1
    if c in (b"l", b"d"):
        at += 1
        items: list[Any] = []
        while data[at:at + 1] != b"e":
            v, at = bdecode(data, at, depth + 1)
            items.append(v)
        if c == b"l":
            return items, at + 1
        return dict(zip(items[::2], items[1::2], strict=True)), at + 1
    colon = data.index(b":", at)
    n = int(data[at:colon])
    return data[colon + 1:colon + 1 + n], colon + 1 + n


def _run_liar(ip: str, port: int) -> None:
    node_id = secrets.token_bytes(20)
    served: dict[bytes, dict[str, Any]] = {}
    captured: dict[bytes, list[dict[str, Any]]] = {}
    lock = threading.Lock()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((ip, port))
    print(f"ready {ip}:{port}", flush=True)

    def read_commands() -> None:
        for line in sys.stdin:
            cmd = json.loads(line)
            with lock:
                if "serve" in cmd:
                    served[bytes.fromhex(cmd["serve"])] = {
                        k: (bytes.fromhex(v) if isinstance(v, str) else v) for k, v in cmd["item"].items()}
                    answer: Any = "ok"
                else:
                    answer = [{k: (v.hex() if isinstance(v, bytes) else v) for k, v in i.items()}
                              for i in captured.get(bytes.fromhex(cmd["captured"]), [])]
            print(json.dumps(answer), flush=True)
        os._exit(0)

    threading.Thread(target=read_commands, daemon=True).start()
    while True:
        data, peer = sock.recvfrom(2048)
        try:
            msg, _ = bdecode(data)
            if msg.get(b"y") != b"q":
                continue
            query, args = msg[b"q"], msg.get(b"a", {})
        except (ValueError, KeyError, AttributeError, IndexError):
            continue
        reply: dict[str, Any] = {"id": node_id, "nodes": b""}
        if query in (b"get", b"get_peers"):
            reply["token"] = b"tokn"
        if query == b"get":
            with lock:
                item = served.get(args.get(b"target", b""))
            if item:
                reply.update({"k": item["k"], "sig": item["sig"], "v": item["v"], "seq": item["seq"]})
        if query == b"put" and b"k" in args:
            try:
                put = {"k": args[b"k"], "salt": args.get(b"salt", b""), "seq": args[b"seq"], "sig": args[b"sig"],
                       "v": args[b"v"]}
            except KeyError:
                continue
            with lock:
                kept = captured.setdefault(put["k"], [])
                if len(kept) < 64:
                    kept.append(put)
            reply = {"id": node_id}
        sock.sendto(bencode({"t": msg[b"t"], "y": "r", "r": reply}), peer)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "liar":
        _run_liar(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) == 5 and sys.argv[1] == "probe":
        _run_probe(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    else:
        sys.exit("usage: python -m tests.lab.dht liar IP PORT | probe IP:PORT COUNT INTERVAL_S")
