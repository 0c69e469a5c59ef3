"""Boot tests of the appliance images (scripts/build-image.sh) in qemu.

Both images, first boot: a LAN host gets a DHCP lease from it, the web UI answers at http://192.168.50.1/,
SSH with the test key works and runs `quicether status`, the WAN port got its address from the ISP by DHCP,
no unit failed on the read-only root, no password logins.

The Raspberry Pi image (arm64, emulated on the `virt` board: slow, so only the first boot's checks and the
setup code on its boot partition). The x86_64 image, then: the web UI's one-time
setup code is the same on the console, in its login banner, on the EFI partition and from `quicether
setup-code`; the wizard refuses a wrong one and another Host name, takes the right one, and the code is gone
everywhere after. Then upgrades from "USB sticks": a broken system (an empty file system) written to slot b
does not start and slot a comes back; the real root.img written to slot b starts and confirms itself — and
the config and node key are kept throughout.

scripts/test builds the images with a test key and sets QE_IMAGE (x86_64), QE_RPI_IMAGE and QE_IMAGE_KEY;
without them (pytest run by hand) the tests are skipped, since building an image takes minutes."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.lab import Lab
from tests.lab.sites import curl, dhcp_lease
from tests.lab.vm import ApplianceLab, build_appliance_lab

IMAGE = os.environ.get("QE_IMAGE")
RPI_IMAGE = os.environ.get("QE_RPI_IMAGE")
KEY = os.environ.get("QE_IMAGE_KEY")
# Software emulation on a 2-core machine: firmware, kernel and systemd take 30 s to two minutes on x86_64,
# and several times that for arm64 (every instruction translated).
BOOT_TIMEOUT_S = 300
RPI_BOOT_TIMEOUT_S = 900
API_TIMEOUT_S = 120
GATEWAY_ID = "qe1aaaqeayeaudaocajbifqydiob4ibceqtcqkrmfyydenbwha5dypq"  # any valid node id
UI = "http://192.168.50.1"
PASSWORD = "boot test admin password"


def _ssh(vm: ApplianceLab, command: str) -> subprocess.CompletedProcess[str]:
    assert KEY
    return vm.lan.run("ssh", "-i", KEY, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                      "-o", "ConnectTimeout=10", "-o", "BatchMode=yes", "root@192.168.50.1", command,
                      check=False, timeout=60)


def _wait_booted(vm: ApplianceLab, tmp_path: Path, timeout: float = BOOT_TIMEOUT_S) -> float:
    """Waits for a DHCP lease on the LAN host and the web UI; returns the seconds since power-on."""
    start = time.monotonic()
    lease: dict[str, str] | None = None
    while time.monotonic() - start < timeout and lease is None:
        assert vm.proc is not None and vm.proc.poll() is None, f"qemu exited; console:\n{vm.console_text()[-3000:]}"
        try:
            lease = dhcp_lease(vm.lan, tmp_path / "lease")
        except Exception:  # noqa: BLE001 - not up yet: the appliance is still booting
            time.sleep(2)
    assert lease is not None, f"no DHCP lease within {timeout:.0f}s; console:\n{vm.console_text()[-3000:]}"
    assert lease["router"] == "192.168.50.1" and lease["ip"].startswith("192.168.50.")
    booted = time.monotonic() - start
    page = None
    while time.monotonic() - start < timeout and page is None:
        page = curl(vm.lan, f"{UI}/healthz", timeout=5)
        if page is None:
            time.sleep(2)
    assert page is not None and '"ok":true' in page.replace(" ", "")
    return booted


def _http(vm: ApplianceLab, path: str, *args: str) -> tuple[str, str]:
    """(status code, body) of a request from the LAN host; `args` are more curl options."""
    out = vm.lan.run("curl", "-s", "--max-time", "20", "-w", "\n%{http_code}", *args, f"{UI}{path}", check=False,
                     timeout=30).stdout
    body, _, status = out.rpartition("\n")
    return status, body


def _set_password(vm: ApplianceLab, code: str, jar: Path) -> str:
    """Sends the wizard's first step (setup code and password) as a browser would; the answer's status."""
    status, page = _http(vm, "/setup/", "-c", str(jar), "-b", str(jar))
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert status == "200" and token and "Welcome to QuicEther" in page, (status, page[-500:])
    form = {"csrf_token": token.group(1), "setup_code": code, "password": PASSWORD, "confirm": PASSWORD}
    return _http(vm, "/setup/", "-o", "/dev/null", "-c", str(jar), "-b", str(jar),
                 *[arg for key, value in form.items() for arg in ("--data-urlencode", f"{key}={value}")])[0]


def _check_first_boot(vm: ApplianceLab) -> str:
    """What every image does once booted (the LAN lease and the web UI checked already): SSH with the key
    runs `quicether status`, no unit failed, the WAN has its DHCP address, the root is read-only, passwords
    are refused. Returns the node id."""
    # The web UI and the LAN's DHCP come up before the daemon's API, which starts last (after the WANs and the
    # lane): under emulation that can be seconds later.
    start = time.monotonic()
    status = _ssh(vm, "quicether status")
    while status.returncode != 0 and time.monotonic() - start < API_TIMEOUT_S:
        time.sleep(3)
        status = _ssh(vm, "quicether status")
    journal = _ssh(vm, "journalctl -b -u quicether --no-pager -n 40 -o short-monotonic").stdout
    assert status.returncode == 0, f"{status.stderr}\ndaemon's log:\n{journal}"
    print(f"daemon's API answered {time.monotonic() - start:.0f}s after the web UI")
    # Slow, not crashed: systemd restarts a daemon that exits, and the boot would look fine after.
    restarts = _ssh(vm, "systemctl show -p NRestarts --value quicether").stdout.strip()
    assert restarts == "0", f"the daemon was restarted {restarts} time(s); its log:\n{journal}"
    assert status.stdout.startswith("node qe1") and "lan eth0 192.168.50.1/24" in status.stdout
    # Every unit starts on the read-only root (state lives on /data or in memory).
    failed = _ssh(vm, "systemctl --failed --no-legend --plain")
    assert failed.returncode == 0 and failed.stdout.strip() == "", failed.stdout
    assert "10.77.0." in _ssh(vm, "ip -4 -br addr show dev eth1").stdout  # the WAN's DHCP lease
    assert _ssh(vm, "touch /usr/bin/x").returncode != 0  # the system partition is read-only
    refused = vm.lan.run("ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o",
                         "BatchMode=yes", "-o", "PubkeyAuthentication=no", "root@192.168.50.1", "true",
                         check=False, timeout=30)
    assert refused.returncode != 0  # no password logins
    return status.stdout.split()[1]


@pytest.mark.skipif(not RPI_IMAGE, reason="set QE_RPI_IMAGE (scripts/test sets it unless QE_TEST_RPI=0)")
def test_rpi_image_boots_and_serves_the_lan(lab: Lab, tmp_path: Path) -> None:
    assert RPI_IMAGE and KEY and Path(RPI_IMAGE).exists(), f"image {RPI_IMAGE} not built"
    vm = build_appliance_lab(lab, Path(RPI_IMAGE), tmp_path, board="rpi")
    vm.power_on()
    print(f"first boot (arm64, emulated): DHCP lease {_wait_booted(vm, tmp_path, RPI_BOOT_TIMEOUT_S):.0f}s "
          "after power-on")
    _check_first_boot(vm)
    assert _ssh(vm, "uname -m").stdout.strip() == "aarch64"
    # The setup code's copy on the boot partition (QE-EFI, FAT), the one readable from the card.
    code = _ssh(vm, "quicether setup-code").stdout.strip()
    assert re.fullmatch(r"[A-Z2-9]{4}-[A-Z2-9]{4}-[A-Z2-9]{4}", code), code
    assert code in _ssh(vm, "cat /boot/efi/quicether-setup-code.txt").stdout
    assert _ssh(vm, "test -e /boot/efi/config.txt").returncode == 0  # that is the Pi's boot partition


@pytest.mark.skipif(not IMAGE, reason="set QE_IMAGE (scripts/test builds the image and sets it)")
def test_image_boots_serves_the_lan_and_upgrades_keeping_its_config(lab: Lab, tmp_path: Path) -> None:
    assert IMAGE and KEY and Path(IMAGE).exists(), f"image {IMAGE} not built"
    vm = build_appliance_lab(lab, Path(IMAGE), tmp_path)
    broken = tmp_path / "broken-root.img"  # a file system without a kernel: GRUB cannot start it
    subprocess.run(["mkfs.ext4", "-q", "-L", "qe-root", str(broken), "64M"], check=True)
    sticks = (Path(IMAGE).parent / "root.img", broken)  # /dev/vdb, /dev/vdc
    vm.power_on(sticks)
    print(f"first boot: DHCP lease {_wait_booted(vm, tmp_path):.0f}s after power-on")
    node_id = _check_first_boot(vm)
    # The setup code: one code, where the owner looks (console, its login banner, the EFI partition, SSH).
    code = _ssh(vm, "quicether setup-code").stdout.strip()
    assert re.fullmatch(r"[A-Z2-9]{4}-[A-Z2-9]{4}-[A-Z2-9]{4}", code), code
    assert f"web UI setup code: {code}" in vm.console_text()
    assert code in _ssh(vm, "cat /boot/efi/quicether-setup-code.txt").stdout
    assert code in _ssh(vm, "cat /etc/issue.d/50-quicether-setup-code.issue").stdout
    # The web UI: only for its own names; the first password only with the code, which is then used up.
    assert _http(vm, "/setup/", "-H", "Host: evil.example")[0] == "400"
    assert _set_password(vm, "WRNG-WRNG-WRNG", tmp_path / "cookies") == "403"
    assert _set_password(vm, code, tmp_path / "cookies") == "302"
    # The web UI runs unprivileged (the daemon bound port 80 for it); the config stays root's.
    users = _ssh(vm, "for p in /proc/[0-9]*; do tr '\\0' ' ' <$p/cmdline 2>/dev/null | grep -q 'm webui --confi[g]' "
                     "&& stat -c %U $p; done").stdout.split()
    assert users == ["quicether-web"], users
    assert _ssh(vm, "stat -L -c %U:%a /etc/quicether/quicether.toml").stdout.strip() == "root:600"
    assert _ssh(vm, "test -e /boot/efi/quicether-setup-code.txt").returncode == 1
    assert _ssh(vm, "test -e /run/quicether/setup-code.issue").returncode == 1
    gone = _ssh(vm, "quicether setup-code")
    assert gone.returncode == 0 and gone.stdout == "" and "already set" in gone.stderr
    assert _http(vm, "/setup/")[0] == "302"  # the wizard's first step is closed
    added = _ssh(vm, f"quicether add-peer gw {GATEWAY_ID} --allowed-ips 10.99.0.1/32 --endpoint 10.77.0.1:4433")
    assert added.returncode == 0, added.stderr

    assert "qe.slot=a" in _ssh(vm, "cat /proc/cmdline").stdout

    # A broken upgrade: slot b cannot start, the loader falls back to slot a, which stays the default.
    assert _ssh(vm, "quicether upgrade /dev/vdc").returncode == 0
    _ssh(vm, "systemctl reboot")
    vm.wait_off(timeout=120)  # qemu runs with -no-reboot: a reboot powers it off; power on again
    vm.power_on(sticks)
    print(f"after the broken upgrade: DHCP lease {_wait_booted(vm, tmp_path):.0f}s after power-on")
    assert "qe.slot=a" in _ssh(vm, "cat /proc/cmdline").stdout
    env = _ssh(vm, "cat /boot/efi/EFI/quicether/grubenv").stdout
    assert "slot=a" in env and "pending=b" not in env, env

    # The real upgrade: slot b is written while slot a runs, then a reboot starts it.
    upgraded = _ssh(vm, "quicether upgrade /dev/vdb")
    assert upgraded.returncode == 0, upgraded.stderr
    assert "slot b written" in upgraded.stdout and "100%" in upgraded.stderr
    assert "pending=b" in _ssh(vm, "cat /boot/efi/EFI/quicether/grubenv").stdout
    _ssh(vm, "systemctl reboot")
    vm.wait_off(timeout=120)
    vm.power_on(sticks)
    print(f"after the upgrade: DHCP lease {_wait_booted(vm, tmp_path):.0f}s after power-on")
    assert "qe.slot=b" in _ssh(vm, "cat /proc/cmdline").stdout
    again = _ssh(vm, "quicether status")
    assert again.returncode == 0, again.stderr
    assert again.stdout.split()[1] == node_id  # same node key
    assert f"peer gw {GATEWAY_ID}" in again.stdout  # same config
    # The new slot confirmed itself once the daemon ran: it is the default from now on.
    deadline = time.monotonic() + 60
    env = ""
    while time.monotonic() < deadline and "slot=b" not in env:
        env = _ssh(vm, "cat /boot/efi/EFI/quicether/grubenv").stdout
        time.sleep(2)
    assert "slot=b" in env and "pending" not in env, env
    assert _ssh(vm, "systemctl --failed --no-legend --plain").stdout.strip() == ""
