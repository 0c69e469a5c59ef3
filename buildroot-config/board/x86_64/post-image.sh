#!/bin/sh
# Buildroot post-image step for x86_64: the GRUB EFI loader with our config, then the disk from genimage.cfg.
set -eu
board_dir=$(dirname "$0")
cp "$board_dir/grub.cfg" "$BINARIES_DIR/efi-part/EFI/BOOT/grub.cfg"
exec support/scripts/genimage.sh -c "$board_dir/genimage.cfg"
