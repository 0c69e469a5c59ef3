#!/usr/bin/env bash
# Builds a bootable disk image of the QuicEther appliance from Debian packages (mmdebstrap), the QuicEther
# wheel built from this tree (maturin) and rootfs-overlay/ — the same overlay and units as the Buildroot
# images, so both behave the same.
#
#   scripts/build-image.sh x86_64|rpi [--out DIR] [--authorized-keys FILE] [--suite bookworm]
#
# x86_64 (GPT, UEFI): an EFI system partition with a GRUB loader and its A/B environment, two system
# slots (qe-root-a with the system, qe-root-b empty until the first `quicether upgrade`; read-only when
# running) and the data partition (label qe-data: config, keys; first boot fills it). Write it to a disk
# with `dd if=DIR/quicether-x86_64.img of=/dev/sdX bs=4M`. DIR also gets root.img, the system alone, for
# `quicether upgrade`.
# rpi (Raspberry Pi 4, arm64; MBR SD card): Debian's arm64 kernel, the Pi firmware and device trees
# (raspi-firmware) on a FAT boot partition (label QE-EFI), one read-only system partition, the data
# partition; the core cross-compiled by scripts/build-core-aarch64. Output DIR/quicether-rpi.img.
# --authorized-keys puts SSH public keys on the data partition (otherwise add them later in
# /data/ssh/authorized_keys).
set -euo pipefail

root_dir=$(cd "$(dirname "$0")/.." && pwd)
usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }
step() { printf '\n==> [%s] %s\n' "$(date +%T)" "$*"; }
fail() { echo "build-image: error: $*" >&2; exit 1; }

arch=""; out="$root_dir/image/out"; keys=""; suite="bookworm"
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --out) out=$2; shift 2 ;;
        --authorized-keys) keys=$2; shift 2 ;;
        --suite) suite=$2; shift 2 ;;
        -*) fail "unknown option $1 (see --help)" ;;
        *) arch=$1; shift ;;
    esac
done
case "$arch" in
    x86_64) deb_arch=amd64; packages=(mmdebstrap grub-efi-amd64-bin mtools dosfstools fdisk e2fsprogs) ;;
    # arm64 packages' maintainer scripts run in qemu-user (binfmt_misc) while mmdebstrap installs them.
    rpi) deb_arch=arm64; packages=(mmdebstrap qemu-user-static binfmt-support mtools dosfstools fdisk e2fsprogs) ;;
    *) fail "the image is x86_64 or rpi (see --help)" ;;
esac
[ "$(id -u)" = 0 ] || fail "run as root (the root file system is built with real ownership)"
[ -z "$keys" ] || [ -r "$keys" ] || fail "cannot read --authorized-keys $keys"

# Sizes in MiB. The system partition gets the root file system's size plus headroom for an upgrade.
ESP_MIB=64
PI_BOOT_MIB=256  # the Pi's firmware, device trees, kernel and initramfs
DATA_MIB=256
ROOT_HEADROOM_PCT=30

missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    step "apt: installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ "$arch" = rpi ]; then
    if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || fail "cannot mount binfmt_misc"
    fi
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 \
        || fail "arm64 programs cannot run here (qemu-aarch64 binfmt)"
fi

work=$(mktemp -d /tmp/quicether-image.XXXXXX)
# mmdebstrap mounts /proc, /sys and /dev/* inside the root file system while it installs; if it is stopped
# there, they stay mounted. Unmount them before removing the tree (an rm through /dev/shm deletes the host's
# files), deepest first, and never cross into another file system.
remove_work() {
    awk -v w="$work/" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r | while read -r mnt; do
        umount -l "$mnt" || true
    done
    rm -rf --one-file-system "$work"
}
trap remove_work EXIT
mkdir -p "$out"

[ -x "$root_dir/.venv/bin/maturin" ] || fail "run scripts/setup first (it creates .venv with maturin)"
if [ "$arch" = rpi ]; then
    step "wheel: building QuicEther for arm64 (the core cross-compiled: scripts/build-core-aarch64)"
    "$root_dir/scripts/build-core-aarch64" wheel --out "$work/wheels"
