"""The dashboard: WAN cards, bond total, peers and paths, events and log. The page is rendered on the server
from the daemon's status; dashboard.js then polls /api/summary once a second for the cards and graphs.

WAN names on a path may come from the peer (its path hello), so they are shown, never trusted: each card
is found by a key derived here (hex digits, the same in the page and the JSON), names are shown with
control characters spelled out, and the page only ever sets them as text.
"""

from __future__ import annotations

import hashlib
import time
import unicodedata
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, render_template

from quicether.metrics import health_line, lane_end_line, lane_ends, lane_subflow_shares
from quicether.metrics import render as render_metrics
from webui.auth import LOCKED_OUT, admin_or_basic_auth
from webui.daemon_link import DaemonDown, ask

bp = Blueprint("dashboard", __name__)
# Longer names are cut: a card title, not a place for a peer to write an essay.
MAX_NAME_CHARS = 40


def printable(text: object, limit: int | None = None) -> str:
    """`text` with control and format characters (CR, LF, NUL, bidi overrides…) spelled out as \\uXXXX, so
    a name cannot break a line, fake a log line or turn text around; cut to `limit` characters."""
    shown = "".join(f"\\u{ord(c):04x}" if unicodedata.category(c)[0] == "C" else c for c in str(text))
    return shown if limit is None or len(shown) <= limit else shown[:limit - 1] + "…"


