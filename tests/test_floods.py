"""Unauthenticated floods at the gateway's QUIC port while a bond is up (issue "Reliability, security and
operability"): garbage datagrams, handshakes with fresh unknown keys and a replayed Initial cost the
gateway bounded memory and a bounded number of log lines, handshakes past the admission limit are
answered with a QUIC Retry, and the bond keeps carrying traffic. How much goodput it keeps is measured by
scripts/bench-flood, not asserted here."""

from __future__ import annotations

from pathlib import Path

from quicether.identity import decode_node_id
from tests.lab import Lab, LinkSpec
from tests.lab import nodes as qe
from tests.lab.bond import build_bond_lab
from tests.lab.measure import ping, process_usage

FLOODER = Path(__file__).resolve().parents[1] / "core" / "target" / "release" / "qe-flood"
SECONDS = 8


def test_floods_at_the_quic_port_cost_bounded_memory_and_log_lines_and_the_bond_keeps_working(
        lab: Lab, tmp_path: Path) -> None:
    bond = build_bond_lab(lab, [LinkSpec(rate_mbit=100, delay_ms=5)], tmp_path, extra_hosts=("attacker",))
    assert bond.gateway.proc is not None
    pid = bond.gateway.proc.pid
    rss_before = process_usage(pid).rss_bytes
    attacker = bond.wl.host("attacker")
    target = f"{bond.wl.addr('gateway')}:{qe.QUIC_PORT}"
    key = decode_node_id(bond.gateway.node_id).hex()
    floods = [attacker.popen([str(FLOODER), "--target", target, "--mode", mode, "--seconds", str(SECONDS),
                              "--rate", "5000", "--concurrency", "48", "--server-key", key], stdout=-1, stderr=-1)
              for mode in ("handshakes", "garbage", "replay")]

    during = ping(bond.lan, bond.dc_addr, count=10, interval=0.5)
    rss_peak = process_usage(pid).rss_bytes
    for flood in floods:
        _, err = flood.communicate(timeout=SECONDS + 60)
        assert flood.returncode == 0, err

    assert during.received >= 8, f"the bond carried {during.received} of 10 pings during the flood"
    node = bond.gateway.status()["node"]
    assert node["refused_handshakes"] > 100, node
    assert node["handshakes_retried"] > 0, "past the admission limit handshakes must prove their address"
    refusal_lines = qe.read_log(bond.gateway).count("refused handshake")
    # At most 5 refusal reports a second (quicether_proto::refusals), whatever the flood.
    assert refusal_lines <= 5 * (SECONDS + 4), refusal_lines
    assert rss_peak - rss_before < 40e6, f"the gateway grew {(rss_peak - rss_before) / 1e6:.0f} MB under the flood"
    assert bond.site.status()["peers"][0]["connected"] and ping(bond.lan, bond.dc_addr, count=3).received == 3