else
    step "wheel: building QuicEther (maturin, release)"
    "$root_dir/.venv/bin/maturin" build --release --quiet --manifest-path "$root_dir/core/py/Cargo.toml" \
        --out "$work/wheels" 2>&1 | grep -v '^\s*$' | tail -n 3
fi
wheel=$(ls "$work"/wheels/quicether-*.whl)
echo "    $(basename "$wheel")"

step "rootfs: Debian $suite $deb_arch with the kernel, systemd, nftables, dnsmasq, OpenSSH and Python libraries (mmdebstrap)"
include=linux-image-$deb_arch,initramfs-tools,systemd,systemd-sysv,systemd-resolved,udev,dbus,kmod,iproute2
include+=,nftables,python3,python3-nftables,python3-pyroute2,python3-flask,python3-waitress,dnsmasq-base
include+=,openssh-server
mmdebstrap_args=(--variant=apt --architectures="$deb_arch")
if [ "$arch" = rpi ]; then
    # Debian's Raspberry Pi boot files, as Debian's own Pi images have them: raspi-firmware (non-free-firmware)
    # fills /boot/firmware with the firmware, the device trees, the kernel and the initramfs.
    include+=,raspi-firmware
    mmdebstrap_args+=("--components=main non-free-firmware")
    # arm64 programs run emulated here, so the build does less of that: an initramfs with only the drivers
    # that mount the root (image/rpi-initramfs-hook, instead of MODULES=most), no manual pages, translations
    # or documentation besides the copyright files.
    # The initramfs is made once, at the end: while packages are installed, update-initramfs is diverted to a
    # stand-in (the kernel's installation and initramfs-tools' trigger would each make one).
    cat > "$work/essential.sh" <<HOOK
#!/bin/sh
set -eu
mkdir -p "\$1/boot/firmware" "\$1/etc/initramfs-tools/hooks" "\$1/etc/initramfs-tools/conf.d"
install -m 755 "$root_dir/image/rpi-initramfs-hook" "\$1/etc/initramfs-tools/hooks/quicether-modules"
echo MODULES=list > "\$1/etc/initramfs-tools/conf.d/quicether.conf"
chroot "\$1" dpkg-divert --quiet --local --rename --divert /usr/sbin/update-initramfs.build --add /usr/sbin/update-initramfs
printf '#!/bin/sh\necho "update-initramfs: made at the end of the image build"\n' > "\$1/usr/sbin/update-initramfs"
chmod 755 "\$1/usr/sbin/update-initramfs"
HOOK
    cat > "$work/customize-rpi.sh" <<HOOK
#!/bin/sh
set -eu
rm "\$1/usr/sbin/update-initramfs"
chroot "\$1" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs
echo "I: running update-initramfs (emulated)"
chroot "\$1" update-initramfs -c -k all
HOOK
    chmod +x "$work/essential.sh" "$work/customize-rpi.sh"
    mmdebstrap_args+=(--essential-hook="$work/essential.sh \"\$1\"" --customize-hook="$work/customize-rpi.sh \"\$1\"")
    for path in /usr/share/man/\* /usr/share/locale/\* /usr/share/doc/\*; do
        mmdebstrap_args+=(--dpkgopt="path-exclude=$path")
    done
    mmdebstrap_args+=(--dpkgopt='path-include=/usr/share/doc/*/copyright')
