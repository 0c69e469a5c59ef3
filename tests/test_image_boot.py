"""Boot test of the x86_64 appliance image (scripts/build-image.sh) in qemu: a LAN host gets a DHCP
lease from it, the web UI answers at http://192.168.50.1/, SSH with the test key works and runs
`quicether status`, and the WAN port got its address from the ISP by DHCP.

scripts/test builds the image with a test key and sets QE_IMAGE and QE_IMAGE_KEY; without them (pytest run
by hand) the test is skipped, since building the image takes minutes."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.lab import Lab
from tests.lab.sites import curl, dhcp_lease
from tests.lab.vm import boot_appliance

IMAGE = os.environ.get("QE_IMAGE")
KEY = os.environ.get("QE_IMAGE_KEY")
# Software emulation on a 2-core machine: firmware, kernel and systemd take one to two minutes.
BOOT_TIMEOUT_S = 300

pytestmark = pytest.mark.skipif(not IMAGE, reason="set QE_IMAGE (scripts/test builds the image and sets it)")


def _ssh(vm_lan: object, key: str, command: str) -> subprocess.CompletedProcess[str]:
    from tests.lab.netns import Namespace

    assert isinstance(vm_lan, Namespace)
    return vm_lan.run("ssh", "-i", key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                      "-o", "ConnectTimeout=10", "-o", "BatchMode=yes", "root@192.168.50.1", command,
                      check=False, timeout=60)


def test_image_boots_serves_dhcp_web_ui_and_ssh(lab: Lab, tmp_path: Path) -> None:
    assert IMAGE and KEY and Path(IMAGE).exists(), f"image {IMAGE} not built"
    vm = boot_appliance(lab, Path(IMAGE), tmp_path)
    start = time.monotonic()
    lease: dict[str, str] | None = None
    while time.monotonic() - start < BOOT_TIMEOUT_S and lease is None:
        assert vm.proc.poll() is None, f"qemu exited: {vm.proc.stderr.read() if vm.proc.stderr else ''}"
        try:
            lease = dhcp_lease(vm.lan, tmp_path / "lease")
        except Exception:  # noqa: BLE001 - not up yet: the appliance is still booting
            time.sleep(2)
    assert lease is not None, f"no DHCP lease within {BOOT_TIMEOUT_S}s; console:\n{vm.console_text()[-3000:]}"
    booted = time.monotonic() - start
    assert lease["router"] == "192.168.50.1" and lease["ip"].startswith("192.168.50.")
    print(f"appliance served a DHCP lease {booted:.0f}s after power-on")
    deadline = time.monotonic() + 120
    page = None
    while time.monotonic() < deadline and page is None:
        page = curl(vm.lan, "http://192.168.50.1/setup/", timeout=5)
        if page is None:
            time.sleep(2)
    assert page is not None and "Welcome to QuicEther" in page
    status = _ssh(vm.lan, str(KEY), "quicether status")
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith("node qe1") and "lan eth0 192.168.50.1/24" in status.stdout
    # Every unit starts on the read-only root (state lives on /data or in memory).
    failed = _ssh(vm.lan, str(KEY), "systemctl --failed --no-legend --plain")
    assert failed.returncode == 0 and failed.stdout.strip() == "", failed.stdout
    wan = _ssh(vm.lan, str(KEY), "ip -4 -br addr show dev eth1")
    assert "10.77.0." in wan.stdout, wan.stdout + wan.stderr
    refused = vm.lan.run("ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o",
                         "BatchMode=yes", "-o", "PubkeyAuthentication=no", "root@192.168.50.1", "true",
                         check=False, timeout=30)
    assert refused.returncode != 0  # no password logins
