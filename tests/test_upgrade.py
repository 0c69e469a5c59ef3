"""A/B upgrade logic without a VM: the GRUB environment block, finding the system in a disk image or a bare
partition image, the slot on the kernel command line, partition device names, a new system that does not
fit. The full flow (write slot b, reboot into it, confirm) runs in the image's boot test."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from quicether import upgrade

EXT4_MAGIC_AT = upgrade.EXT4_MAGIC_OFFSET


def _ext4_like(path: Path, size: int) -> None:
    with open(path, "wb") as out:
        out.truncate(size)
        out.seek(EXT4_MAGIC_AT)
        out.write(upgrade.EXT4_MAGIC)


def test_grubenv_round_trip_keeps_the_block_size(tmp_path: Path) -> None:
    env = tmp_path / "grubenv"
    env.write_bytes(upgrade.GRUBENV_HEADER + b"slot=a\n" + b"#" * (1024 - len(upgrade.GRUBENV_HEADER) - 7))
    assert upgrade.read_grubenv(env) == {"slot": "a"}
    upgrade.write_grubenv({"slot": "a", "pending": "b"}, env)
    assert env.stat().st_size == 1024 and upgrade.read_grubenv(env) == {"slot": "a", "pending": "b"}
    with pytest.raises(upgrade.UpgradeError, match="full"):
        upgrade.write_grubenv({"x": "y" * 2000}, env)
    (tmp_path / "other").write_text("hello")
    with pytest.raises(upgrade.UpgradeError, match="not a GRUB environment block"):
        upgrade.read_grubenv(tmp_path / "other")


def test_grub_agrees_on_the_format(tmp_path: Path) -> None:
    env = tmp_path / "grubenv"
    subprocess.run(["grub-editenv", str(env), "create"], check=True)
    subprocess.run(["grub-editenv", str(env), "set", "slot=a"], check=True)
    upgrade.write_grubenv({**upgrade.read_grubenv(env), "pending": "b"}, env)
    listed = subprocess.run(["grub-editenv", str(env), "list"], capture_output=True, text=True, check=True).stdout
    assert listed.split() == ["slot=a", "pending=b"]


def test_running_slot_comes_from_the_kernel_command_line() -> None:
    assert upgrade.running_slot("root=PARTUUID=x ro qe.slot=b quiet") == "b"
    with pytest.raises(upgrade.UpgradeError, match="re-flash"):
        upgrade.running_slot("root=/dev/sda2 ro")


def test_the_system_is_found_in_a_disk_image_or_a_bare_partition(tmp_path: Path) -> None:
    bare = tmp_path / "root.img"
    _ext4_like(bare, 4 << 20)
    assert upgrade.locate_system(bare) == upgrade.Region(0, 4 << 20)
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"")
    with open(disk, "wb") as out:
        out.truncate(16 << 20)
    subprocess.run(["sfdisk", "--quiet", str(disk)], check=True, text=True, input=(
        'label: gpt\nstart=2048, size=4096, name="esp"\nsize=8192, name="qe-root-a"\nsize=8192, name="qe-root-b"\n'))
    with open(disk, "r+b") as out:
        out.seek(6144 * 512 + EXT4_MAGIC_AT)
        out.write(upgrade.EXT4_MAGIC)
    assert upgrade.locate_system(disk) == upgrade.Region(6144 * 512, 8192 * 512)
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"\0" * 8192)
    with pytest.raises(upgrade.UpgradeError, match="no system file system"):
        upgrade.locate_system(junk)


def test_partition_names_and_a_system_too_big_for_its_slot(tmp_path: Path) -> None:
    assert upgrade.partition_device(Path("/dev/vda"), 3) == Path("/dev/vda3")
    assert upgrade.partition_device(Path("/dev/nvme0n1"), 2) == Path("/dev/nvme0n1p2")
    assert upgrade.partition_device(Path("/dev/mmcblk0"), 3) == Path("/dev/mmcblk0p3")
    source, slot = tmp_path / "root.img", tmp_path / "slot"
    _ext4_like(source, 2 << 20)
    slot.write_bytes(b"\0" * (1 << 20))
    with pytest.raises(upgrade.UpgradeError, match="does not fit"):
        upgrade.copy_region(source, upgrade.Region(0, 2 << 20), slot, progress=False)
    slot.write_bytes(b"\0" * (3 << 20))
    upgrade.copy_region(source, upgrade.Region(0, 2 << 20), slot, progress=False)
    assert slot.read_bytes()[:2 << 20] == source.read_bytes()
