"""A fresh Debian 12 root for the package test: made by mmdebstrap (bookworm, variant apt, from Debian's
mirror) once and cached as a tarball under tests/artifacts/deb/, unpacked per test. Commands run in it by
chroot, with /dev, /proc and /sys mounted in a mount namespace of their own (nothing is mounted on the
host, so removing the root is always safe): in the host's network namespace for apt (it needs the
mirror), or in a lab namespace for what runs the daemon. Downloaded packages are kept in
tests/artifacts/deb/apt-archives, so only the first run downloads them.

Chrooted, systemd does not run in the root: tests/lab/systemctl-standin.sh stands in for systemctl there,
so the package's maintainer scripts and `quicether gateway init` start and stop the daemon as under
systemd. A root with systemd installed can also be booted (`boot`: systemd-nspawn in a lab namespace),
and commands run in it by nsenter, under the real systemd.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from tests.lab.netns import LabError, Namespace
from tests.lab.topology import REPO_ROOT

CACHE = REPO_ROOT / "tests" / "artifacts" / "deb"
BASE_TAR = CACHE / "bookworm-apt.tar"
APT_ARCHIVES = CACHE / "apt-archives"
MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
# The cached root is remade after this long, so its package lists and base packages stay near the mirror's.
BASE_MAX_AGE_S = 7 * 24 * 3600
STANDIN = REPO_ROOT / "tests" / "lab" / "systemctl-standin.sh"
ENV = ["env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root",
       "LANG=C.UTF-8", "DEBIAN_FRONTEND=noninteractive", "TERM=dumb"]
# Runs "$@" chrooted in $ROOT with the kernel's file systems and the package cache mounted (in the mount
# namespace of `unshare -m` or `ip netns exec`, private to this command and what it leaves running).
MOUNT_AND_CHROOT = (
    'set -e; mount --make-rslave / 2>/dev/null || true; '
    'mount --bind /dev "$ROOT/dev"; mount -t proc proc "$ROOT/proc"; mount -t sysfs sysfs "$ROOT/sys"; '
    'mount --bind "$ARCHIVES" "$ROOT/var/cache/apt/archives"; exec chroot "$ROOT" "$@"'
)


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def base_tarball() -> Path:
    """The cached base root, made now if missing or old (about 40 s with a warm network)."""
    if BASE_TAR.exists() and time.time() - BASE_TAR.stat().st_mtime < BASE_MAX_AGE_S:
        return BASE_TAR
    CACHE.mkdir(parents=True, exist_ok=True)
    progress(f"mmdebstrap: a Debian {SUITE} root (variant apt) from {MIRROR}, cached as {BASE_TAR}")
    tmp = BASE_TAR.with_suffix(".tmp.tar")
    proc = subprocess.run(["mmdebstrap", "--variant=apt", "--quiet", SUITE, str(tmp), MIRROR],
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise LabError(f"mmdebstrap failed: {proc.stderr.strip()[-2000:]}")
    tmp.rename(BASE_TAR)
    return BASE_TAR


class DebRoot:
    """One unpacked Debian root at `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, path: Path, standin: bool = True) -> DebRoot:
        tarball = base_tarball()
        path.mkdir(parents=True)
        subprocess.run(["tar", "--numeric-owner", "-xpf", str(tarball), "-C", str(path)], check=True, timeout=300)
        root = cls(path)
        shutil.copy("/etc/resolv.conf", path / "etc" / "resolv.conf")
        (path / "etc/apt/apt.conf.d/99quicether-test").write_text('Acquire::Check-Valid-Until "false";\n')
        (APT_ARCHIVES / "partial").mkdir(parents=True, exist_ok=True)
        if standin:
            # The systemctl stand-in (systemd is not installed in a variant=apt root) and the directory by
            # which maintainer scripts and sd_booted() tell that systemd runs.
            shutil.copy(STANDIN, path / "usr" / "bin" / "systemctl")
            (path / "run" / "systemd" / "system").mkdir(parents=True, exist_ok=True)
        return root

    def argv(self, args: Sequence[str], ns: Namespace | None = None) -> list[str]:
        inner = ["env", f"ROOT={self.path}", f"ARCHIVES={APT_ARCHIVES}", "sh", "-c", MOUNT_AND_CHROOT, "sh",
                 *ENV, *args]
        return ns.argv(inner) if ns is not None else ["unshare", "-m", *inner]

    def run(self, *args: str, ns: Namespace | None = None, check: bool = True,
            timeout: float = 600) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self.argv(args, ns), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise LabError(f"in {self.path}: {' '.join(args)} exited {proc.returncode}:\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def apt(self, *args: str, ns: Namespace | None = None) -> subprocess.CompletedProcess[str]:
        return self.run("apt-get", "-y", "-q", "-o", "Dpkg::Use-Pty=0", *args, ns=ns)

    def boot(self, ns: Namespace, console: Path, timeout: float = 90) -> Container:
        """Boots the root (systemd must be installed in it) with systemd-nspawn in the lab namespace `ns`;
        the lab kills it on close. The container may use TUN and configure its network namespace."""
        log = open(console, "w")  # noqa: SIM115 - lives as long as the container
        # /proc/sys/net writable (the daemon sets ip_forward), as on a host of its own.
        env = {**os.environ, "SYSTEMD_NSPAWN_API_VFS_WRITABLE": "network"}
        proc = subprocess.Popen(["systemd-nspawn", "--quiet", "-D", str(self.path), "--boot", "--register=no",
                                 "--keep-unit", f"--network-namespace-path=/run/netns/{ns.netns}",
                                 "--bind=/dev/net/tun", "--capability=CAP_NET_ADMIN,CAP_NET_RAW"],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, text=True)
        ns.lab.processes.append(proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LabError(f"systemd-nspawn exited {proc.returncode}: {console.read_text()[-2000:]}")
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
            init = children.read_text().split() if children.exists() else []
            if init:
                container = Container(int(init[0]))
                state = container.run("systemctl", "is-system-running", check=False).stdout.strip()
                if state in ("running", "degraded"):
                    return container
            time.sleep(0.3)
        raise LabError(f"the container did not boot in {timeout:.0f}s: {console.read_text()[-2000:]}")

    def file(self, path: str) -> Path:
        return self.path / path.lstrip("/")

    def remove(self) -> None:
        # Nothing is mounted inside on the host (see MOUNT_AND_CHROOT); --one-file-system all the same.
        subprocess.run(["rm", "-rf", "--one-file-system", str(self.path)], check=False, timeout=300)


class Container:
    """A booted root: commands run in all its namespaces (nsenter), under its systemd."""

    def __init__(self, init_pid: int) -> None:
        self.init_pid = init_pid

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["nsenter", "-t", str(self.init_pid), "-a", *ENV, *args], capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise LabError(f"in the container: {' '.join(args)} exited {proc.returncode}:\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def unit(self, prop: str) -> str:
        return self.run("systemctl", "show", "--value", "-p", prop, "quicether.service").stdout.strip()
