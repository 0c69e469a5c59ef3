"""The appliance image in qemu, wired into the lab: its first NIC (eth0, the LAN) on a bridge with a LAN
host, its second (eth1, a WAN) on a namespace that plays the ISP (DHCP server, the way to the internet).

    lan host ── br-lan ── tap-lan ══ qemu (eth0: LAN 192.168.50.1) (eth1: WAN, DHCP) ══ tap-wan ── ISP 10.77.0.1

qemu runs in the `vmhost` namespace where the taps live; software emulation (TCG) is used, so it works
where /dev/kvm is missing or broken. The disk is a copy: the built image stays pristine.

Two machines, wired the same way: the x86_64 image boots a PC with UEFI firmware (OVMF) from its disk; the
Raspberry Pi image (arm64) boots qemu's `virt` board (the emulated Pi has no PCI network cards) with the
kernel, initramfs and command line from its own boot partition — the files the Pi's firmware would load —
and the same root file system and data partition from its disk.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.lab.netns import Lab, LabError, Namespace

OVMF = Path("/usr/share/ovmf/OVMF.fd")
ISP_ADDR = "10.77.0.1"
VM_MEMORY_MIB = 1024
PI_BOOT_OFFSET = "1M"  # the Pi image's FAT boot partition starts 1 MiB into the disk (scripts/build-image.sh)


def x86_64_machine() -> list[str]:
    """qemu for the x86_64 image: a PC with UEFI firmware, which starts GRUB from the disk."""
    if not OVMF.exists():
        raise LabError(f"{OVMF} missing (apt install ovmf)")
    return ["qemu-system-x86_64", "-accel", "tcg", "-bios", str(OVMF)]


def rpi_machine(image: Path, workdir: Path) -> list[str]:
    """qemu for the Raspberry Pi image: the arm64 `virt` board (a Cortex-A72, the Pi 4's core) started with
    the kernel and initramfs from the image's boot partition and its cmdline.txt, the Pi's serial console
    swapped for the board's (ttyAMA0)."""
    if shutil.which("qemu-system-aarch64") is None:
        raise LabError("qemu-system-aarch64 missing (apt install qemu-system-arm)")
    for name in ("vmlinuz", "initrd.img", "cmdline.txt"):
        subprocess.run(["mcopy", "-n", "-i", f"{image}@@{PI_BOOT_OFFSET}", f"::/{name}", str(workdir / name)],
                       check=True, capture_output=True)
    cmdline = re.sub(r"\bconsole=\S+\s*", "", (workdir / "cmdline.txt").read_text()).strip()
    return ["qemu-system-aarch64", "-accel", "tcg", "-machine", "virt", "-cpu", "cortex-a72",
            "-kernel", str(workdir / "vmlinuz"), "-initrd", str(workdir / "initrd.img"),
            "-append", f"{cmdline} console=ttyAMA0,115200"]


@dataclass
class ApplianceLab:
    vmhost: Namespace
    lan: Namespace
    disk: Path
    workdir: Path
    machine: list[str] = field(default_factory=x86_64_machine)  # qemu and its board, firmware or kernel
    proc: subprocess.Popen[str] | None = None
    boots: int = 0

    @property
    def console(self) -> Path:
        return self.workdir / f"console-{self.boots}.log"

    def console_text(self) -> str:
        return self.console.read_text(errors="replace") if self.console.exists() else ""

    def power_on(self, sticks: tuple[Path, ...] = ()) -> None:
        """Starts the VM on the lab's disk (a copy of the image), its NICs on the lab's taps; `sticks` are
        attached as more read-only disks (/dev/vdb, /dev/vdc…), like USB sticks with new images."""
        self.boots += 1
        extra = [arg for stick in sticks for arg in ("-drive", f"file={stick},format=raw,if=virtio,readonly=on")]
        # Fixed PCI slots keep the NIC order: slot 4 is eth0 (LAN), slot 5 is eth1 (WAN).
        self.proc = self.vmhost.popen([
            *self.machine, "-m", str(VM_MEMORY_MIB), "-smp", "2",
            "-drive", f"file={self.disk},format=raw,if=virtio", *extra, "-display", "none",
            "-serial", f"file:{self.console}",
            "-netdev", "tap,id=lan,ifname=tap-lan,script=no,downscript=no",
            "-device", "virtio-net-pci,netdev=lan,mac=52:54:00:00:00:01,addr=0x4",
            "-netdev", "tap,id=wan,ifname=tap-wan,script=no,downscript=no",
            "-device", "virtio-net-pci,netdev=wan,mac=52:54:00:00:00:02,addr=0x5",
            "-no-reboot"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.vmhost.lab.on_close(self.proc.kill)

    def wait_off(self, timeout: float) -> None:
        assert self.proc is not None
        self.proc.wait(timeout=timeout)


def build_appliance_lab(lab: Lab, image: Path, workdir: Path, board: str = "x86_64") -> ApplianceLab:
    """The lab around a VM of `image`; `board` is the image's kind: "x86_64" or "rpi"."""
    machine = rpi_machine(image, workdir) if board == "rpi" else x86_64_machine()
    disk = workdir / "disk.img"
    # A sparse copy, removed with the lab: a full copy of each image is gigabytes the run's disk may not have.
    subprocess.run(["cp", "--sparse=always", str(image), str(disk)], check=True)
    lab.on_close(lambda: disk.unlink(missing_ok=True))
    vmhost = lab.add_namespace("vmhost")
    lan = lab.add_namespace("lan")
    for tap in ("tap-lan", "tap-wan"):
        vmhost.run("ip", "tuntap", "add", "dev", tap, "mode", "tap")
        vmhost.ip("link", "set", tap, "up")
    vmhost.ip("link", "add", "br-lan", "type", "bridge")
    vmhost.ip("link", "set", "br-lan", "up")
    vmhost.ip("link", "set", "tap-lan", "master", "br-lan")
    lab.veth(lan, "eth0", vmhost, "lan")
    vmhost.ip("link", "set", "lan", "master", "br-lan")
    # The ISP: an address and a DHCP server on the WAN tap.
    vmhost.ip("addr", "add", f"{ISP_ADDR}/24", "dev", "tap-wan")
    isp_dhcp = vmhost.popen(["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--pid-file=",
                             "--interface=tap-wan", "--bind-interfaces", "--dhcp-range=10.77.0.100,10.77.0.150,1h",
                             f"--dhcp-option=option:router,{ISP_ADDR}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    lab.on_close(isp_dhcp.kill)
    return ApplianceLab(vmhost=vmhost, lan=lan, disk=disk, workdir=workdir, machine=machine)
