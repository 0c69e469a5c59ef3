#!/usr/bin/env bash
# Builds a QuicEther appliance image with Buildroot (needs internet access for Buildroot's downloads).
#
#   scripts/build-buildroot.sh rpi4_64|x86_64 [--buildroot DIR]
#
# Fetches Buildroot $BUILDROOT_VERSION into .buildroot/ (or uses --buildroot DIR), then builds
# buildroot-config/configs/quicether_<board>_defconfig into buildroot-output/<board>/. Run it from a clean
# clone: Buildroot copies this source tree into its build directory.
set -euo pipefail

BUILDROOT_VERSION=2025.02.8
root_dir=$(cd "$(dirname "$0")/.." && pwd)
usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; }
fail() { echo "build-buildroot: error: $*" >&2; exit 1; }

board=""; buildroot=""
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --buildroot) buildroot=$2; shift 2 ;;
        -*) fail "unknown option $1 (see --help)" ;;
        *) board=$1; shift ;;
    esac
done
defconfig="$root_dir/buildroot-config/configs/quicether_${board}_defconfig"
if [ -z "$board" ] || [ ! -f "$defconfig" ]; then
    fail "board must be one of: rpi4_64 x86_64"
fi

if [ -z "$buildroot" ]; then
    buildroot="$root_dir/.buildroot/buildroot-$BUILDROOT_VERSION"
    if [ ! -d "$buildroot" ]; then
        echo "==> fetching Buildroot $BUILDROOT_VERSION"
        mkdir -p "$root_dir/.buildroot"
        curl -fL --progress-bar "https://buildroot.org/downloads/buildroot-$BUILDROOT_VERSION.tar.xz" \
            | tar -xJ -C "$root_dir/.buildroot"
    fi
fi
out="$root_dir/buildroot-output/$board"
echo "==> configuring $board in $out"
make -C "$buildroot" BR2_EXTERNAL="$root_dir/buildroot-config" O="$out" "quicether_${board}_defconfig"
echo "==> building (Buildroot prints its own progress; this takes an hour or more the first time)"
make -C "$buildroot" O="$out"
echo "==> done: $(ls "$out"/images/*.img)"
