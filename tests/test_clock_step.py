"""Issue 15, faults: the wall clock stepping (an NTP step on a board without an RTC) under a running mesh.

The network's admin node (the gateway, which admits the site by its membership certificate) runs under
libfaketime with its offset in a file the test rewrites: only the wall clock steps (FAKETIME_DONT_FAKE_
MONOTONIC), as an NTP step does, for Python's time.time() and the Rust core's SystemTime alike (both read
it through libc's clock_gettime, which the preloaded library replaces). The timers (path health, keepalives,
the daemon's rechecks) run on the monotonic clock and must not notice; the certificates must be judged by
the wall clock as it is after each step: kept through steps of an hour and a day either way, judged expired
when the clock passes their end, and accepted again once it is back (not refused for good)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from quicether import network
from quicether.daemon.mesh import RECHECK_S
from quicether.identity import load
from tests.lab import Lab
from tests.lab import nodes as qe
from tests.lab.measure import wait_for
from tests.lab.mesh import make_member

FAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
GATEWAY_OVERLAY = "100.64.0.1"
PING_INTERVAL_S = 0.2
# Each step is held past one recheck of the admitted members' certificates (the daemon's RECHECK_S).
HOLD_S = RECHECK_S + 3
_SEQ = re.compile(r"icmp_seq=(\d+) ")


def _step(offset_file: Path, offset: str) -> None:
    """Steps the gateway's wall clock to `offset` from the real time (libfaketime re-reads the file at each
    wall-clock read: FAKETIME_NO_CACHE; its cache, FAKETIME_CACHE_DURATION, would hold a backward step for
    as long as the step, as it expires by the faked clock)."""
    offset_file.write_text(offset + "\n")


def _site_connected(gateway: qe.NodeSpec) -> bool:
    members = gateway.status()["node"]["network"]["members"]
    return any(m["name"] == "s" and m["connected"] for m in members)


@pytest.mark.skipif(not FAKETIME.exists(), reason="libfaketime is not installed (scripts/setup installs it)")
def test_wall_clock_steps_keep_the_bond_and_certificates_are_judged_by_the_clock_after_the_step(
        lab: Lab, tmp_path: Path) -> None:
    ns_site, ns_gw = qe.two_hosts(lab)  # site 10.1.0.1, gateway 10.1.0.2 (mesh.GATEWAY_ENDPOINT)
    gateway = qe.make_node(ns_gw, "gw", "", tmp_path)
    site = qe.make_node(ns_site, "s", "", tmp_path)
    net = network.create(gateway.state_dir, "home", load(gateway.state_dir / "node.key"), admin_name="gw")
    make_member(gateway, net.members[0], None)
    make_member(site, network.issue(net, load(site.state_dir / "node.key").public_key, "s"), gateway)
    for node in (gateway, site):
        node.sections["discovery"]["lan"] = False
    offset_file = tmp_path / "gw-clock"
    offset_file.write_text("+0\n")
    # Only the wall clock is faked. (libfaketime 0.9.10 also makes Python's time.sleep fail with EINVAL, a
    # fault of its own: the daemon's paths in this test sleep only through asyncio and tokio, which do not.)
    gateway.env = {"LD_PRELOAD": str(FAKETIME), "FAKETIME_TIMESTAMP_FILE": str(offset_file),
                   "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    qe.start(gateway)
    qe.start(site)
    wait_for(lambda: _site_connected(gateway), timeout=15)

    # Steps of an hour and a day either way while pings run through the tunnel: nothing may notice.
    steps = ["+1h", "+1d", "-1h", "-1d", "+0"]
    count = int(len(steps) * HOLD_S / PING_INTERVAL_S)
    pinger = site.ns.popen(["ping", "-n", "-c", str(count), "-i", str(PING_INTERVAL_S), "-W", "1", GATEWAY_OVERLAY],
                           stdout=-1, stderr=-1)
    skew = {}
    for offset in steps:
        _step(offset_file, offset)
        skew[offset] = gateway.status()["time"] - time.time()
        time.sleep(HOLD_S)
        assert _site_connected(gateway), f"after the step to {offset}: {qe.read_log(gateway)[-3000:]}"
    out, _ = pinger.communicate(timeout=60)
    received = sorted({int(s) for s in _SEQ.findall(out)})
    lost = count - len(received)
    longest_gap = max(b - a for a, b in zip([0, *received], [*received, count + 1], strict=False)) - 1
    # The faked clock reached the daemon (its status reports the stepped time).
    assert abs(skew["+1d"] - 86400) < 5 and abs(skew["-1d"] + 86400) < 5 and abs(skew["+0"]) < 5, skew
    assert lost <= 2 and longest_gap * PING_INTERVAL_S <= 1.0, f"{lost} of {count} pings lost: {out[-2000:]}"

    # Past the end of the site's certificate (365 days): the core's recheck (its own wall-clock read) cuts
    # the site off as expired, and refuses it while the clock says so.
    _step(offset_file, "+400d")
    wait_for(lambda: not _site_connected(gateway), timeout=HOLD_S + 5)
    assert "cut off: its certificate expired" in qe.read_log(gateway)
    # The clock comes back: the site's next dial is admitted again, its certificate judged anew.
    _step(offset_file, "+0")
    back_s = wait_for(lambda: _site_connected(gateway), timeout=30)
    assert site.ns.run("ping", "-c", "3", "-i", "0.2", "-W", "1", GATEWAY_OVERLAY, check=False).returncode == 0
    log = qe.read_log(gateway)
    assert "Traceback" not in log and "Traceback" not in qe.read_log(site)
    print(f"clock steps {steps}: {lost} of {count} pings lost, longest gap {longest_gap * PING_INTERVAL_S:.1f} s;"
          f" at +400 d the site was cut off, back {back_s:.1f} s after the clock was")
