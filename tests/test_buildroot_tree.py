"""Static checks of the appliance build trees (no downloads): the Buildroot external tree's defconfigs,
packages and referenced files, the kernel fragment, and the rootfs overlay both images install."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from quicether.config import parse

ROOT = Path(__file__).resolve().parents[1]
TREE = ROOT / "buildroot-config"
OVERLAY = ROOT / "rootfs-overlay"
DEFCONFIGS = sorted((TREE / "configs").glob("*_defconfig"))
LINE = re.compile(r'^(BR2_[A-Za-z0-9_]+)=(y|"[^"]*"|[0-9]+)$')
NOT_SET = re.compile(r"^# (BR2_[A-Za-z0-9_]+) is not set$")
EXTERNAL_PATH = re.compile(r"\$\(BR2_EXTERNAL_QUICETHER_PATH\)/([^\s\"]+)")


def _our_symbols() -> set[str]:
    symbols = set()
    for config_in in TREE.rglob("Config.in"):
        symbols |= set(re.findall(r"^config (BR2_[A-Z0-9_]+)", config_in.read_text(), re.M))
    return symbols


def _upstream_symbols() -> set[str]:
    lines = (TREE / "upstream-packages.txt").read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def test_external_tree_layout() -> None:
    assert re.search(r"^name: QUICETHER$", (TREE / "external.desc").read_text(), re.M)
    assert "package/*/*.mk" in (TREE / "external.mk").read_text()
    for sourced in re.findall(r'source "\$BR2_EXTERNAL_QUICETHER_PATH/([^"]+)"', (TREE / "Config.in").read_text()):
        assert (TREE / sourced).is_file(), sourced
    packages = [p for p in (TREE / "package").iterdir() if p.is_dir()]
    assert packages
    for package in packages:
        variable = package.name.upper().replace("-", "_")
        makefile = (package / f"{package.name}.mk").read_text()
        assert f"{variable}_VERSION" in makefile and "$(eval $(python-package))" in makefile
        assert f"config BR2_PACKAGE_{variable}\n" in (package / "Config.in").read_text()
        assert f'source "$BR2_EXTERNAL_QUICETHER_PATH/package/{package.name}/Config.in"' in (
            TREE / "Config.in").read_text()


def test_there_is_a_defconfig_per_board() -> None:
    assert [d.name for d in DEFCONFIGS] == ["quicether_rpi4_64_defconfig", "quicether_x86_64_defconfig"]


@pytest.mark.parametrize("defconfig", DEFCONFIGS, ids=lambda d: d.name)
def test_defconfig_parses_and_refers_only_to_what_exists(defconfig: Path) -> None:
    known = _our_symbols() | _upstream_symbols()
    seen: set[str] = set()
    for number, line in enumerate(defconfig.read_text().splitlines(), 1):
        if not line.strip() or (line.startswith("#") and not NOT_SET.match(line) and "BR2_" not in line):
            continue
        match = LINE.match(line) or NOT_SET.match(line)
        assert match, f"{defconfig.name}:{number}: not a defconfig line: {line!r}"
        symbol = match.group(1)
        assert symbol not in seen, f"{defconfig.name}:{number}: {symbol} set twice"
        seen.add(symbol)
        if symbol.startswith("BR2_PACKAGE_"):
            assert symbol in known, f"{defconfig.name}:{number}: {symbol} is neither ours nor in upstream-packages.txt"
        for relative in EXTERNAL_PATH.findall(line):
            assert (TREE / relative).exists(), f"{defconfig.name}:{number}: {relative} does not exist"
    assert "BR2_PACKAGE_QUICETHER" in seen and "BR2_INIT_SYSTEMD" in seen


def test_package_selects_are_known() -> None:
    known = _our_symbols() | _upstream_symbols()
    for config_in in (TREE / "package").rglob("Config.in"):
        for symbol in re.findall(r"(?:select|depends on) !?(BR2_PACKAGE_[A-Z0-9_]+)", config_in.read_text()):
            assert symbol in known, f"{config_in}: {symbol}"


def test_kernel_fragment_lines() -> None:
    options = {}
    for line in (TREE / "board" / "common" / "linux.fragment").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            assert re.fullmatch(r"CONFIG_[A-Z0-9_]+", name) and value in ("y", "m", "n"), line
            options[name] = value
    for needed in ("CONFIG_TUN", "CONFIG_NF_TABLES_INET", "CONFIG_NFT_MASQ", "CONFIG_IP_MULTIPLE_TABLES",
                   "CONFIG_MPTCP", "CONFIG_NET_SCH_TBF"):
        assert options.get(needed) == "y", needed


def test_overlay_default_config_is_valid_and_units_point_at_real_files() -> None:
    config = parse((OVERLAY / "usr/share/quicether/default.toml").read_text(), Path("default.toml"))
    assert config.lan is not None and config.lan.device == "eth0" and config.lan.address == "192.168.50.1/24"
    assert config.detect_wans and config.webui.port == 80 and str(config.state_dir).startswith("/data/")
    units = OVERLAY / "etc/systemd/system"
    for unit in units.glob("*.service"):
        for command in re.findall(r"^ExecStart=(\S+)", unit.read_text(), re.M):
            assert command == "/usr/bin/quicether" or (OVERLAY / command.lstrip("/")).exists(), (unit, command)
    for wanted in (units / "multi-user.target.wants").iterdir():
        assert (units / wanted.readlink().name).is_file(), wanted
    assert (OVERLAY / "etc/quicether").readlink() == Path("/data/quicether")
    assert (OVERLAY / "usr/libexec/quicether/firstboot").stat().st_mode & 0o111
    # /etc/hosts (a link into /run, as the root is read-only) is seeded at boot from the overlay's copy.
    tmpfiles = (OVERLAY / "usr/lib/tmpfiles.d/quicether.conf").read_text()
    seed = re.search(r"^C /run/quicether/hosts .* (\S+)$", tmpfiles, re.M)
    assert seed and (OVERLAY / seed.group(1).lstrip("/")).is_file(), tmpfiles
    assert "localhost" in (OVERLAY / seed.group(1).lstrip("/")).read_text()
    for build in (ROOT / "scripts/build-image.sh", ROOT / "buildroot-config/board/common/post-build.sh"):
        assert re.search(r'ln -sf /run/quicether/hosts "\\?\$\w+/etc/hosts"', build.read_text()), build
