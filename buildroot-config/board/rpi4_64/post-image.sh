#!/bin/sh
# Buildroot post-image step for the Raspberry Pi 4: our kernel command line (read-only root), then the
# SD card image from genimage.cfg.
set -eu
board_dir=$(dirname "$0")
cp "$board_dir/cmdline.txt" "$BINARIES_DIR/rpi-firmware/cmdline.txt"
exec support/scripts/genimage.sh -c "$board_dir/genimage.cfg"
