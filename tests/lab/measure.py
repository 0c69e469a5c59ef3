"""Measurements with real tools inside lab namespaces: iperf3 (JSON output) and ping."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.lab.netns import LabError, Namespace

IPERF_PORT = 5201


@dataclass(frozen=True)
class IperfResult:
    mbit_s: float            # receiver-side goodput
    lost_percent: float      # UDP only
    raw: dict[str, object]
    out_of_order: int = 0    # UDP only: datagrams the receiver got after a later one


_OUT_OF_ORDER = re.compile(r"(\d+) datagrams received out-of-order")


def start_iperf_server(ns: Namespace, port: int = IPERF_PORT, bind: str | None = None,
                       wrapper: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    """`wrapper`: a command iperf3 runs under, e.g. ("mptcpize", "run") for MPTCP sockets."""
    args = [*wrapper, "iperf3", "-s", "-p", str(port)] + (["-B", bind] if bind else [])
    proc = ns.popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # The server is ready when its port is bound; iperf3 has no readiness signal of its own.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        out = ns.run("ss", "-Hltn", f"sport = :{port}", check=False).stdout
        if out.strip():
            return proc
        time.sleep(0.05)
    raise LabError(f"iperf3 server in {ns.netns} did not start on port {port}")


def iperf(ns: Namespace, server: str, *, seconds: float = 3, port: int = IPERF_PORT, bind: str | None = None,
          udp_mbit: float | None = None, streams: int = 1, reverse: bool = False,
          udp_len: int = 1200, interval: float | None = None, wrapper: tuple[str, ...] = ()) -> IperfResult:
    args = [*wrapper, "iperf3", "-c", server, "-p", str(port), "-t", str(seconds), "-J", "-P", str(streams),
            "--connect-timeout", "3000"]
    if bind:
        args += ["-B", bind]
    if reverse:
        args.append("-R")
    if udp_mbit is not None:
        # A socket buffer of a few MB: a receiver descheduled for 100+ ms on a busy machine must not turn
        # its own buffer overflow into "link loss".
        args += ["-u", "-b", f"{udp_mbit}M", "-l", str(udp_len), "-w", "4M", "--get-server-output"]
    if interval:
        args += ["-i", str(interval)]
    # Errors of iperf3's control connection, not of the measured traffic: 3.12's server re-opens its listening
    # socket between tests (a client arriving then is told "busy" or reset), and on a lossy link the control
    # channel's own reads can time out. Retry those a few times; report anything else.
    transient = ("busy", "unable to receive control message", "unable to read from stream socket")
    for attempt in range(4):
        proc = ns.run(*args, check=False, timeout=seconds + 30)
        try:
            raw = json.loads(proc.stdout)
        except json.JSONDecodeError as exc:
            raise LabError(f"iperf3 in {ns.netns} gave no JSON: {proc.stderr.strip()}") from exc
        error = str(raw.get("error", ""))
        if error and any(t in error for t in transient) and attempt < 3:
            time.sleep(0.3)
            continue
        if error:
            raise LabError(f"iperf3 in {ns.netns}: {error}")
        break
    end = raw["end"]
    if udp_mbit is not None:
        summary = end["sum"]
        # The receiver's out-of-order count is only in its text report ("N datagrams received out-of-order").
        server_text = str(raw.get("server_output_text", ""))
        out_of_order = sum(int(n) for n in _OUT_OF_ORDER.findall(server_text))
        return IperfResult(mbit_s=summary["bits_per_second"] / 1e6 * (1 - summary["lost_percent"] / 100),
                           lost_percent=summary["lost_percent"], raw=raw, out_of_order=out_of_order)
    return IperfResult(mbit_s=end["sum_received"]["bits_per_second"] / 1e6, lost_percent=0.0, raw=raw)


@dataclass(frozen=True)
class PingResult:
    sent: int
    received: int
    rtts_ms: list[float]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.rtts_ms)

    @property
    def loss_percent(self) -> float:
        return 100.0 * (self.sent - self.received) / self.sent if self.sent else 100.0


_RTT = re.compile(r"time=([\d.]+) ms")


def ping(ns: Namespace, target: str, *, count: int = 10, interval: float = 0.05, source: str | None = None,
         size: int | None = None, timeout_s: float = 1.0, dont_fragment: bool = False) -> PingResult:
    args = ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", str(timeout_s)]
    if source:
        args += ["-I", source]
    if size is not None:
        args += ["-s", str(size)]
    if dont_fragment:
        args += ["-M", "do"]
    proc = ns.run(*args, target, check=False, timeout=count * (interval + timeout_s) + 10)
    rtts = [float(m) for m in _RTT.findall(proc.stdout)]
    return PingResult(sent=count, received=len(rtts), rtts_ms=rtts)


def longest_stall_s(intervals: list[dict[str, Any]], start_s: float) -> float:
    """Longest run of iperf3 intervals that delivered (almost) nothing, counting from `start_s` on.
    Use receiver-side intervals (iperf3 -R from the receiving host): a sender's are bursty."""
    run_s = longest = 0.0
    for interval in intervals:
        s = interval["sum"]
        if s["end"] <= start_s:
            continue
        run_s = run_s + (s["end"] - s["start"]) if s["bits_per_second"] < 1e5 else 0.0
        longest = max(longest, run_s)
    return longest


def wait_for(predicate: Callable[[], object], timeout: float, step: float = 0.05) -> float:
    """Polls `predicate` until it is true; returns the seconds that took, AssertionError after `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout}s")


@dataclass(frozen=True)
class Usage:
    rss_bytes: int
    fds: int
    cpu_s: float  # user + system time so far


def process_usage(pid: int) -> Usage:
    """A process's resident memory, open file descriptors and CPU time, from /proc."""
    rss = next(int(line.split()[1]) * 1024 for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmRSS:"))
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)
    return Usage(rss, len(list(Path(f"/proc/{pid}/fd").iterdir())), cpu_s)


def readline_within(stream: Any, timeout: float) -> str:
    """The next line of a process's output, or "" if none came within `timeout` seconds."""
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return out[0] if out else ""
