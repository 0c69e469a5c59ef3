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

