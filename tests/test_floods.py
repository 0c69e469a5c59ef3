"""Unauthenticated floods at the gateway's QUIC port while a bond is up (issue "Reliability, security and
operability"): garbage datagrams, handshakes with fresh unknown keys and a replayed Initial cost the
gateway bounded memory and a bounded number of log lines, handshakes past the admission limit are
answered with a QUIC Retry, and the bond keeps carrying traffic (how much goodput it keeps is measured
by scripts/bench-flood). At a mesh gateway's DHT port: garbage and bogus requests leave the bond's
goodput and members' DHT answers, and its stores filled past their bounds leave its memory bounded."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

from quicether import metrics
from quicether.identity import decode_node_id
from tests.lab import Lab, LinkSpec
from tests.lab import nodes as qe
from tests.lab.bond import build_bond_lab
from tests.lab.dht import probe_dht
from tests.lab.floods import UsageSampler, build_dht_flood_lab, finish
from tests.lab.measure import iperf, ping, process_usage, start_iperf_server

# core/io/src/discovery.rs: the mutable items a DHT server keeps.
SERVER_MAX_MUTABLE_ITEMS = 1000

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


def test_floods_at_the_dht_port_leave_the_bond_and_the_members_answers_and_the_stores_stay_bounded(
        lab: Lab, tmp_path: Path) -> None:
    """The gateway serves its network's DHT ([discovery] server). Garbage and bogus KRPC requests at its
    DHT port, during a transfer through the bond, cost it bounded memory; the bond keeps >= 80 % of its
    goodput; a member's DHT requests are still answered (the flooding address gets its own share of the
    request rate, not everyone's). Then eight attacker addresses fill its stores with valid items and
    announces: past the store bound, its RSS stays bounded."""
    fl = build_dht_flood_lab(lab, tmp_path)
    s0, s1 = fl.mesh.sites
    server = start_iperf_server(fl.mesh.hub)
    gateway_overlay = fl.mesh.address(fl.mesh.gateway)
    base = iperf(s0.ns, gateway_overlay, seconds=3, streams=4, reverse=True).mbit_s
    counters_before = fl.dht_counters()
    rss_before = process_usage(fl.gateway_pid).rss_bytes

    floods = [fl.flood("garbage", SECONDS, 20000, source=0), fl.flood("dht-queries", SECONDS, 20000, source=1)]
    time.sleep(1)  # the floods are on before the transfer and the member's requests start
    probe: list[tuple[int, int]] = []
    prober = threading.Thread(target=lambda: probe.append(probe_dht(s1.ns, fl.target, 30, 0.1)))
    with UsageSampler(fl.gateway_pid) as usage:
        prober.start()
        during = iperf(s0.ns, gateway_overlay, seconds=3, streams=4, reverse=True).mbit_s
        prober.join()
    for flood in floods:
        finish(flood, SECONDS + 30)
    counters = fl.dht_counters()
    print(f"DHT floods: goodput {during:.1f} of {base:.1f} Mbit/s, gateway cpu {usage.cpu_share * 100:.0f} %, "
          f"rss {rss_before / 1e6:.1f} -> peak {usage.peak_rss / 1e6:.1f} MB, member answered {probe}, "
          f"counters {counters}")
    assert during >= 0.8 * base, f"the bond kept {during:.1f} of {base:.1f} Mbit/s"
    sent, answered = probe[0]
    assert answered >= 0.9 * sent, f"the member's DHT requests: {answered} of {sent} answered"
    refused = counters["server_refused_source_rate"] - counters_before["server_refused_source_rate"]
    assert refused > 1000, counters
    assert usage.peak_rss - rss_before < 30e6, f"the gateway grew {(usage.peak_rss - rss_before) / 1e6:.0f} MB"
    # The refusals are in the metrics, by cause.
    scraped = metrics.render(fl.mesh.gateway.status())
    assert re.search(r'^quicether_dropped_total\{area="dht_server",cause="source_rate"\} (\d+)$', scraped, re.M)
    assert int(re.findall(r'area="dht_server",cause="source_rate"\} (\d+)', scraped)[0]) >= refused

    # Its stores, driven past their bound: 8 addresses x 150 requests/s for 10 s (the total rate lets 200/s
    # through), three valid mutable items for each announce.
    stores = [fl.flood("dht-store", 10, 150, source=i) for i in range(len(fl.sources))]
    with UsageSampler(fl.gateway_pid) as filling:
        answers = [json.loads(finish(flood, 60)) for flood in stores]
    accepted = sum(a["accepted"] for a in answers)
    print(f"DHT stores: {accepted} items and announces accepted, {sum(a['errors'] for a in answers)} errors,"
          f" gateway rss peak {filling.peak_rss / 1e6:.1f} MB (before the floods {rss_before / 1e6:.1f})")
    assert accepted * 3 // 4 > SERVER_MAX_MUTABLE_ITEMS, answers
    assert filling.peak_rss - rss_before < 30e6, f"the gateway grew {(filling.peak_rss - rss_before) / 1e6:.0f} MB"
    assert probe_dht(s1.ns, fl.target, 10, 0.1)[1] >= 9, "the member is answered after the floods"
    server.terminate()
