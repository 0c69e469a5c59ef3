"""What a router's status page and a Prometheus scrape show: system health, and the daemon's status as
Prometheus text metrics (exposition format 0.0.4).

Health is read from /proc and /sys, as psutil does on Linux, so the appliance needs no extra package: CPU
load per core (from two /proc/stat readings, the last at the previous call), memory, temperature where the
board has a thermal zone, uptime, and this process's RSS and open fds (the daemon's, since it calls this).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

PROC = Path("/proc")
THERMAL = Path("/sys/class/thermal")

_cpu_lock = threading.Lock()
_last_cpu: dict[str, tuple[int, int]] = {}


def _cpu_times() -> dict[str, tuple[int, int]]:
    """(busy, total) jiffies per CPU ("cpu0", …) since boot."""
    times = {}
    for line in (PROC / "stat").read_text().splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        values = [int(v) for v in fields[:8]]
        idle = values[3] + values[4]  # idle + iowait
        times[name] = (sum(values) - idle, sum(values))
    return times


def cpu_load_per_core() -> list[float]:
    """Busy share of each core (0-1) since the previous call (since boot at the first)."""
    now = _cpu_times()
    with _cpu_lock:
        before = dict(_last_cpu)
        _last_cpu.clear()
        _last_cpu.update(now)
    loads = []
    for name in sorted(now, key=lambda n: int(n[3:])):
        busy, total = now[name]
        busy0, total0 = before.get(name, (0, 0))
        loads.append((busy - busy0) / (total - total0) if total > total0 else 0.0)
    return loads


def _meminfo() -> dict[str, int]:
    info = {}
    for line in (PROC / "meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            info[key] = int(parts[0]) * 1024
    return info


def _temperatures() -> dict[str, float]:
    temps: dict[str, float] = {}
    for zone in sorted(THERMAL.glob("thermal_zone*")):
        try:
            kind = (zone / "type").read_text().strip()
            temps[f"{zone.name}:{kind}"] = int((zone / "temp").read_text().strip()) / 1000
        except (OSError, ValueError):
            continue
    return temps


def _own_rss_bytes() -> int:
    for line in (PROC / "self" / "status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def system_health() -> dict[str, Any]:
    memory = _meminfo()
    return {
        "cpu_load": cpu_load_per_core(),
        "load_average": list(os.getloadavg()),
        "memory_total_bytes": memory.get("MemTotal", 0),
        "memory_available_bytes": memory.get("MemAvailable", 0),
        "temperatures_c": _temperatures(),
        "uptime_s": float((PROC / "uptime").read_text().split()[0]),
        "process_rss_bytes": _own_rss_bytes(),
        "process_open_fds": len(os.listdir(PROC / "self" / "fd")),
        "time": time.time(),
    }


def health_line(health: dict[str, Any]) -> str:
    """The health in one line, as a router's status page shows it (the dashboard and `quicether status`)."""
    cores = " ".join(f"{load * 100:.0f}%" for load in health.get("cpu_load", []))
    temps = " · ".join(f"{celsius:.0f} °C" for celsius in (health.get("temperatures_c") or {}).values())
    hours = health.get("uptime_s", 0) / 3600
    uptime = f"{hours / 24:.1f} days" if hours >= 48 else f"{hours:.1f} h"
    parts = [f"CPU {cores}",
             f"memory {health.get('memory_available_bytes', 0) >> 20} of {health.get('memory_total_bytes', 0) >> 20}"
             f" MiB free", *([temps] if temps else []), f"up {uptime}",
             f"daemon {health.get('process_rss_bytes', 0) >> 20} MiB, {health.get('process_open_fds', 0)} fds"]
    return " · ".join(parts)


def byte_size(n: int) -> str:
    """A byte count as a person reads it: 2.5 MB, 1.2 GB."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def lane_ends(node: dict[str, Any]) -> dict[str, dict[str, int]]:
    """The TCP lane's counters per end it runs ("site", "gateway"), from the status's `node.lane`."""
    counters = node.get("lane") or {}
    return {end: {k.removeprefix(f"{end}_"): int(v) for k, v in counters.items() if k.startswith(f"{end}_")}
            for end in ("site", "gateway") if f"{end}_connections" in counters}


def lane_end_line(c: dict[str, int]) -> str:
    """One lane end's counters in a line (the dashboard and `quicether status`)."""
    return (f"{c['connections']} connection(s), {c['active']} active, {byte_size(c['bytes_out'])} out,"
            f" {byte_size(c['bytes_in'])} in, {c['refused']} refused, {c['failed']} failed,"
            f" {c['at_cap']} closed at the cap" + (f", {c['fallback']} fell back to plain TCP" if c.get("fallback")
                                                    else "")
            + (f", {c['missed_wakeups']} missed wakeup(s) caught" if c.get("missed_wakeups") else "")
            + (f", {c['stuck_resets']} reset as stuck" if c.get("stuck_resets") else ""))


