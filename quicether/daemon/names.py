"""Members' names in DNS, under home.arpa (RFC 8375: a home network's own domain, never sent upstream):
each member of the mesh, this node too, as `<name>.home.arpa` → its overlay IPv4 and IPv6 ULA, for the
LAN's hosts through the appliance's dnsmasq.

The names are a hosts file in a directory dnsmasq watches (`--hostsdir`): a member learned, renewed or
revoked is in DNS (or out of it) at once, with no dnsmasq restart and no DHCP or DNS gap. dnsmasq reads
the directory after dropping root, so it lives in /run (not in the state directory, which only root may
enter), readable by all: member names and overlay addresses are what every member knows anyway.

    /run/quicether/names-<id>/members   "<address> <name>.home.arpa" per address (mode 644); <id> is a digest
                                        of the state directory (one per node, as in the lab); removed
                                        when the daemon stops
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

from quicether.atomic import write_private

log = logging.getLogger("quicether")
DOMAIN = "home.arpa"
RUN_DIR = Path("/run/quicether")
HOSTS_FILE = "members"


def directory(state_dir: Path) -> Path:
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12]
    return RUN_DIR / f"names-{digest}"


def prepare(path: Path) -> None:
    """Root, before dnsmasq starts: the directory it watches, readable by dnsmasq's user."""
    for part in (RUN_DIR, path):
        part.mkdir(exist_ok=True)
        os.chmod(part, 0o755)


def hosts_text(names: dict[str, list[str]]) -> str:
    """The hosts file for `names` (member name → its overlay addresses), sorted: an unchanged mesh writes
    nothing."""
    return "".join(f"{ip} {name}.{DOMAIN}\n" for name, ips in sorted(names.items()) for ip in ips)


class MemberNames:
    """The hosts file of member names, written when the members change; removed when the daemon stops."""

    def __init__(self, state_dir: Path) -> None:
        self.path = directory(state_dir) / HOSTS_FILE
        self._written: str | None = None
        self._failed = False

    def update(self, names: dict[str, list[str]]) -> None:
        text = hosts_text(names)
        if text == self._written:
            return
        try:
            prepare(self.path.parent)
            write_private(self.path, text, mode=0o644)
        except OSError as exc:
            if not self._failed:  # said once, not at every member learned
                log.error("cannot write the members' names for DNS to %s: %s", self.path, exc.strerror or exc)
            self._failed = True
            return
        self._written, self._failed = text, False

    def remove(self) -> None:
        """At stop (after dnsmasq's): the file and its directory go."""
        shutil.rmtree(self.path.parent, ignore_errors=True)
        self._written = None
