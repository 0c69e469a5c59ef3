"""A/B system upgrades of the appliance image: the disk has two system partitions (GPT names qe-root-a and
qe-root-b) and one data partition. `quicether upgrade SOURCE` writes the new system into the slot that is
not running, then tells the boot loader to try it once at the next boot (GRUB environment block on the EFI
partition, `pending=<slot>`). The new system confirms itself when it comes up (`slot=<slot>`); if it never
does (it does not boot, the kernel panics and reboots), the next boot starts the old slot again. The data
partition (config, keys, leases) is not touched either way.

SOURCE is a whole disk image (quicether-x86_64.img: its qe-root-a partition is used) or a bare system
partition image (root.img), as a file or a device (a USB stick).
"""

from __future__ import annotations

import os
import re
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SLOTS = ("a", "b")
SLOT_PARTITION = {"a": 2, "b": 3}   # partition numbers of the slots on the appliance's disk
GRUBENV = Path("/boot/efi/EFI/quicether/grubenv")
GRUBENV_SIZE = 1024
GRUBENV_HEADER = b"# GRUB Environment Block\n"
GPT_SIGNATURE = b"EFI PART"
SECTOR = 512
EXT4_MAGIC_OFFSET = 1024 + 0x38
EXT4_MAGIC = b"\x53\xef"
COPY_CHUNK = 4 << 20


class UpgradeError(RuntimeError):
    """The upgrade cannot be done; nothing was changed unless the message says otherwise."""


@dataclass(frozen=True)
class Region:
    """Where the new system's file system lies inside SOURCE."""

    offset: int
    size: int


def read_grubenv(path: Path = GRUBENV) -> dict[str, str]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UpgradeError(f"cannot read the boot loader's environment {path}: {exc.strerror}") from None
    if not data.startswith(GRUBENV_HEADER):
        raise UpgradeError(f"{path} is not a GRUB environment block")
    env = {}
    for line in data[len(GRUBENV_HEADER):].decode(errors="replace").splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


def write_grubenv(env: dict[str, str], path: Path = GRUBENV) -> None:
    """Rewrites the block in place with the same size (GRUB writes it by its disk blocks, so the file must
    never move or grow), and syncs it."""
    body = GRUBENV_HEADER + b"".join(f"{k}={v}\n".encode() for k, v in env.items())
    if len(body) > GRUBENV_SIZE:
        raise UpgradeError("the boot loader's environment is full")
    with open(path, "r+b") as out:
        out.write(body + b"#" * (GRUBENV_SIZE - len(body)))
        out.flush()
        os.fsync(out.fileno())


def running_slot(cmdline: str | None = None) -> str:
    text = cmdline if cmdline is not None else Path("/proc/cmdline").read_text()
    found = re.search(r"\bqe\.slot=([ab])\b", text)
    if not found:
        raise UpgradeError("this system was not started from an A/B appliance image (no qe.slot= on the kernel "
                           "command line); re-flash it instead (image/README.md)")
    return found.group(1)


def _gpt_partition(head: bytes, read_at: Callable[[int, int], bytes], name: str) -> Region | None:
    """The partition called `name` in the GPT whose header is in `head` (sector 1), or None."""
    if head[SECTOR:SECTOR + 8] != GPT_SIGNATURE:
        return None
    entries_lba, count, entry_size = struct.unpack_from("<QII", head, SECTOR + 72)
    table = read_at(entries_lba * SECTOR, count * entry_size)
    for i in range(count):
        entry = table[i * entry_size:(i + 1) * entry_size]
        first, last = struct.unpack_from("<QQ", entry, 32)
        label = entry[56:128].decode("utf-16-le", errors="replace").rstrip("\x00")
        if label == name and first:
            return Region(first * SECTOR, (last - first + 1) * SECTOR)
    raise UpgradeError(f"the disk image has no partition named {name!r}: not a QuicEther image")


def locate_system(source: Path) -> Region:
    """Where the system file system is in `source`: a disk image's qe-root-a partition, or all of a bare
    partition image. Checked to be ext4 either way."""
    try:
        fd = os.open(source, os.O_RDONLY)
    except OSError as exc:
        raise UpgradeError(f"cannot open {source}: {exc.strerror}") from None
    try:
        size = os.lseek(fd, 0, os.SEEK_END)

        def read_at(offset: int, length: int) -> bytes:
            return os.pread(fd, length, offset)

        region = _gpt_partition(read_at(0, 2 * SECTOR), read_at, "qe-root-a") or Region(0, size)
        if read_at(region.offset + EXT4_MAGIC_OFFSET, 2) != EXT4_MAGIC:
            raise UpgradeError(f"{source} holds no system file system (no ext4 at the expected place)")
        return region
    finally:
        os.close(fd)


def disk_of_root() -> Path:
    """The disk the running system booted from (the parent of the device mounted at /)."""
    device = os.stat("/").st_dev
    block = Path(f"/sys/dev/block/{os.major(device)}:{os.minor(device)}").resolve()
    if not (block / "partition").exists():
        raise UpgradeError(f"/ is not on a disk partition ({block.name})")
    return Path("/dev") / block.parent.name


def partition_device(disk: Path, number: int) -> Path:
    # nvme0n1 → nvme0n1p3, mmcblk0 → mmcblk0p3, sda/vda → sda3
    sep = "p" if disk.name[-1].isdigit() else ""
    return disk.with_name(f"{disk.name}{sep}{number}")


def copy_region(source: Path, region: Region, target: Path, progress: bool = True) -> None:
    with open(source, "rb") as src, open(target, "r+b") as out:
        target_size = out.seek(0, os.SEEK_END)
        if region.size > target_size:
            raise UpgradeError(f"the new system ({region.size >> 20} MiB) does not fit {target} "
                               f"({target_size >> 20} MiB); re-flash the whole disk instead")
        out.seek(0)
        src.seek(region.offset)
        done, shown = 0, -1
        while done < region.size:
            chunk = src.read(min(COPY_CHUNK, region.size - done))
            if not chunk:
                raise UpgradeError(f"{source} ended early: the image is incomplete")
            out.write(chunk)
            done += len(chunk)
            percent = done * 100 // region.size
            if progress and percent // 10 != shown:
                shown = percent // 10
                print(f"  {percent:3d}% ({done >> 20} of {region.size >> 20} MiB)", file=sys.stderr)
        out.flush()
        os.fsync(out.fileno())


def upgrade(source: Path, progress: bool = True) -> str:
    """Writes `source` into the idle slot and arms a one-time boot of it; returns that slot."""
    current = running_slot()
    target_slot = SLOTS[1 - SLOTS.index(current)]
    region = locate_system(source)
    env = read_grubenv()
    target = partition_device(disk_of_root(), SLOT_PARTITION[target_slot])
    if progress:
        print(f"writing {source} into slot {target_slot} ({target}); slot {current} keeps running",
              file=sys.stderr)
    copy_region(source, region, target, progress)
    write_grubenv({**env, "pending": target_slot})
    return target_slot


def confirm() -> str | None:
    """Called once the system is up: makes the running slot the default. None on a non-A/B system."""
    try:
        current = running_slot()
        env = read_grubenv()
    except UpgradeError:
        return None
    if env.get("slot") != current or env.get("pending"):
        write_grubenv({**{k: v for k, v in env.items() if k != "pending"}, "slot": current})
    return current
