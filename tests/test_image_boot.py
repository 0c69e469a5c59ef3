"""Boot test of the x86_64 appliance image (scripts/build-image.sh) in qemu: a LAN host gets a DHCP
lease from it, the web UI answers at http://192.168.50.1/, SSH with the test key works and runs
`quicether status`, the WAN port got its address from the ISP by DHCP, no unit failed on the read-only
root. Then the upgrade flow: re-flash the system partitions (EFI + system) and boot again — the config
and the node key on the data partition are kept.

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
from tests.lab.vm import ApplianceLab, build_appliance_lab, write_partition

IMAGE = os.environ.get("QE_IMAGE")
KEY = os.environ.get("QE_IMAGE_KEY")
# Software emulation on a 2-core machine: firmware, kernel and systemd take 30 s to two minutes.
BOOT_TIMEOUT_S = 300
GATEWAY_ID = "qe1aaaqeayeaudaocajbifqydiob4ibceqtcqkrmfyydenbwha5dypq"  # any valid node id


def _ssh(vm: ApplianceLab, command: str) -> subprocess.CompletedProcess[str]:
    assert KEY
    return vm.lan.run("ssh", "-i", KEY, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                      "-o", "ConnectTimeout=10", "-o", "BatchMode=yes", "root@192.168.50.1", command,
                      check=False, timeout=60)


def _wait_booted(vm: ApplianceLab, tmp_path: Path) -> float:
    """Waits for a DHCP lease on the LAN host and the web UI; returns the seconds since power-on."""
    start = time.monotonic()
    lease: dict[str, str] | None = None
    while time.monotonic() - start < BOOT_TIMEOUT_S and lease is None:
        assert vm.proc is not None and vm.proc.poll() is None, f"qemu exited; console:\n{vm.console_text()[-3000:]}"
        try:
            lease = dhcp_lease(vm.lan, tmp_path / "lease")
        except Exception:  # noqa: BLE001 - not up yet: the appliance is still booting
            time.sleep(2)
    assert lease is not None, f"no DHCP lease within {BOOT_TIMEOUT_S}s; console:\n{vm.console_text()[-3000:]}"
    assert lease["router"] == "192.168.50.1" and lease["ip"].startswith("192.168.50.")
    booted = time.monotonic() - start
    page = None
    while time.monotonic() - start < BOOT_TIMEOUT_S and page is None:
        page = curl(vm.lan, "http://192.168.50.1/setup/", timeout=5)
        if page is None:
            time.sleep(2)
    assert page is not None and "Welcome to QuicEther" in page
    return booted


@pytest.mark.skipif(not IMAGE, reason="set QE_IMAGE (scripts/test builds the image and sets it)")
def test_image_boots_serves_the_lan_and_keeps_its_config_across_a_reflash(lab: Lab, tmp_path: Path) -> None:
    assert IMAGE and KEY and Path(IMAGE).exists(), f"image {IMAGE} not built"
    vm = build_appliance_lab(lab, Path(IMAGE), tmp_path)
    vm.power_on()
    print(f"first boot: DHCP lease {_wait_booted(vm, tmp_path):.0f}s after power-on")
    status = _ssh(vm, "quicether status")
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith("node qe1") and "lan eth0 192.168.50.1/24" in status.stdout
    node_id = status.stdout.split()[1]
    # Every unit starts on the read-only root (state lives on /data or in memory).
    failed = _ssh(vm, "systemctl --failed --no-legend --plain")
    assert failed.returncode == 0 and failed.stdout.strip() == "", failed.stdout
    assert "10.77.0." in _ssh(vm, "ip -4 -br addr show dev eth1").stdout  # the WAN's DHCP lease
    assert _ssh(vm, "touch /usr/bin/x").returncode != 0  # the system partition is read-only
    refused = vm.lan.run("ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o",
                         "BatchMode=yes", "-o", "PubkeyAuthentication=no", "root@192.168.50.1", "true",
                         check=False, timeout=30)
    assert refused.returncode != 0  # no password logins
    added = _ssh(vm, f"quicether add-peer gw {GATEWAY_ID} --allowed-ips 10.99.0.1/32 --endpoint 10.77.0.1:4433")
    assert added.returncode == 0, added.stderr

    # Upgrade: power off, write new system partitions (EFI loader, system) over the old ones, boot.
    _ssh(vm, "systemctl poweroff")
    vm.wait_off(timeout=120)
    image_dir = Path(IMAGE).parent
    write_partition(vm.disk, 1, image_dir / "esp.img")
    write_partition(vm.disk, 2, image_dir / "root.img")
    vm.power_on()
    print(f"after the re-flash: DHCP lease {_wait_booted(vm, tmp_path):.0f}s after power-on")
    again = _ssh(vm, "quicether status")
    assert again.returncode == 0, again.stderr
    assert again.stdout.split()[1] == node_id  # same node key
    assert f"peer gw {GATEWAY_ID}" in again.stdout  # same config