fi
# The hook runs inside the new root: overlay, wheel, stable kernel links, services, locked root password.
cat > "$work/customize.sh" <<HOOK
#!/bin/sh
set -eu
rootfs=\$1
cp -a "$root_dir/rootfs-overlay/." "\$rootfs/"
rm -f "\$rootfs/README.md"
mkdir -p "\$rootfs/data" "\$rootfs/boot/efi" "\$rootfs/usr/share/doc/quicether"
cp "$root_dir/README.md" "\$rootfs/usr/share/doc/quicether/README.md"
python3 -m zipfile -e "$wheel" "\$rootfs/usr/lib/python3/dist-packages/"
printf '#!/usr/bin/python3\nimport sys\nfrom quicether.__main__ import main\nsys.exit(main())\n' > "\$rootfs/usr/bin/quicether"
chmod 755 "\$rootfs/usr/bin/quicether"
kernel=\$(ls "\$rootfs"/boot/vmlinuz-* | sort -V | tail -n 1)
ln -sf "\$(basename "\$kernel")" "\$rootfs/boot/vmlinuz"
ln -sf "initrd.img-\${kernel##*/vmlinuz-}" "\$rootfs/boot/initrd.img"
chroot "\$rootfs" systemctl enable systemd-networkd systemd-resolved ssh >/dev/null 2>&1
ln -sf /run/systemd/resolve/resolv.conf "\$rootfs/etc/resolv.conf"
# The daemon writes the mesh members' names to the hosts file, in memory (usr/lib/tmpfiles.d/quicether.conf).
ln -sf /run/quicether/hosts "\$rootfs/etc/hosts"
chroot "\$rootfs" passwd -l root >/dev/null
# The web UI's unprivileged user (rootfs-overlay/usr/lib/sysusers.d): /etc is read-only at run time.
chroot "\$rootfs" systemd-sysusers >/dev/null
# Host keys made at build time would be shared by every appliance: each makes its own on /data.
rm -f "\$rootfs"/etc/ssh/ssh_host_*
: > "\$rootfs/etc/machine-id"
# State directories services would create at run time, which a read-only root cannot.
mkdir -p "\$rootfs/var/lib/systemd/linger"
HOOK
chmod +x "$work/customize.sh"
mmdebstrap "${mmdebstrap_args[@]}" --include="$include" --customize-hook="$work/customize.sh \"\$1\"" \
    "$suite" "$work/rootfs" 2>&1 | grep -E '^(I: (success|running)|E:)' || true
[ -e "$work/rootfs/usr/bin/quicether" ] || fail "the root file system was not built (see mmdebstrap's output above)"

step "partitions: system (ext4, read-only at run time), data (ext4)"
used_mib=$(du -sm "$work/rootfs" | cut -f1)
root_mib=$(( used_mib * (100 + ROOT_HEADROOM_PCT) / 100 + 64 ))
mkfs.ext4 -q -L qe-root -d "$work/rootfs" "$work/root.img" "${root_mib}M"
mkdir -p "$work/data/ssh" "$work/data/quicether"
if [ -n "$keys" ]; then
    install -m 600 "$keys" "$work/data/ssh/authorized_keys"
fi
chmod 700 "$work/data/ssh"
mkfs.ext4 -q -L qe-data -d "$work/data" "$work/data.img" "${DATA_MIB}M"
echo "    system ${root_mib} MiB (${used_mib} MiB used), data ${DATA_MIB} MiB"
sector_mib=2048  # 512-byte sectors per MiB