def lane_subflow_shares(node: dict[str, Any]) -> list[tuple[str, int, float]]:
    """Per WAN (sorted): the lane's open subflows over it and their share of those subflows' bytes."""
    flows = node.get("lane_subflows") or {}
    total = sum(int(f["bytes_sent"]) + int(f["bytes_received"]) for f in flows.values()) or 1
    return [(wan, int(f["subflows"]), (int(f["bytes_sent"]) + int(f["bytes_received"])) / total)
            for wan, f in sorted(flows.items())]


def _label_value(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, object]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_label_value(v)}"' for k, v in labels.items()) + "}"


class _Exposition:
    """Collects samples by metric name, so each name gets one HELP/TYPE block however its samples come."""

    def __init__(self) -> None:
        self._metrics: dict[str, tuple[str, str, list[str]]] = {}

    def add(self, name: str, kind: str, help_text: str, value: float | int | bool,
            labels: dict[str, object] | None = None) -> None:
        entry = self._metrics.setdefault(f"quicether_{name}", (kind, help_text, []))
        number = float(value)
        shown = repr(int(number)) if number.is_integer() and abs(number) < 2**53 else repr(number)
        entry[2].append(f"quicether_{name}{_labels(labels or {})} {shown}")

    def text(self) -> str:
        lines: list[str] = []
        for name, (kind, help_text, samples) in self._metrics.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]
        return "\n".join(lines) + "\n"


_PATH_GAUGES: Iterable[tuple[str, str, str]] = (
    ("rtt_ms", "path_rtt_milliseconds", "Smoothed RTT of the path."),
    ("loss", "path_loss_ratio", "Recent loss on the path (0-1)."),
    ("cwnd_bytes", "path_window_bytes", "Congestion window of the path."),
    ("queued_bytes", "path_queued_bytes", "Bytes waiting in the path's send queue."),
)
_PEER_COUNTERS: Iterable[tuple[str, str, str]] = (
    ("tx_packets", "peer_sent_packets_total", "Inner packets sent to the peer."),
    ("rx_packets", "peer_received_packets_total", "Inner packets received from the peer."),
    ("tx_dropped", "peer_send_dropped_packets_total", "Outbound packets dropped (no path, queues full, QUIC refused)."),
    ("rx_dropped", "peer_receive_dropped_packets_total", "Inbound packets dropped."),
    ("retransmitted", "peer_resent_packets_total", "Packets resent on another path after a loss (NACK repair)."),
    ("punch_attempts", "peer_punch_attempts_total", "Hole punches towards the peer (initiated or answered)."),
)


# Every drop and refusal the daemon counts, as (area, cause) of `quicether_dropped_total`: where in the
# status it is (node key, or a sub-dict and its key), and the cause label it gets.
_NODE_DROPS: Iterable[tuple[str, str, str]] = (
    ("no_route_drops", "tunnel", "no_route"),
    ("refused_handshakes", "handshake", "key_not_allowed"),
    ("handshakes_dropped", "handshake", "too_many_in_flight"),
    ("api_refused_busy", "api", "busy"),
    ("api_evicted_waiting", "api", "evicted_waiting"),
)
_DHT_DROPS: dict[str, tuple[str, str]] = {
    "bad_signature": ("dht_record", "bad_signature"), "replay": ("dht_record", "replay"),
    "expired": ("dht_record", "expired"), "non_member": ("dht_record", "non_member"),
    "malformed": ("dht_record", "malformed"), "busy": ("dht_lookup", "busy"),
    "server_refused_source_rate": ("dht_server", "source_rate"),
    "server_refused_total_rate": ("dht_server", "total_rate"),
}
_PEER_DROPS: Iterable[tuple[str, str, str]] = (
    ("tx_dropped_no_path", "bond_send", "no_path"),
    ("tx_dropped_queue_full", "send_queue", "full"),
    ("tx_dropped_refused", "bond_send", "refused_by_quic"),
    ("rx_dropped", "bond_receive", "unknown_frame"),
    ("resend_evicted", "resend_memory", "full"),
)
# The reorder buffer's skips, by why: `skipped` counts them all, `overflowed` those its packet bound forced.
_REORDER_DROPS: Iterable[tuple[str, str]] = (("duplicates", "duplicate"), ("overflowed", "full"))
# The web UI's sessions (its /metrics adds them to the daemon's status): evicted for MAX_SESSIONS.
_WEBUI_DROPS: Iterable[tuple[str, str]] = (("sessions_evicted_anonymous", "evicted_anonymous"),
                                            ("sessions_evicted_logged_in", "evicted_logged_in"))
_DROPPED_HELP = "Packets, requests and records dropped or refused, by where (area) and why (cause)."


