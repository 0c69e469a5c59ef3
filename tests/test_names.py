"""Members' names on the node itself: this node's block of /etc/hosts (quicether/daemon/names.py), written
whole, kept apart from the system's lines and from other nodes' blocks, gone at stop and at the next start
after a crash."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from quicether.daemon import names
from quicether.daemon.names import MemberNames, block_marks, hosts_text, set_hosts_block, with_block

SYSTEM = "127.0.0.1 localhost\n::1 localhost ip6-localhost\n"
MEMBERS = {"gw": ["100.64.0.1", "fd00::1"], "site-a": ["100.64.0.2", "fd00::2"]}


@pytest.fixture(autouse=True)
def _private_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lock and dnsmasq's directories go under tmp_path, not the host's /run."""
    monkeypatch.setattr(names, "RUN_DIR", tmp_path / "run")
    monkeypatch.setattr(names, "HOSTS_LOCK", tmp_path / "run" / "hosts.lock")


def _hosts(tmp_path: Path, text: str = SYSTEM) -> Path:
    path = tmp_path / "hosts"
    path.write_text(text)
    return path


def test_the_block_is_added_replaced_and_removed_leaving_other_lines_alone() -> None:
    entries = hosts_text(MEMBERS)
    assert entries.splitlines()[0] == "100.64.0.1 gw.home.arpa"
    once = with_block(SYSTEM, "n1", entries)
    begin, end = block_marks("n1")
    assert once == SYSTEM + begin + entries + end
    assert with_block(once, "n1", entries) == once, "rewriting the same names changes nothing"
    fewer = with_block(once, "n1", hosts_text({"gw": ["100.64.0.1"]}))
    assert "site-a" not in fewer and fewer.startswith(SYSTEM)
    assert with_block(fewer, "n1", "") == SYSTEM
    # Another node's block on the same host is not ours to touch; a file without a final newline is kept.
    both = with_block(with_block(SYSTEM.rstrip("\n"), "n2", "100.64.0.9 x.home.arpa\n"), "n1", entries)
    assert both.startswith(SYSTEM) and "x.home.arpa" in with_block(both, "n1", "")
    # A block cut short (a crash half way through a write in place) goes to the end of the file.
    assert with_block(SYSTEM + begin + "100.64.0.2 site-a.home.arpa\n", "n1", "") == SYSTEM


def test_the_file_is_replaced_through_a_link_keeping_its_mode(tmp_path: Path) -> None:
    real = _hosts(tmp_path)
    os.chmod(real, 0o644)
    link = tmp_path / "etc-hosts"
    link.symlink_to(real)  # the appliance: /etc/hosts -> /run/quicether/hosts
    inode = real.stat().st_ino
    assert set_hosts_block(link, "n1", hosts_text(MEMBERS))
    assert link.is_symlink() and "site-a.home.arpa" in real.read_text()
    assert real.stat().st_ino != inode, "a new file renamed over the old one, not written in place"
    assert real.stat().st_mode & 0o777 == 0o644
    assert not set_hosts_block(link, "n1", hosts_text(MEMBERS)), "unchanged: not written again"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hosts")], "no temporary left"


def test_a_hosts_file_that_is_a_mount_point_is_written_in_place(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    real = _hosts(tmp_path, SYSTEM + "# " + "x" * 500 + "\n")
    inode = real.stat().st_ino

    def busy(src: object, dst: object) -> None:  # what rename(2) says of a bind-mounted file
        raise OSError(errno.EBUSY, "Device or resource busy")

    monkeypatch.setattr(names.os, "replace", busy)
    assert set_hosts_block(real, "n1", hosts_text(MEMBERS))
    assert real.stat().st_ino == inode
    assert real.read_text() == with_block(SYSTEM + "# " + "x" * 500 + "\n", "n1", hosts_text(MEMBERS))
    set_hosts_block(real, "n1", "")
    assert real.read_text() == SYSTEM + "# " + "x" * 500 + "\n", "shorter: truncated to the new length"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hosts")]


def test_member_names_clean_a_crashed_runs_block_at_start_and_theirs_at_stop(tmp_path: Path) -> None:
    hosts = _hosts(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    stale = with_block(SYSTEM, names.node_id(state), "100.64.0.7 revoked.home.arpa\n")
    hosts.write_text(stale)
    member_names = MemberNames(state, lan_dns=True, etc_hosts=hosts)
    assert hosts.read_text() == SYSTEM, "what the crashed run left is gone before any member is known"
    member_names.update(MEMBERS)
    assert "site-a.home.arpa" in hosts.read_text()
    assert (names.directory(state) / names.HOSTS_FILE).read_text() == hosts_text(MEMBERS)
    member_names.update({"gw": MEMBERS["gw"]})  # site-a revoked
    assert "site-a" not in hosts.read_text() and "site-a" not in (names.directory(state) / "members").read_text()
    member_names.remove()
    assert hosts.read_text() == SYSTEM and not names.directory(state).exists()


def test_a_node_without_lan_dns_writes_only_its_hosts_file_and_a_node_in_no_network_cleans_up(
        tmp_path: Path) -> None:
    hosts = _hosts(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    member_names = MemberNames(state, lan_dns=False, etc_hosts=hosts)
    member_names.update(MEMBERS)
    assert "gw.home.arpa" in hosts.read_text() and not names.directory(state).exists()
    member_names.set_lan_dns(True)  # a reload turned DNS on on the LAN
    member_names.update(MEMBERS)
    assert (names.directory(state) / "members").is_file()
    # The node crashed, and starts again in no network: its block goes all the same.
    names.forget(state, hosts)
    assert hosts.read_text() == SYSTEM


def test_an_unwritable_hosts_file_is_said_once_and_names_for_the_lan_still_go_out(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state"
    state.mkdir()
    missing_dir = tmp_path / "read-only" / "hosts"  # its directory does not exist: cannot be created
    member_names = MemberNames(state, lan_dns=True, etc_hosts=missing_dir)
    member_names.update(MEMBERS)
    member_names.update({"gw": MEMBERS["gw"]})
    assert (names.directory(state) / "members").read_text() == hosts_text({"gw": MEMBERS["gw"]})
    assert sum("cannot write the members' names to" in r.message for r in caplog.records) == 1
