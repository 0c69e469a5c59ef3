#!/bin/sh
# Buildroot post-build step: what rootfs-overlay/ cannot hold because it differs per build system.
# $1 is the target directory.
set -eu
target=$1
# Buildroot's systemd has no Debian `ssh.service` name; enable OpenSSH's unit and networkd here.
mkdir -p "$target/etc/systemd/system/multi-user.target.wants"
for unit in sshd.service systemd-networkd.service systemd-resolved.service; do
    if [ -e "$target/usr/lib/systemd/system/$unit" ]; then
        ln -sf "/usr/lib/systemd/system/$unit" "$target/etc/systemd/system/multi-user.target.wants/$unit"
    fi
done
ln -sf /run/systemd/resolve/resolv.conf "$target/etc/resolv.conf"
# The daemon writes the mesh members' names to the hosts file, in memory (usr/lib/tmpfiles.d/quicether.conf).
ln -sf /run/quicether/hosts "$target/etc/hosts"
# Host keys made at build time would be shared by every appliance: each makes its own on /data.
rm -f "$target"/etc/ssh/ssh_host_*
