"""Soak test of the bond: the three-WAN lab for --minutes with random WAN cuts, rate changes and loss while
one TCP transfer from a LAN host to a host behind the gateway checks its data end to end (sha256 of every
byte sent against every byte received).

Prints bytes delivered, the longest delivery stall, and both daemons' RSS and open fds at the start (after
a warm-up) and at the end. Exits 1 if the data differs, a stall exceeds --max-stall, or RSS or fds grew
beyond what a bounded process shows (RSS more than 50 % + 16 MiB, fds more than 10 over the start).
The chaos is seeded (--seed): a failing run can be repeated.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.lab import Lab  # noqa: E402
from tests.lab.bond import THREE_WANS, BondLab, build_bond_lab  # noqa: E402
from tests.lab.measure import process_usage  # noqa: E402

PORT = 5301
RSS_GROWTH, RSS_SLACK = 1.5, 16 << 20
FD_SLACK = 10

# The receiver (behind the gateway): hashes what arrives and times the longest gap between reads.
RECEIVER = """
import hashlib, json, socket, sys, time
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", PORT)); srv.listen(1); print("ready", flush=True)
conn, _ = srv.accept()
digest, total, gap, gap_from, last = hashlib.sha256(), 0, 0.0, 0.0, None
while True:
    data = conn.recv(1 << 16)
    if not data:
        break
    now = time.monotonic()
    if last is not None and now - last > gap:
        gap, gap_from = now - last, last
    last = now
    digest.update(data); total += len(data)
print(json.dumps({"bytes": total, "sha256": digest.hexdigest(), "longest_gap_s": gap,
                  "longest_gap_from": gap_from}), flush=True)
"""
# The sender (on the LAN): a seeded pseudo-random stream until a line arrives on stdin.
SENDER = """
import hashlib, json, random, select, socket, sys
rng = random.Random(SEED)
sock = socket.create_connection((ADDR, PORT), timeout=30); sock.settimeout(None)
digest, total = hashlib.sha256(), 0
while not select.select([sys.stdin], [], [], 0)[0]:
    chunk = rng.randbytes(1 << 16)
    sock.sendall(chunk); digest.update(chunk); total += len(chunk)
