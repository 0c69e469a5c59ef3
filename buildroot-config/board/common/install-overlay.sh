#!/bin/sh
# Installs rootfs-overlay/ into a target root file system (Buildroot's target directory), the same files
# the Debian-based image gets: units, default config, networkd and sshd settings. README.md is the
# overlay's documentation, not a file for the appliance.
set -eu
overlay=$1
target=$2
[ -d "$overlay" ] || { echo "install-overlay: no overlay at $overlay" >&2; exit 1; }
(cd "$overlay" && find . -path ./README.md -prune -o -print | cpio -pdm --quiet "$target")
mkdir -p "$target/data" "$target/var/lib/systemd/linger"
