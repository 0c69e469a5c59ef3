"""Tests of the network lab itself: links carry traffic at the configured rate, delay and loss, change at
run time, NAT types map and filter as they claim, and nothing is left behind."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.lab import Lab, LinkSpec, NatType, build_wan_lab, sweep_stale_labs
from tests.lab.measure import iperf, ping, start_iperf_server
from tests.lab.netns import RUN_DIR, run
from tests.lab.topology import REPO_ROOT, WanLab


def _namespaces_of(tag: str) -> list[str]:
    out = run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(f"{tag}-")]


def _within(measured: float, expected: float, fraction: float) -> bool:
    return abs(measured - expected) <= expected * fraction


def test_each_wan_carries_traffic_through_its_own_isp(lab: Lab) -> None:
    wl = build_wan_lab(lab, [LinkSpec(), LinkSpec(delay_ms=20)])
    server = wl.addr("server")
    fast = ping(wl.router, server, source=wl.wans[0].router_addr)
    slow = ping(wl.router, server, source=wl.wans[1].router_addr)
    assert fast.received == fast.sent and slow.received == slow.sent
    # The delay exists only on WAN 1's wire: if policy routing sent both out of one ISP they would match.
    assert fast.median_ms < 5 < 15 < slow.median_ms


def test_rate_within_10_percent_both_directions_and_changes_at_run_time(lab: Lab) -> None:
    wl = build_wan_lab(lab, [LinkSpec(rate_mbit=20), LinkSpec(rate_mbit=100)])
    server = wl.addr("server")
    start_iperf_server(wl.host("server"))
    for wan in wl.wans:
        assert wan.spec.rate_mbit is not None
        for reverse in (False, True):
            got = iperf(wl.router, server, bind=wan.router_addr, reverse=reverse).mbit_s
            assert _within(got, wan.spec.rate_mbit, 0.10), (wan.index, reverse, got)
    wl.set_link(1, rate_mbit=40)
    got = iperf(wl.router, server, bind=wl.wans[1].router_addr).mbit_s
    assert _within(got, 40, 0.10), got


def test_delay_line_keeps_up_with_300_mbit(lab: Lab) -> None:
    wl = build_wan_lab(lab, [LinkSpec(rate_mbit=300, delay_ms=10)])
    server = wl.addr("server")
    start_iperf_server(wl.host("server"))
    # Best of two: a noisy neighbour can only slow a run down, never make a link faster than its rate.
    got = max(iperf(wl.router, server, bind=wl.wans[0].router_addr).mbit_s for _ in range(2))
    assert _within(got, 300, 0.10), got


def test_rtt_within_2ms_of_configured_delay_and_changes_at_run_time(lab: Lab) -> None:
    wl = build_wan_lab(lab, [LinkSpec(delay_ms=30)])
    server, source = wl.addr("server"), wl.wans[0].router_addr
    assert abs(ping(wl.router, server, source=source, count=30).median_ms - 30) <= 2
    wl.set_link(0, delay_ms=10)
    assert abs(ping(wl.router, server, source=source, count=30).median_ms - 10) <= 2
    wl.set_link(0, delay_ms=40, jitter_ms=10)
    jittery = ping(wl.router, server, source=source, count=60, interval=0.02)
    assert jittery.received == jittery.sent
    assert abs(jittery.median_ms - 40) <= 3
    assert min(jittery.rtts_ms) >= 40 - 10 - 1
    assert statistics.pstdev(jittery.rtts_ms) > 1.0, "jitter must spread the RTT"


def test_loss_within_2_points_of_configured(lab: Lab) -> None:
    wl = build_wan_lab(lab, [LinkSpec(loss_pct=5)])
    server = wl.addr("server")
    start_iperf_server(wl.host("server"))
    up = iperf(wl.router, server, bind=wl.wans[0].router_addr, udp_mbit=10, seconds=3)
    down = iperf(wl.router, server, bind=wl.wans[0].router_addr, udp_mbit=10, seconds=3, reverse=True)
    assert abs(up.lost_percent - 5) <= 2, up.lost_percent
    assert abs(down.lost_percent - 5) <= 2, down.lost_percent
    wl.set_link(0, loss_pct=0)
    clean = iperf(wl.router, server, bind=wl.wans[0].router_addr, udp_mbit=10, seconds=2)
    assert clean.lost_percent < 1, clean.lost_percent


def test_link_cut_and_unplug_then_restore(lab: Lab) -> None:
    wl = build_wan_lab(lab, [LinkSpec(delay_ms=4)])
    server, source = wl.addr("server"), wl.wans[0].router_addr
    assert ping(wl.router, server, source=source, count=3).received == 3
    wl.set_link(0, up=False)
    assert ping(wl.router, server, source=source, count=3, timeout_s=0.3).received == 0
    assert "NO-CARRIER" not in wl.router.ip("link", "show", "dev", "wan0").stdout
    wl.set_link(0, up=True)
    assert ping(wl.router, server, source=source, count=3).received == 3
    wl.unplug(0)
    assert "NO-CARRIER" in wl.router.ip("link", "show", "dev", "wan0").stdout
    wl.unplug(0, plugged=True)
    time.sleep(0.2)
    assert ping(wl.router, server, source=source, count=3).received == 3


def _probe(wl: WanLab, targets: list[str], listen_s: float = 0.0,
           on_mapped: str | None = None) -> dict[str, object]:
    """Sends from the router's port 5000 on WAN 0 to each target; optionally has host `on_mapped` send to
    the mapping the first target saw while the router listens."""
    args = [sys.executable, "-m", "tests.lab.udpprobe", "probe", "--sport", "5000", "--listen", str(listen_s)]
    for t in targets:
        args += ["--to", t]
    proc = wl.router.popen(args, stdout=subprocess.PIPE, cwd=REPO_ROOT)
    assert proc.stdout is not None
    first = json.loads(proc.stdout.readline())
    if on_mapped:
        mapped = first["observed"][targets[0]]
        assert mapped, "the first server must answer"
        subprocess.run(wl.host(on_mapped).argv([sys.executable, "-m", "tests.lab.udpprobe", "send", "--to",
                                                 mapped, "--sport", "4444", "--text", "unsolicited"]),
                       cwd=REPO_ROOT, check=True, timeout=10)
    result: dict[str, object] = json.loads(proc.stdout.readline())
    proc.wait(timeout=10)
    return result


def _nat_lab(lab: Lab, nat: NatType) -> WanLab:
    wl = build_wan_lab(lab, [LinkSpec(nat=nat)], internet_hosts=("server1", "server2", "stranger"))
    for name in ("server1", "server2"):
        proc = wl.host(name).popen([sys.executable, "-m", "tests.lab.udpprobe", "serve", "--port", "4000"],
                                   stdout=subprocess.PIPE, cwd=REPO_ROOT)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return wl


@pytest.mark.parametrize("nat", list(NatType), ids=lambda n: n.value)
def test_nat_mapping_behaviour(lab: Lab, nat: NatType) -> None:
    wl = _nat_lab(lab, nat)
    targets = [f"{wl.addr('server1')}:4000", f"{wl.addr('server2')}:4000"]
    observed = _probe(wl, targets)["observed"]
    assert isinstance(observed, dict)
    first, second = observed[targets[0]], observed[targets[1]]
    assert first and second, observed
    wan = wl.wans[0]
    if nat is NatType.NONE:
        assert first == second == f"{wan.router_addr}:5000"
    elif nat is NatType.SYMMETRIC:
        assert first.split(":")[0] == second.split(":")[0] == wan.public_addr
        assert first != second, "a symmetric NAT maps each destination to its own port"
    elif nat is NatType.SYMMETRIC_SEQUENTIAL:
        assert first.split(":")[0] == second.split(":")[0] == wan.public_addr
        # Nothing else uses this NAT: the second destination's flow takes the very next port.
        assert int(second.split(":")[1]) == int(first.split(":")[1]) + 1, observed
    else:
        assert first == second == f"{wan.public_addr}:5000", "endpoint-independent mapping keeps one port"


@pytest.mark.parametrize("nat,reachable", [(NatType.FULL_CONE, True), (NatType.PORT_RESTRICTED, False)],
                         ids=["full-cone", "port-restricted"])
def test_nat_filtering_of_unsolicited_senders(lab: Lab, nat: NatType, reachable: bool) -> None:
    wl = _nat_lab(lab, nat)
    result = _probe(wl, [f"{wl.addr('server1')}:4000"], listen_s=2.0, on_mapped="stranger")
    unsolicited = result["unsolicited"]
    assert isinstance(unsolicited, list)
    assert any("unsolicited" in u for u in unsolicited) is reachable, unsolicited


def test_lab_removes_everything_when_the_test_body_fails() -> None:
    with pytest.raises(RuntimeError), Lab() as lab:
        build_wan_lab(lab, [LinkSpec(delay_ms=2)])
        tag = lab.tag
        assert len(_namespaces_of(tag)) == 6  # router, inet, lan, isp0, wire0, server
        raise RuntimeError("test body failed")
    assert _namespaces_of(tag) == []
    assert not (RUN_DIR / tag).exists()


def test_a_killed_labs_leftovers_are_swept_by_the_next_lab() -> None:
    code = ("from tests.lab import Lab, LinkSpec, build_wan_lab\n"
            "lab = Lab().__enter__()\n"
            "build_wan_lab(lab, [LinkSpec(delay_ms=2)])\n"
            "print(lab.tag, flush=True)\n"
            "import time; time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT,
                            env={**os.environ, "PYTHONPATH": str(Path(REPO_ROOT))})
    assert proc.stdout is not None
    tag = proc.stdout.readline().strip()
    assert tag and _namespaces_of(tag)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _namespaces_of(tag), "SIGKILL leaves the namespaces behind: that is what the sweep is for"
    assert tag in sweep_stale_labs()
    assert _namespaces_of(tag) == []