def _drops(out: _Exposition, status: dict[str, Any]) -> None:
    node = status.get("node") or {}
    for key, area, cause in _NODE_DROPS:
        out.add("dropped_total", "counter", _DROPPED_HELP, node.get(key, 0), {"area": area, "cause": cause})
    for key, value in (node.get("relay") or {}).items():
        if key.startswith("dropped_"):
            out.add("dropped_total", "counter", _DROPPED_HELP, value,
                    {"area": "relay", "cause": key.removeprefix("dropped_")})
    if "received_dropped" in (node.get("relay") or {}):
        out.add("dropped_total", "counter", _DROPPED_HELP, node["relay"]["received_dropped"],
                {"area": "relayed_receive", "cause": "non_member_or_queue_full"})
    if "refused" in (node.get("punch") or {}):
        out.add("dropped_total", "counter", _DROPPED_HELP, node["punch"]["refused"],
                {"area": "punch", "cause": "refused"})
    for key, value in ((node.get("dht") or {}).get("counters") or {}).items():
        if key in _DHT_DROPS:
            area, cause = _DHT_DROPS[key]
            out.add("dropped_total", "counter", _DROPPED_HELP, value, {"area": area, "cause": cause})
    for key, value in (node.get("lan_discovery") or {}).items():
        if key != "resolved":
            out.add("dropped_total", "counter", _DROPPED_HELP, value, {"area": "lan_discovery", "cause": key})
    webui = status.get("webui") or {}
    for key, cause in _WEBUI_DROPS:
        if key in webui:
            out.add("dropped_total", "counter", _DROPPED_HELP, webui[key], {"area": "web_session", "cause": cause})
    for peer in status.get("peers", []):
        who = {"peer": peer.get("name") or peer.get("node_id", "")}
        for key, area, cause in _PEER_DROPS:
            out.add("dropped_total", "counter", _DROPPED_HELP, peer.get(key, 0), {**who, "area": area, "cause": cause})
        reorder = peer.get("reorder") or {}
        for key, cause in _REORDER_DROPS:
            out.add("dropped_total", "counter", _DROPPED_HELP, reorder.get(key, 0),
                    {**who, "area": "reorder", "cause": cause})
        # Each skip once: those the bound forced are "full" above.
        out.add("dropped_total", "counter", _DROPPED_HELP, reorder.get("skipped", 0) - reorder.get("overflowed", 0),
                {**who, "area": "reorder", "cause": "gap_skipped"})


def render(status: dict[str, Any]) -> str:
    """The daemon's status (API `status`) as Prometheus text."""
    out = _Exposition()
    node = status.get("node") or {}
    out.add("no_route_drops_total", "counter", "Packets from the LAN with no peer to carry them.",
            node.get("no_route_drops", 0))
    out.add("refused_handshakes_total", "counter", "Handshakes refused (key not allowed).",
            node.get("refused_handshakes", 0))
    out.add("handshakes_retried_total", "counter", "Handshakes answered with a QUIC Retry (many in flight).",
            node.get("handshakes_retried", 0))
    out.add("handshakes_dropped_total", "counter", "Handshakes dropped unanswered (too many in flight).",
            node.get("handshakes_dropped", 0))
    for peer in status.get("peers", []):
        who = {"peer": peer.get("name") or peer.get("node_id", "")}
        out.add("peer_connected", "gauge", "1 while the peer has a path up.", bool(peer.get("connected")), who)
        for key, name, help_text in _PEER_COUNTERS:
            out.add(name, "counter", help_text, peer.get(key, 0), who)
        for key, value in (peer.get("reorder") or {}).items():
            if key not in ("timeout_ms", "overflowed"):  # overflowed: a part of skipped
                out.add("reorder_packets_total", "counter", "Packets through the reorder buffer, by outcome.",
                        value, {**who, "outcome": key})
        for path in peer.get("paths", []):
            labels = {**who, "wan": path.get("wan", ""), "kind": path.get("kind", "")}
            out.add("path_up", "gauge", "1 while the path is up.", bool(path.get("up")), labels)
            out.add("path_sent_bytes_total", "counter", "Bytes sent on the path.", path.get("tx_bytes", 0), labels)
            out.add("path_received_bytes_total", "counter", "Bytes received on the path.",
                    path.get("rx_bytes", 0), labels)
            for key, name, help_text in _PATH_GAUGES:
                out.add(name, "gauge", help_text, path.get(key) or 0, labels)
    _drops(out, status)
    health = status.get("health") or {}
    for core, load in enumerate(health.get("cpu_load", [])):
        out.add("cpu_load_ratio", "gauge", "Busy share of each CPU core since the previous reading.", load,
                {"core": core})
    for key, name, help_text in (
        ("memory_total_bytes", "memory_total_bytes", "Memory of the machine."),
        ("memory_available_bytes", "memory_available_bytes", "Memory available to programs."),
        ("uptime_s", "uptime_seconds", "Time since the machine booted."),
        ("process_rss_bytes", "daemon_resident_bytes", "Resident memory of the daemon."),
        ("process_open_fds", "daemon_open_fds", "Open file descriptors of the daemon."),
    ):
        if key in health:
            out.add(name, "gauge", help_text, health[key])
    for zone, celsius in (health.get("temperatures_c") or {}).items():
        out.add("temperature_celsius", "gauge", "Temperature of each thermal zone.", celsius, {"zone": zone})
    return out.text()