def element_key(kind: str, name: object) -> str:
    """A key for the page element showing `name`: hex, the same in the HTML and the JSON for any name."""
    return kind + hashlib.sha256(str(name).encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _path_kind(path: dict[str, Any]) -> str:
    kind = printable(path.get("kind", "direct"), MAX_NAME_CHARS)
    via = path.get("via")
    return f"{kind} via {printable(via, MAX_NAME_CHARS)}" if via else kind


def _wan_summary(status: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per WAN, over every peer's path on it: up if any path is, rates summed."""
    wans: dict[str, dict[str, Any]] = {}
    for peer in status.get("peers", []):
        for path in peer["paths"]:
            wan = wans.setdefault(path["wan"], {"key": element_key("w", path["wan"]),
                                                "name": printable(path["wan"], MAX_NAME_CHARS),
                                                "address": path["local"], "public": None,
                                                "paths": 0, "up_paths": 0, "rtt_ms": None, "loss": 0.0, "tx_bps": 0.0,
                                                "rx_bps": 0.0, "tx_bytes": 0, "backup": path["backup"]})
            wan["paths"] += 1
            if path.get("public"):  # what the peer sees: the ISP's public address after its NAT
                wan["public"] = path["public"].rsplit(":", 1)[0]
            wan["tx_bps"] += path["tx_rate_bps"]
            wan["rx_bps"] += path["rx_rate_bps"]
            wan["tx_bytes"] += path["tx_bytes"]
            wan["loss"] = max(wan["loss"], path["loss"])
            if path["up"]:
                wan["up_paths"] += 1
                if wan["rtt_ms"] is None or path["rtt_ms"] < wan["rtt_ms"]:
                    wan["rtt_ms"] = path["rtt_ms"]
    total_tx = sum(w["tx_bytes"] for w in wans.values()) or 1
    nat = status.get("node", {}).get("nat", {})  # per WAN, as the core tells it from what peers see
    for name, wan in wans.items():
        wan["nat"] = printable(nat[name], 60) if name in nat else None
        wan["state"] = "up" if wan["up_paths"] else "down"
        wan["share"] = wan["tx_bytes"] / total_tx
    return sorted(wans.values(), key=lambda w: w["name"])


def _age(unix_s: float | None, now: float) -> str:
    return "-" if unix_s is None else f"{max(0.0, now - unix_s):.0f} s ago"


def _network_summary(status: dict[str, Any]) -> dict[str, Any] | None:
    """The mesh network this node is in: its membership and every member known (how it was found, connected
    or not, when its DHT record was last found, until when its certificate is valid)."""
    net = status.get("node", {}).get("network")
    if not net:
        return None
    now = float(status.get("time", time.time()))

    def day(unix_s: int) -> str:
        return time.strftime("%Y-%m-%d", time.gmtime(unix_s))

    members = [{"key": element_key("m", m["node_id"]), "name": printable(m["name"], MAX_NAME_CHARS),
                "ipv4": m["ipv4"], "connected": m["connected"], "found": printable(m.get("found", "-")),
                "record_seen": _age(m.get("record_seen"), now), "valid_until": day(m["not_after"])}
               for m in net["members"]]
    return {"name": printable(net["name"], MAX_NAME_CHARS), "address": net.get("address"),
            "valid_until": day(net["not_after"]), "revoked": net["revoked"], "members": members}


def _lane_summary(status: dict[str, Any]) -> dict[str, Any] | None:
    """The TCP lane (None when off): each end's counters and, at the site end, each WAN's share of the
    bytes of the lane's open subflows, with the line the page shows."""
    node = status.get("node", {})
    ends = lane_ends(node)
    if not ends:
        return None
    subflows: list[dict[str, Any]] = [{"wan": printable(wan, MAX_NAME_CHARS), "subflows": count, "share": share}
                                      for wan, count, share in lane_subflow_shares(node)]
    parts = [f"{end} end: {lane_end_line(c)}" for end, c in ends.items()]
    if subflows:
        parts.append("subflows " + ", ".join(f"{f['wan']} {f['subflows']} ({f['share'] * 100:.0f} %)"
                                             for f in subflows))
    # A peer whose lane fell back (MPTCP stripped on the way): its TCP goes through the QUIC bond meanwhile.
    parts += [f"MPTCP stripped on the way to {printable(name, MAX_NAME_CHARS)}: its TCP goes through the QUIC bond"
              for name in sorted(node.get("lane_bypassed") or {})]
    return {"ends": ends, "subflows": subflows, "line": "TCP lane: " + "; ".join(parts)}


def summarize(status: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    wans = _wan_summary(status)
    peers = [{
        "key": element_key("p", p["node_id"]), "name": printable(p["name"] or p["node_id"][:12], MAX_NAME_CHARS),
        "node_id": p["node_id"], "connected": p["connected"], "endpoint": p["endpoint"], "rtt_ms": p["rtt_ms"],
        # The route kind the core reports: direct, punched, or relayed via another node.
        "paths": [{"wan": printable(x["wan"], MAX_NAME_CHARS), "up": x["up"], "remote": x["remote"],
                   "rtt_ms": x["rtt_ms"], "kind": _path_kind(x)} for x in p["paths"]],
        # Hole punches towards this peer that this node took part in (initiated or answered).
        "punch_attempts": int(p.get("punch_attempts") or 0),
    } for p in status.get("peers", [])]
    # Log lines may quote the network (a peer's close reason): one line each, whatever they hold.
    events = [{**e, "message": printable(e["message"])} for e in events]
    # State changes the daemon logged as events (path up/down, WANs, the exit, refusals, reloads).
    interesting = [e for e in events if e.get("event")]
    health = status.get("health")
    return {
        "ok": True, "time": status.get("time", time.time()), "node": status.get("node", {}),
        "router": status.get("router"), "wans": wans, "peers": peers, "system": health_line(health) if health else "-",
        "network": _network_summary(status),
        # This node's hole punching: attempts, punched paths up, requests forwarded for others, refused,
        # not tried (both NATs random: the relay carries the pair); birthday probes (random x open NAT): probe
        # packets sent, extra sockets opened, hits and misses.
        "punch": {k: int((status.get("node", {}).get("punch") or {}).get(k, 0))
                  for k in ("attempts", "successes", "forwarded", "refused", "skipped", "probes_sent",
                            "probe_sockets", "probe_hits", "probe_misses")},
        # The TCP lane (None when off): connections, bytes and each WAN's share of its subflows' bytes.
        "lane": _lane_summary(status),
        "total": {"tx_bps": sum(w["tx_bps"] for w in wans), "rx_bps": sum(w["rx_bps"] for w in wans)},
        "events": interesting[-30:], "log": events[-100:],
    }


def _current() -> dict[str, Any]:
    status = ask("status")
    events = ask("events").get("events", [])
    return summarize(status, events)


@bp.get("/")
def index() -> Any:
    try:
        summary = _current()
    except DaemonDown as exc:
        return render_template("dashboard.html", summary=None, error=str(exc), title="Dashboard"), 503
    return render_template("dashboard.html", summary=summary, error=None, title="Dashboard")


@bp.get("/api/summary")
def api_summary() -> Any:
    try:
        return jsonify(_current())
    except DaemonDown as exc:
        return jsonify(ok=False, error=str(exc)), 503


@bp.get("/metrics")
def metrics() -> Any:
    """The daemon's status and the system's health as Prometheus text: for an admin session, or a scraper
    giving the admin password by Basic auth (the web UI is served on the LAN side only)."""
    allowed = admin_or_basic_auth()
    if allowed is None:
        return Response(LOCKED_OUT + "\n", 429, mimetype="text/plain")
    if not allowed:
        return Response("Log in, or give the admin password by HTTP Basic auth.\n", 401, mimetype="text/plain",
                        headers={"WWW-Authenticate": 'Basic realm="QuicEther metrics"'})
    try:
        status = ask("status")
        status["webui"] = current_app.extensions["qe_sessions"].counters()
        text = render_metrics(status)
    except DaemonDown as exc:
        return Response(f"{exc}\n", 503, mimetype="text/plain")
    return Response(text, mimetype="text/plain; version=0.0.4")