if [ "$arch" = rpi ]; then
    step "boot partition: the Pi firmware, device trees, kernel and initramfs (FAT, label QE-EFI)"
    firmware="$work/rootfs/boot/firmware"
    kernel=$(basename "$(readlink -f "$work/rootfs/boot/vmlinuz")")
    [ -f "$firmware/start4.elf" ] || fail "raspi-firmware left no Pi 4 firmware in /boot/firmware"
    mkdir -p "$work/boot"
    # The firmware (start*.elf, fixup*.dat, bootcode.bin), Debian's device trees (bcm2711-rpi-*.dtb and the
    # overlays) as raspi-firmware laid them out; the kernel and initramfs under fixed names.
    cp -r "$firmware/." "$work/boot/"
    cp "$work/rootfs/usr/lib/linux-image-${kernel#vmlinuz-}"/broadcom/bcm27*.dtb "$work/boot/"
    rm -f "$work"/boot/vmlinuz-* "$work"/boot/initrd.img-* "$work/boot/config.txt" "$work/boot/cmdline.txt"
    cp "$work/rootfs/boot/$kernel" "$work/boot/vmlinuz"
    cp "$work/rootfs/boot/initrd.img-${kernel#vmlinuz-}" "$work/boot/initrd.img"
    # The disk's MBR id names the system partition on the kernel's command line (PARTUUID=<id>-02).
    disk_id=$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')
    cp "$root_dir/image/rpi-config.txt" "$work/boot/config.txt"
    sed "s/@PARTUUID@/$disk_id-02/" "$root_dir/image/rpi-cmdline.txt" | grep -v '^#' > "$work/boot/cmdline.txt"
    mkfs.vfat -F 32 -n QE-EFI -C "$work/boot.img" $(( PI_BOOT_MIB * 1024 )) >/dev/null
    mcopy -s -i "$work/boot.img" "$work"/boot/* ::/
    echo "    $(find "$work/boot" -name '*.dtb' | wc -l) device trees, $kernel, boot ${PI_BOOT_MIB} MiB"

    step "disk: MBR with boot (FAT), system, data"
    image="$out/quicether-rpi.img"
    total_mib=$(( 1 + PI_BOOT_MIB + root_mib + DATA_MIB ))
    rm -f "$image"
    truncate -s "${total_mib}M" "$image"
    sfdisk --quiet "$image" <<TABLE
label: dos
label-id: 0x$disk_id
start=$sector_mib, size=$(( PI_BOOT_MIB * sector_mib )), type=c, bootable
size=$(( root_mib * sector_mib )), type=83
size=$(( DATA_MIB * sector_mib )), type=83
TABLE
    dd if="$work/boot.img" of="$image" bs=1M seek=1 conv=notrunc,sparse status=none
    dd if="$work/root.img" of="$image" bs=1M seek=$(( 1 + PI_BOOT_MIB )) conv=notrunc,sparse status=none
    dd if="$work/data.img" of="$image" bs=1M seek=$(( 1 + PI_BOOT_MIB + root_mib )) conv=notrunc,sparse status=none
    step "done: $image ($(du -h --apparent-size "$image" | cut -f1), sparse: $(du -h "$image" | cut -f1) used)"
    exit 0
fi

step "EFI loader (GRUB, FAT) with its A/B environment"
grub-mkstandalone -O x86_64-efi -o "$work/BOOTX64.EFI" \
    --modules="part_gpt ext2 fat linux normal echo regexp probe loadenv test" \
    "boot/grub/grub.cfg=$root_dir/image/grub.cfg"
mkfs.vfat -n QE-EFI -C "$work/esp.img" $(( ESP_MIB * 1024 )) >/dev/null
# The boot loader's environment: slot a is the good one; `quicether upgrade` adds pending=<slot>.
grub-editenv "$work/grubenv" create
grub-editenv "$work/grubenv" set slot=a
mmd -i "$work/esp.img" ::/EFI ::/EFI/BOOT ::/EFI/quicether
mcopy -i "$work/esp.img" "$work/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$work/esp.img" "$work/grubenv" ::/EFI/quicether/grubenv
echo "    EFI ${ESP_MIB} MiB, system ${root_mib} MiB per slot"

step "disk: GPT with EFI, system slots a and b, data"
image="$out/quicether-x86_64.img"
total_mib=$(( 1 + ESP_MIB + 2 * root_mib + DATA_MIB + 1 ))
rm -f "$image"
truncate -s "${total_mib}M" "$image"
sfdisk --quiet "$image" <<TABLE
label: gpt
start=$sector_mib, size=$(( ESP_MIB * sector_mib )), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="esp"
size=$(( root_mib * sector_mib )), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="qe-root-a"
size=$(( root_mib * sector_mib )), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="qe-root-b"
size=$(( DATA_MIB * sector_mib )), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="qe-data"
TABLE
dd if="$work/esp.img" of="$image" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$work/root.img" of="$image" bs=1M seek=$(( 1 + ESP_MIB )) conv=notrunc,sparse status=none
dd if="$work/data.img" of="$image" bs=1M seek=$(( 1 + ESP_MIB + 2 * root_mib )) conv=notrunc,sparse status=none
mv "$work/root.img" "$out/"
step "done: $image ($(du -h --apparent-size "$image" | cut -f1), sparse); for upgrades: $out/root.img"
