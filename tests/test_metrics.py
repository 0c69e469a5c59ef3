"""System health and the Prometheus text metrics: from the CLI's status dict and the web UI's /metrics."""

from __future__ import annotations

import copy
import os
import re

from quicether import metrics
from tests.webui_fixtures import SAMPLE_STATUS

# One sample line of the exposition format: name, optional labels, a number.
SAMPLE_LINE = re.compile(r'^quicether_[a-z_]+(\{([a-z_]+="(?:[^"\\\n]|\\.)*",?)+\})? -?[0-9.e+-]+$')


def samples_of(text: str) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) quicether_[a-z_]+ .+$", line), line
            continue
        assert SAMPLE_LINE.match(line), line
        name, value = line.rsplit(" ", 1)
        values[name] = float(value)
    return values


def test_health_reads_this_machine() -> None:
    metrics.system_health()
    health = metrics.system_health()
    assert len(health["cpu_load"]) == os.cpu_count()
    assert all(0.0 <= load <= 1.0 for load in health["cpu_load"])
    assert 0 < health["memory_available_bytes"] <= health["memory_total_bytes"]
    assert health["uptime_s"] > 0 and health["process_rss_bytes"] > 1 << 20
    # This process's fds (listing them opens one more for a moment).
    assert abs(health["process_open_fds"] - len(os.listdir("/proc/self/fd"))) <= 1


def test_render_gives_one_block_per_metric_and_escapes_labels() -> None:
    status = copy.deepcopy(SAMPLE_STATUS)
    status["peers"][0]["name"] = 'odd"name\\with\nnewline'
    status["health"] = metrics.system_health()
    text = metrics.render(status)
    samples = samples_of(text)
    # Each metric's HELP and TYPE appear once, whatever the number of peers and paths.
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(types) == len(set(types))
    peer = 'peer="odd\\"name\\\\with\\nnewline"'
    paths = status["peers"][0]["paths"]
    for path in paths:
        labels = f'{{{peer},wan="{path["wan"]}",kind="{path.get("kind", "")}"}}'
        assert samples[f"quicether_path_sent_bytes_total{labels}"] == path["tx_bytes"]
        assert samples[f"quicether_path_up{labels}"] == (1.0 if path["up"] else 0.0)
    assert samples["quicether_daemon_open_fds"] >= 3
    assert f'quicether_cpu_load_ratio{{core="{(os.cpu_count() or 1) - 1}"}}' in samples



def test_every_drop_counter_appears_with_its_cause() -> None:
    status = copy.deepcopy(SAMPLE_STATUS)
    node = status.setdefault("node", {})
    node.update({"no_route_drops": 1, "refused_handshakes": 2, "handshakes_dropped": 3, "api_refused_busy": 4,
                 "api_evicted_waiting": 27,
                 "relay": {"forwarded_packets": 9, "dropped_rate": 5, "dropped_queue": 6, "received_dropped": 7},
                 "punch": {"attempts": 1, "refused": 8},
                 "dht": {"counters": {"found": 3, "replay": 10, "non_member": 11, "server_refused_source_rate": 12,
                                      "server_refused_total_rate": 13, "server_answered": 99}},
                 "lan_discovery": {"resolved": 2, "foreign_network": 14, "full": 15}})
    peer = status["peers"][0]
    peer.update({"tx_dropped": 16 + 21 + 22, "tx_dropped_no_path": 16, "tx_dropped_queue_full": 21,
                 "tx_dropped_refused": 22, "rx_dropped": 17, "resend_evicted": 23})
    # 19 + 24 skipped: 24 of them for the buffer's bound.
    peer.setdefault("reorder", {}).update({"duplicates": 18, "skipped": 19 + 24, "overflowed": 24, "late": 20})
    status["webui"] = {"sessions": 64, "sessions_evicted_anonymous": 25, "sessions_evicted_logged_in": 26}
    samples = samples_of(metrics.render(status))
    drops = {name: value for name, value in samples.items() if name.startswith("quicether_dropped_total{")}
    who = f'peer="{peer["name"] or peer["node_id"]}",'
    for labels, value in [('area="tunnel",cause="no_route"', 1), ('area="handshake",cause="key_not_allowed"', 2),
                          ('area="handshake",cause="too_many_in_flight"', 3), ('area="api",cause="busy"', 4),
                          ('area="relay",cause="rate"', 5), ('area="relay",cause="queue"', 6),
                          ('area="relayed_receive",cause="non_member_or_queue_full"', 7),
                          ('area="punch",cause="refused"', 8), ('area="dht_record",cause="replay"', 10),
                          ('area="dht_record",cause="non_member"', 11), ('area="dht_server",cause="source_rate"', 12),
                          ('area="dht_server",cause="total_rate"', 13),
                          ('area="lan_discovery",cause="foreign_network"', 14),
                          ('area="lan_discovery",cause="full"', 15),
                          (who + 'area="bond_send",cause="no_path"', 16),
                          (who + 'area="bond_receive",cause="unknown_frame"', 17),
                          (who + 'area="reorder",cause="duplicate"', 18),
                          (who + 'area="reorder",cause="gap_skipped"', 19),
                          (who + 'area="send_queue",cause="full"', 21),
                          (who + 'area="bond_send",cause="refused_by_quic"', 22),
                          (who + 'area="resend_memory",cause="full"', 23),
                          (who + 'area="reorder",cause="full"', 24),
                          ('area="web_session",cause="evicted_anonymous"', 25),
                          ('area="web_session",cause="evicted_logged_in"', 26),
                          ('area="api",cause="evicted_waiting"', 27)]:
        assert drops.pop(f"quicether_dropped_total{{{labels}}}") == value, labels
    # Nothing that is not a drop (forwarded, found, answered, resolved, late: delivered) is one.
    assert not drops, drops
