"""Members' names under home.arpa (RFC 8375: a home network's own domain, never sent upstream): each member
of the mesh, this node too, as `<name>.home.arpa` → its overlay IPv4 and IPv6 ULA, for the LAN's hosts
through the appliance's dnsmasq, and on the node itself through its hosts file.

For the LAN: a hosts file in a directory dnsmasq watches (`--hostsdir`): a member learned, renewed or
revoked is in DNS (or out of it) at once, with no dnsmasq restart and no DHCP or DNS gap. dnsmasq reads
the directory after dropping root, so it lives in /run (not in the state directory, which only root may
enter), readable by all: member names and overlay addresses are what every member knows anyway.

    /run/quicether/names-<id>/members   "<address> <name>.home.arpa" per address (mode 644); <id> is a digest
                                        of the state directory (one per node, as in the lab); removed
                                        when the daemon stops

On the node: a block of the same lines in /etc/hosts, between two marker lines naming <id>. Why the hosts
file and not a resolver of our own: it is the one source every resolver on the node reads without being
told to — glibc's and musl's `files`, systemd-resolved (ReadEtcHosts, also for its stub's clients) — so it
works the same on a Debian gateway with or without systemd-resolved and on the appliance, with nothing to
register and no port to own; per-link DNS through systemd-resolved would reach only the programs that ask
resolved (the appliance's /etc/resolv.conf names the upstream servers, and a plain gateway may not run it).
The block is rewritten whole (a temporary file renamed over the real one: a reader sees the old file or the
new, never half), removed when the daemon stops, and removed at start before anything else, so a crash
leaves it only until the daemon is restarted (systemd restarts it at once). Where the hosts file is a
mount point of its own (a container's, a lab namespace's from /etc/netns), a rename cannot replace it: it
is then rewritten in place. The appliance's root is read-only: its /etc/hosts links to /run/quicether/hosts
(seeded at boot by tmpfiles.d), which is written through the link. Our writers on one host take turns
under a lock in /run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from quicether.atomic import write_private

log = logging.getLogger("quicether")
DOMAIN = "home.arpa"
RUN_DIR = Path("/run/quicether")
HOSTS_FILE = "members"
ETC_HOSTS = Path("/etc/hosts")
HOSTS_LOCK = RUN_DIR / "hosts.lock"


def node_id(state_dir: Path) -> str:
    """One node's mark in shared places (/run, /etc/hosts): a digest of its state directory."""
    return hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12]


def directory(state_dir: Path) -> Path:
    return RUN_DIR / f"names-{node_id(state_dir)}"


def prepare(path: Path) -> None:
    """Root, before dnsmasq starts: the directory it watches, readable by dnsmasq's user."""
    for part in (RUN_DIR, path):
        part.mkdir(exist_ok=True)
        os.chmod(part, 0o755)


def hosts_text(names: dict[str, list[str]]) -> str:
    """The hosts file for `names` (member name → its overlay addresses), sorted: an unchanged mesh writes
    nothing."""
    return "".join(f"{ip} {name}.{DOMAIN}\n" for name, ips in sorted(names.items()) for ip in ips)


def block_marks(mark: str) -> tuple[str, str]:
    """The first and last line of node `mark`'s block in the hosts file."""
    return (f"# quicether {mark}: mesh members under {DOMAIN} (the daemon writes this; gone when it stops)\n",
            f"# quicether {mark} end\n")


def with_block(text: str, mark: str, entries: str) -> str:
    """`text` (a hosts file) without node `mark`'s block, and with `entries` in a new one at its end if any.
    Other lines (the system's, other nodes' blocks) are kept as they are; a block cut short (no end line)
    runs to the end of the file."""
    begin, end = block_marks(mark)
    kept: list[str] = []
    inside = False
    for line in text.splitlines(keepends=True):
        if not inside and line == begin:
            inside = True
        elif inside and line == end:
            inside = False
        elif not inside:
            kept.append(line)
    out = "".join(kept)
    if entries:
        if out and not out.endswith("\n"):
            out += "\n"
        out += begin + entries + end
    return out


