"""The installed `quicether` command: help, version, and the compiled core behind it."""

from __future__ import annotations

import subprocess

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
