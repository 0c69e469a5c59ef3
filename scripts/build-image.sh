#!/usr/bin/env bash
# Builds a bootable x86_64 disk image of the QuicEther appliance from Debian packages (mmdebstrap), the
# QuicEther wheel built from this tree (maturin) and rootfs-overlay/ — the same overlay and units as the
# Buildroot images, so both behave the same.
#
#   scripts/build-image.sh x86_64 [--out DIR] [--authorized-keys FILE] [--suite bookworm]
#
# The disk (GPT, UEFI): an EFI system partition with a GRUB loader and its A/B environment, two system
# slots (qe-root-a with the system, qe-root-b empty until the first `quicether upgrade`; read-only when
# running) and the data partition (label qe-data: config, keys; first boot fills it). Write it to a disk
# with `dd if=DIR/quicether-x86_64.img of=/dev/sdX bs=4M`. DIR also gets root.img, the system alone, for
# `quicether upgrade`. --authorized-keys puts SSH public keys on the data partition (otherwise add them
# later in /data/ssh/authorized_keys).
set -euo pipefail

root_dir=$(cd "$(dirname "$0")/.." && pwd)
usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
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
[ "$arch" = "x86_64" ] || fail "only x86_64 is built here (Raspberry Pi images: scripts/build-buildroot.sh rpi4_64)"
[ "$(id -u)" = 0 ] || fail "run as root (the root file system is built with real ownership)"
[ -z "$keys" ] || [ -r "$keys" ] || fail "cannot read --authorized-keys $keys"

# Sizes in MiB. The system partition gets the root file system's size plus headroom for an upgrade.
ESP_MIB=64
DATA_MIB=256
ROOT_HEADROOM_PCT=30

packages=(mmdebstrap grub-efi-amd64-bin mtools dosfstools fdisk e2fsprogs)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    step "apt: installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

work=$(mktemp -d /tmp/quicether-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"

step "wheel: building QuicEther (maturin, release)"
[ -x "$root_dir/.venv/bin/maturin" ] || fail "run scripts/setup first (it creates .venv with maturin)"
"$root_dir/.venv/bin/maturin" build --release --quiet --manifest-path "$root_dir/core/py/Cargo.toml" \
    --out "$work/wheels" 2>&1 | grep -v '^\s*$' | tail -n 3
wheel=$(ls "$work"/wheels/quicether-*.whl)
echo "    $(basename "$wheel")"

step "rootfs: Debian $suite with the kernel, systemd, nftables, dnsmasq, OpenSSH and Python libraries (mmdebstrap)"
include=linux-image-amd64,initramfs-tools,systemd,systemd-sysv,systemd-resolved,udev,dbus,kmod,iproute2
include+=,nftables,python3,python3-nftables,python3-pyroute2,python3-flask,python3-waitress,dnsmasq-base
include+=,openssh-server
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
mmdebstrap --variant=apt --include="$include" --customize-hook="$work/customize.sh \"\$1\"" \
    "$suite" "$work/rootfs" 2>&1 | grep -E '^(I: (success|running)|E:)' || true
[ -e "$work/rootfs/usr/bin/quicether" ] || fail "the root file system was not built (see mmdebstrap's output above)"

step "partitions: system (ext4, read-only at run time), data (ext4), EFI loader (GRUB, FAT) with its A/B environment"
used_mib=$(du -sm "$work/rootfs" | cut -f1)
root_mib=$(( used_mib * (100 + ROOT_HEADROOM_PCT) / 100 + 64 ))
mkfs.ext4 -q -L qe-root -d "$work/rootfs" "$work/root.img" "${root_mib}M"
mkdir -p "$work/data/ssh" "$work/data/quicether"
if [ -n "$keys" ]; then
    install -m 600 "$keys" "$work/data/ssh/authorized_keys"
fi
chmod 700 "$work/data/ssh"
mkfs.ext4 -q -L qe-data -d "$work/data" "$work/data.img" "${DATA_MIB}M"
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
echo "    system ${root_mib} MiB per slot (${used_mib} MiB used), data ${DATA_MIB} MiB, EFI ${ESP_MIB} MiB"

step "disk: GPT with EFI, system slots a and b, data"
image="$out/quicether-x86_64.img"
total_mib=$(( 1 + ESP_MIB + 2 * root_mib + DATA_MIB + 1 ))
rm -f "$image"
truncate -s "${total_mib}M" "$image"
sector_mib=2048  # 512-byte sectors per MiB
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