sock.shutdown(socket.SHUT_WR)
sock.recv(1)
print(json.dumps({"bytes": total, "sha256": digest.hexdigest()}), flush=True)
"""


def chaos_step(bond: BondLab, rng: random.Random) -> str:
    """One random change to the links; at least one WAN always stays up."""
    wans = bond.wl.wans
    up = [w.index for w in wans if w.spec.up]
    down = [w.index for w in wans if not w.spec.up]
    action = rng.choice(["cut", "restore", "rate", "loss"] if down else ["cut", "rate", "loss"])
    if action == "cut" and len(up) > 1:
        index = rng.choice(up)
        bond.wl.set_link(index, up=False)
        return f"wan{index} cut"
    if action in ("cut", "restore") and down:
        index = rng.choice(down)
        bond.wl.set_link(index, up=True)
        return f"wan{index} restored"
    index = rng.randrange(len(wans))
    if action == "rate":
        base = THREE_WANS[index].rate_mbit or 10
        rate = round(base * rng.uniform(0.5, 1.5), 1)
        bond.wl.set_link(index, rate_mbit=rate)
        return f"wan{index} rate {rate} Mbit/s"
    loss = rng.choice([0, 0.5, 1, 2])
    bond.wl.set_link(index, loss_pct=loss)
    return f"wan{index} loss {loss} %"


def stall_context(at: float, changes: list[tuple[float, str]]) -> str:
    """Where the longest stall began, relative to the link change before it (the likely cause)."""
    before = [(t, c) for t, c in changes if t <= at]
    if not before:
        return f" (from {at:.1f} s)"
    t, change = before[-1]
    return f" (from {at:.1f} s, {at - t:.1f} s after '{change}')"


def soak(minutes: float, seed: int, max_stall_s: float) -> bool:
    rng = random.Random(seed)
    with Lab("qsoak") as lab, tempfile.TemporaryDirectory() as state:
        print(f"soak: three-WAN lab, {minutes} min, seed {seed}", flush=True)
        bond = build_bond_lab(lab, THREE_WANS, Path(state))
        receiver = bond.dc.popen([sys.executable, "-c", RECEIVER.replace("PORT", str(PORT))],
                                 stdout=-1, stderr=-1)
        assert receiver.stdout is not None
        if receiver.stdout.readline().strip() != "ready":
            print("soak: error: the receiver did not start", file=sys.stderr)
            return False
        sender = bond.lan.popen([sys.executable, "-c", SENDER.replace("SEED", str(seed))
                                 .replace("ADDR", repr(bond.dc_addr)).replace("PORT", str(PORT))],
                                stdin=-1, stdout=-1, stderr=-1)
        sending_since = time.monotonic()
        daemons = {"site": bond.site.proc, "gateway": bond.gateway.proc}
        time.sleep(10)  # warm-up: windows grown, buffers allocated
        start = {name: process_usage(proc.pid) for name, proc in daemons.items() if proc}
        began = time.monotonic()
        deadline = began + minutes * 60
        steps = 0
        changes: list[tuple[float, str]] = []
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(1.0, 4.0))
            change = chaos_step(bond, rng)
            steps += 1
            changes.append((time.monotonic() - began, change))
            print(f"  {changes[-1][0]:7.1f} s  {change}", flush=True)
            if sender.poll() is not None or receiver.poll() is not None:
                print("soak: error: the transfer ended early", file=sys.stderr)
                break
        for wan in bond.wl.wans:
            bond.wl.set_link(wan.index, up=True, loss_pct=0, rate_mbit=THREE_WANS[wan.index].rate_mbit)
        end = {name: process_usage(proc.pid) for name, proc in daemons.items() if proc}
        sent_out, sent_err = sender.communicate("stop\n", timeout=120)
        got_out, got_err = receiver.communicate(timeout=120)
        elapsed = time.monotonic() - sending_since
        try:
            sent, got = json.loads(sent_out), json.loads(got_out)
        except json.JSONDecodeError:
            print(f"soak: error: the transfer failed: {sent_err.strip()} {got_err.strip()}", file=sys.stderr)
            return False
    ok = True
    print(f"soak: {steps} link changes in {minutes * 60:.0f} s; delivered {got['bytes'] / 1e9:.2f} GB "
          f"({got['bytes'] * 8 / elapsed / 1e6:.1f} Mbit/s average), longest stall {got['longest_gap_s']:.2f} s"
          f"{stall_context(got['longest_gap_from'] - began, changes)}")
    if (sent["bytes"], sent["sha256"]) != (got["bytes"], got["sha256"]):
        print(f"soak: FAIL: data differs: sent {sent}, received {got}")
        ok = False
    else:
        print(f"soak: data identical end to end (sha256 {got['sha256'][:16]}…)")
    if got["longest_gap_s"] > max_stall_s:
        print(f"soak: FAIL: a stall of {got['longest_gap_s']:.2f} s (limit {max_stall_s} s)")
        ok = False
    for name in start:
        a, b = start[name], end[name]
        print(f"soak: {name} daemon RSS {a.rss_bytes >> 20} -> {b.rss_bytes >> 20} MiB, fds {a.fds} -> {b.fds}")
        if b.rss_bytes > a.rss_bytes * RSS_GROWTH + RSS_SLACK or b.fds > a.fds + FD_SLACK:
            print(f"soak: FAIL: the {name} daemon's RSS or fds grew beyond the bound")
            ok = False
    print("soak: passed" if ok else "soak: failed")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30, help="how long the chaos runs (default %(default)s)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the link changes (default: random)")
    parser.add_argument("--max-stall", type=float, default=2.0,
                        help="longest delivery stall allowed, seconds (default %(default)s)")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    return 0 if soak(args.minutes, seed, args.max_stall) else 1


if __name__ == "__main__":
    sys.exit(main())
