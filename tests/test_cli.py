"""The installed `quicether` command: help, version, and the compiled core behind it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from quicether import __version__


def _quicether(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["quicether", *args], capture_output=True, text=True, timeout=30)


def test_help_lists_commands() -> None:
    proc = _quicether("--help")
    assert proc.returncode == 0
    assert "usage: quicether" in proc.stdout
    assert "version" in proc.stdout


def test_version_reports_the_compiled_core() -> None:
    proc = _quicether("version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"quicether {__version__} (core {__version__})"


def test_unknown_command_is_an_error() -> None:
    proc = _quicether("frobnicate")
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr


def test_check_validates_a_config_without_applying_it(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[node]\naddress = "10.99.0.1/24"\n[lan]\ndevice = "eth0"\n[[wan]]\ndevice = "eth1"\n')
    proc = _quicether("check", "-c", str(good))
    assert proc.returncode == 0 and "valid (site, 0 peer(s), 1 WAN(s), LAN eth0)" in proc.stdout, proc.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[[wan]]\ndevice = "eth1"\nrate_mbit = 0\n')
    proc = _quicether("check", "-c", str(bad))
    assert proc.returncode == 1 and "wan[0].rate_mbit" in proc.stderr
    assert _quicether("check", "-c", str(tmp_path / "missing.toml")).returncode == 1


def test_every_command_has_help() -> None:
    commands = ["version", "keygen", "pubkey", "up", "status", "check", "invite", "join", "add-peer", "upgrade",
                "setup-code", "gateway"]
    for command in commands:
        proc = _quicether(command, "--help")
        assert proc.returncode == 0 and f"usage: quicether {command}" in proc.stdout, command


def test_the_daemon_raises_its_limit_of_open_files_as_far_as_its_hard_limit() -> None:
    # systemd starts services with a soft limit of 1024 open files; the TCP lane alone may need two per
    # connection, up to 1024 connections per end.
    script = ("import resource\n"
              "from quicether.__main__ import raise_open_files_limit\n"
              "resource.setrlimit(resource.RLIMIT_NOFILE, (1024, {hard}))\n"
              "print(raise_open_files_limit(), *resource.getrlimit(resource.RLIMIT_NOFILE))\n")
    import resource

    from quicether.__main__ import OPEN_FILES

    most = resource.getrlimit(resource.RLIMIT_NOFILE)[1]  # the highest hard limit this test may set
    most = OPEN_FILES * 2 if most == resource.RLIM_INFINITY else most
    for hard, expected in ((4096, "None 4096 4096"), (most, f"None {min(most, OPEN_FILES)} {most}")):
        out = subprocess.run([sys.executable, "-c", script.format(hard=hard)], capture_output=True, text=True,
                             check=True).stdout.strip()
        assert out == expected, out