@contextlib.contextmanager
def _hosts_lock() -> Iterator[None]:
    RUN_DIR.mkdir(exist_ok=True)
    fd = os.open(HOSTS_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _replace(path: Path, text: str) -> None:
    """`path` (the real file, links resolved) holds `text`: renamed over it, or written in place where it
    is a mount point."""
    tmp = path.with_name(f".{path.name}.quicether-{os.getpid()}")
    mode = path.stat().st_mode & 0o7777
    try:
        tmp.write_text(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        return
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if exc.errno not in (errno.EBUSY, errno.EXDEV):
            raise
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        raw = text.encode()
        os.pwrite(fd, raw, 0)
        os.ftruncate(fd, len(raw))
    finally:
        os.close(fd)


def set_hosts_block(path: Path, mark: str, entries: str) -> bool:
    """Puts `entries` in node `mark`'s block of hosts file `path` (no block if empty); True if it changed."""
    real = Path(os.path.realpath(path))
    with _hosts_lock():
        try:
            text = real.read_text()
        except FileNotFoundError:
            if not entries:
                return False
            real.touch(mode=0o644)
            text = ""
        new = with_block(text, mark, entries)
        if new == text:
            return False
        _replace(real, new)
        return True


def forget(state_dir: Path, etc_hosts: Path = ETC_HOSTS) -> None:
    """At the start of a node in no network: its block of a run in a network that crashed goes."""
    try:
        set_hosts_block(etc_hosts, node_id(state_dir), "")
    except OSError as exc:
        log.warning("cannot clean the members' names from %s: %s", etc_hosts, exc.strerror or exc)


class MemberNames:
    """The members' names: in the hosts file of dnsmasq's directory (`lan_dns`: a router serving DNS on its
    LAN) and in this node's /etc/hosts, written when the members change; removed when the daemon stops.
    Made at start: what a crashed run left in /etc/hosts goes at once."""

    def __init__(self, state_dir: Path, lan_dns: bool, etc_hosts: Path = ETC_HOSTS) -> None:
        self.path = directory(state_dir) / HOSTS_FILE
        self.lan_dns = lan_dns
        self.etc_hosts = etc_hosts
        self.mark = node_id(state_dir)
        self._written: str | None = None
        self._failed: set[str] = set()
        self._write_etc_hosts("")

    def _write_etc_hosts(self, text: str) -> None:
        try:
            set_hosts_block(self.etc_hosts, self.mark, text)
        except OSError as exc:
            self._fail("etc", "cannot write the members' names to %s: %s", self.etc_hosts, exc.strerror or exc)
            return
        self._failed.discard("etc")

    def _fail(self, what: str, message: str, *args: object) -> None:
        if what not in self._failed:  # said once, not at every member learned
            log.error(message, *args)
        self._failed.add(what)

    def set_lan_dns(self, lan_dns: bool) -> None:
        """The LAN's DNS turned on or off (a reload): dnsmasq's file is written (or goes) at the next update."""
        if lan_dns != self.lan_dns:
            self.lan_dns = lan_dns
            self._written = None
            if not lan_dns:
                shutil.rmtree(self.path.parent, ignore_errors=True)

    def update(self, names: dict[str, list[str]]) -> None:
        text = hosts_text(names)
        if text == self._written and not self._failed:
            return
        if self.lan_dns:
            try:
                prepare(self.path.parent)
                write_private(self.path, text, mode=0o644)
                self._failed.discard("lan")
            except OSError as exc:
                self._fail("lan", "cannot write the members' names for DNS to %s: %s", self.path,
                           exc.strerror or exc)
        self._write_etc_hosts(text)
        self._written = text

    def remove(self) -> None:
        """At stop (after dnsmasq's): dnsmasq's file and its directory go, and our block of /etc/hosts."""
        shutil.rmtree(self.path.parent, ignore_errors=True)
        self._write_etc_hosts("")
        self._written = None
