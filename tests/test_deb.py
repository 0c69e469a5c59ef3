"""The Debian package (scripts/build-deb) on a fresh Debian 12: `apt install ./quicether_….deb` in a root made
by mmdebstrap resolves its dependencies from Debian's mirror; `quicether gateway init` there, in a lab
namespace on the "internet", makes it a gateway (first with --no-start, then again: it keeps what exists,
starts the unit, finds the QUIC port answering); a lab site (this checkout's quicether) joins with the
printed invite (a network invite: the gateway admits it by itself, its LAN routed), and its LAN host
reaches the internet through the gateway (curl sees the gateway's address, iperf3 passes). A newer-version
package keeps the node id and config and restarts the daemon; `apt remove` stops it and leaves nothing in
nft, `ip rule` or the routes; `apt purge` removes config and state. In that root systemd does not run: a stand-in
(tests/lab/systemctl-standin.sh) takes the maintainer scripts' and gateway init's systemctl calls. The
same root with systemd, booted by systemd-nspawn in a lab namespace, shows it under the real systemd:
gateway init enables and starts the unit, an upgrade restarts it, remove stops it (nothing left), purge
cleans up. Lintian finds no errors.

    lan 10.0.50.10 ── site (router ns, repo's quicether) ─wan0─ isp0 ── internet ─┬─ gateway 198.18.0.2
                                                                                  │  (the package, chroot)
                                                                                  └─ server 198.18.0.3

scripts/test builds the package and sets QE_DEB (the wheel it was made from lies next to it); without it
(pytest run by hand) these tests are skipped: see `scripts/build-deb --help`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.lab import Lab, LinkSpec, build_wan_lab
from tests.lab import nodes as qe
from tests.lab.debroot import DebRoot, progress
from tests.lab.measure import iperf, start_iperf_server, wait_for
from tests.lab.netns import LabError
from tests.lab.sites import HTTP_PORT, curl, router_snapshot, start_whoami
from tests.lab.topology import LAN_PREFIX, REPO_ROOT

DEB = os.environ.get("QE_DEB")
pytestmark = pytest.mark.skipif(not DEB, reason="QE_DEB not set (scripts/test builds the package)")
PID_FILE = "/run/systemctl-standin/quicether.service.pid"
DAEMON_LOG = "/var/log/quicether.service.log"
CONFIG = "/etc/quicether/quicether.toml"
KEY = "/var/lib/quicether/node.key"


def _alive(pid: int) -> bool:
    """Running and not a zombie (the stand-in's daemon is reaped by whatever init this machine has)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _pid(root: DebRoot) -> int | None:
    """The daemon's pid, as the systemctl stand-in knows it, if it runs."""
    path = root.file(PID_FILE)
    pid = int(path.read_text()) if path.exists() else None
    return pid if pid is not None and _alive(pid) else None


def _log(root: DebRoot) -> str:
    path = root.file(DAEMON_LOG)
    return path.read_text()[-3000:] if path.exists() else "(no daemon log)"


def _newer_package(deb: Path, out: Path) -> Path:
    """The same build as a newer version, from the wheel scripts/build-deb left next to the package."""
    version = deb.name.split("_")[1]
    wheels = sorted(deb.parent.glob("quicether-*.whl"))
    assert wheels, f"no wheel next to {deb}"
    subprocess.run([str(REPO_ROOT / "scripts" / "build-deb"), "--wheel", str(wheels[-1]), "--version",
                    f"{version}+test1", "--out", str(out)], check=True, capture_output=True, text=True, timeout=300)
    return next(out.glob(f"quicether_{version}+test1_*.deb"))


def _start_site(node: qe.NodeSpec) -> None:
    """Starts the site's daemon on the config `quicether join` wrote (qe.start would rewrite it)."""
    log = open(node.state_dir / "daemon.log", "a")  # noqa: SIM115 - lives as long as the process
    node.proc = node.ns.popen([sys.executable, "-m", "quicether", "up", "-c", str(node.config_path)],
                              stdout=log, stderr=subprocess.STDOUT)
    wait_for(lambda: _answers(node), timeout=10)


def _answers(node: qe.NodeSpec) -> bool:
    assert node.proc is not None
    if node.proc.poll() is not None:
        raise LabError(f"{node.name} exited {node.proc.returncode}: {qe.read_log(node)}")
    try:
        node.status()
    except OSError:
        return False
    return True


def _connected(node: qe.NodeSpec) -> bool:
    peers = node.status()["peers"]
    return bool(peers) and all(p["connected"] for p in peers)


def test_lintian_finds_no_errors() -> None:
    assert DEB
    started = time.monotonic()
    proc = subprocess.run(["lintian", "--fail-on", "error", "--no-tag-display-limit", DEB], capture_output=True,
                          text=True, timeout=600)
    progress(f"lintian: {time.monotonic() - started:.0f}s")
    errors = [line for line in proc.stdout.splitlines() if line.startswith("E:")]
    assert proc.returncode == 0 and not errors, proc.stdout + proc.stderr


def test_install_gateway_init_join_upgrade_remove_purge(lab: Lab, tmp_path: Path) -> None:
    assert DEB
    deb = Path(DEB)
    t0 = time.monotonic()
    wl = build_wan_lab(lab, [LinkSpec(rate_mbit=200, delay_ms=4)], lan_static=False,
                       internet_hosts=("gateway", "server"), policy_routing=False)
    gw_ns, server, lan = wl.host("gateway"), wl.host("server"), wl.lan
    assert lan is not None
    gw_addr = wl.addr("gateway")

    # A fresh Debian 12 and the package, its dependencies from the mirror.
    root = DebRoot.create(tmp_path / "root")
    lab.on_close(root.remove)
    shutil.copy(deb, root.file("/root/"))
    progress(f"debian root unpacked ({time.monotonic() - t0:.0f}s); apt-get install ./{deb.name}")
    root.apt("update")
    root.apt("install", f"/root/{deb.name}")
    assert root.run("dpkg-query", "-W", "-f", "${Status}", "quicether").stdout == "install ok installed"
    assert "(core " in root.run("quicether", "version").stdout
    assert root.file(CONFIG).exists() and not root.file(KEY).exists()
    assert _pid(root) is None  # a fresh install starts nothing: there is no config yet
    progress(f"installed ({time.monotonic() - t0:.0f}s); quicether gateway init --no-start")

    # gateway init, first without starting: key, config, forwarding, invite.
    before = router_snapshot(gw_ns)
    first = root.run("quicether", "gateway", "init", "--no-start", ns=gw_ns).stdout
    assert "node key: created" in first and f"internet port: eth0 ({gw_addr}" in first
    assert "daemon: not started (--no-start)" in first
    assert "eth0 accepts QUIC (udp 4433) and replies" in first  # no SSH server in the lab: nothing more open
    assert f"public endpoint: {gw_addr}:4433" in first
    code = next(line for line in first.splitlines() if line.startswith("qej1."))
    assert "█" in first  # the QR code (qrencode came as a Recommends)
    assert "network: created home" in first and "admits the router by itself" in first
    assert "add-peer" not in first
    config = root.file(CONFIG).read_text()
    assert 'role = "gateway"' in config and 'internet = "eth0"' in config
    assert "net.ipv4.ip_forward = 1" in root.file("/etc/sysctl.d/60-quicether.conf").read_text()
    key = root.file(KEY).read_bytes()

    # Again, starting it: nothing changes, the unit is enabled and started, the QUIC port answers.
    again = root.run("quicether", "gateway", "init", ns=gw_ns).stdout
    assert "node key: " in again and "exists" in again and "config: " in again and "kept" in again
    assert "quicether.service: enabled, started" in again, again
    assert "QUIC port: udp 4433 answers locally" in again, _log(root)
    assert root.file(CONFIG).read_text() == config and root.file(KEY).read_bytes() == key
    # Each run prints a new single-use invite (the first one stays usable until it is used or expires).
    code = next(line for line in again.splitlines() if line.startswith("qej1."))
    assert code not in first
    node_id = root.run("quicether", "pubkey").stdout.strip()
    progress(f"gateway running ({time.monotonic() - t0:.0f}s); a lab site joins")

    # A site joins with the invite: the gateway admits it by itself (no add-peer), routing its LAN.
    site = qe.make_node(wl.router, "site-a", "", tmp_path)
    site.wans = [{"device": wl.wans[0].router_if, "gateway": wl.wans[0].isp_addr}]
    site.sections["lan"] = {"device": "lan", "address": f"{LAN_PREFIX}.1/24", "dhcp": False, "dns": False}
    site.write_config()
    lab.on_close(lambda: site.proc.kill() if site.proc else None)
    joining = wl.router.run(sys.executable, "-m", "quicether", "join", code, "--exit", "--name", "site-a", "-c",
                            str(site.config_path), check=False)
    joined = joining.stdout + joining.stderr
    assert joining.returncode == 0, joined + _log(root)
    assert "joined network home as site-a" in joined and f"routing its LAN {LAN_PREFIX}.0/24" in joined, joined
    assert "LAN internet traffic now goes through gateway" in joined, joined
    _start_site(site)
    wait_for(lambda: _connected(site), timeout=20)
    wait_for(lambda: site.status()["router"]["lan"]["exit_active"], timeout=10)
    lan.ip("addr", "add", f"{LAN_PREFIX}.10/24", "dev", "eth0")
    lan.ip("route", "add", "default", "via", f"{LAN_PREFIX}.1")

    # The LAN host's internet traffic leaves through the gateway.
    lab.on_close(start_whoami(server).kill)
    assert curl(lan, f"http://{wl.addr('server')}:{HTTP_PORT}/") == gw_addr, _log(root)
    start_iperf_server(server)
    result = iperf(lan, wl.addr("server"), seconds=3)
    progress(f"iperf3 through the gateway: {result.mbit_s:.0f} Mbit/s ({time.monotonic() - t0:.0f}s)")
    assert result.mbit_s > 20
    assert "site-a" in root.run("quicether", "status", ns=gw_ns).stdout
    # The members' names resolve on the gateway itself (it runs no dnsmasq): its /etc/hosts has them.
    site_ip = site.status()["node"]["network"]["address"].split("/")[0]
    # `timeout 1`: a name not yet in the hosts file goes on to a name server the lab cannot reach (10 s).
    wait_for(lambda: site_ip in root.run("timeout", "1", "getent", "ahostsv4", "site-a.home.arpa", ns=gw_ns,
                                         check=False).stdout, timeout=10, step=0.5)

    # Upgrade: same key and config, the daemon restarted.
    newer = _newer_package(deb, tmp_path / "newer")
    shutil.copy(newer, root.file("/root/"))
    pid = _pid(root)
    config = root.file(CONFIG).read_text()
    root.apt("install", f"/root/{newer.name}", ns=gw_ns)
    assert root.run("dpkg-query", "-W", "-f", "${Version}", "quicether").stdout == newer.name.split("_")[1]
    new_pid = _pid(root)
    assert new_pid is not None and new_pid != pid, _log(root)
    assert root.file(KEY).read_bytes() == key and root.file(CONFIG).read_text() == config
    assert root.run("quicether", "pubkey").stdout.strip() == node_id
    wait_for(lambda: curl(lan, f"http://{wl.addr('server')}:{HTTP_PORT}/", timeout=2) == gw_addr, timeout=30,
             step=0.5)
    progress(f"upgraded to {newer.name}, daemon restarted, the site back ({time.monotonic() - t0:.0f}s)")

    # Remove: the daemon stops and leaves nothing; config and key stay.
    removed = root.apt("remove", "quicether", ns=gw_ns)
    assert _pid(root) is None and not _alive(new_pid)
    assert "not empty" not in removed.stdout + removed.stderr  # byte-compiled files went with the package
    assert not root.file("/usr/lib/quicether").exists() and not root.file("/usr/bin/quicether").exists()
    after = router_snapshot(gw_ns)
    assert "quicether" not in after["nft"], after["nft"]
    assert after["rules"] == before["rules"] and after["routes"] == before["routes"]
    assert "qe0" not in gw_ns.ip("-br", "link").stdout
    assert root.file(KEY).read_bytes() == key and root.file(CONFIG).read_text() == config
    assert "home.arpa" not in root.file("/etc/hosts").read_text(), "the members' names went with the daemon"

    # Purge: config and state gone.
    root.apt("purge", "quicether", ns=gw_ns)
    for path in ("/etc/quicether", "/var/lib/quicether", "/etc/sysctl.d/60-quicether.conf", "/usr/bin/quicether"):
        assert not root.file(path).exists(), path
    progress(f"removed and purged ({time.monotonic() - t0:.0f}s)")


def test_under_systemd_init_starts_upgrade_restarts_remove_stops(lab: Lab, tmp_path: Path) -> None:
    assert DEB
    deb = Path(DEB)
    t0 = time.monotonic()
    gw_ns, upstream = lab.add_namespace("gw"), lab.add_namespace("up", forwarding=True)
    lab.veth(gw_ns, "eth0", upstream, "down")
    gw_ns.ip("addr", "add", "198.18.0.2/24", "dev", "eth0")
    upstream.ip("addr", "add", "198.18.0.1/24", "dev", "down")
    gw_ns.ip("route", "add", "default", "via", "198.18.0.1")
    root = DebRoot.create(tmp_path / "root", standin=False)
    lab.on_close(root.remove)
    newer = _newer_package(deb, tmp_path / "newer")
    for package in (deb, newer):
        shutil.copy(package, root.file("/root/"))
    root.apt("update")
    root.apt("install", f"/root/{deb.name}", "systemd", "systemd-sysv", "dbus")
    progress(f"systemd root ready ({time.monotonic() - t0:.0f}s); booting it (systemd-nspawn)")
    container = root.boot(gw_ns, tmp_path / "console.log")
    before = router_snapshot(gw_ns)
    assert container.unit("UnitFileState") == "disabled" and container.unit("ActiveState") == "inactive"

    out = container.run("quicether", "gateway", "init").stdout
    assert "quicether.service: enabled, started" in out and "QUIC port: udp 4433 answers locally" in out, \
        out + container.run("journalctl", "-u", "quicether", "--no-pager", check=False).stdout[-2000:]
    assert container.unit("UnitFileState") == "enabled" and container.unit("ActiveState") == "active"
    pid, node_id = container.unit("MainPID"), container.run("quicether", "pubkey").stdout.strip()
    config = root.file(CONFIG).read_text()
    progress(f"gateway init under systemd ({time.monotonic() - t0:.0f}s); upgrade, remove, purge")

    container.run("apt-get", "install", "-y", "-q", f"/root/{newer.name}")
    assert container.unit("ActiveState") == "active" and container.unit("MainPID") not in (pid, "0")
    assert container.run("quicether", "pubkey").stdout.strip() == node_id and root.file(CONFIG).read_text() == config
    assert "answers locally" in container.run("quicether", "gateway", "init").stdout

    container.run("apt-get", "remove", "-y", "-q", "quicether")
    assert container.unit("ActiveState") == "inactive", \
        container.run("journalctl", "-u", "quicether", "--no-pager", check=False).stdout[-4000:]
    after = router_snapshot(gw_ns)
    assert "quicether" not in after["nft"] and after["rules"] == before["rules"]
    assert after["routes"] == before["routes"] and "qe0" not in gw_ns.ip("-br", "link").stdout
    assert root.file(CONFIG).read_text() == config and root.file(KEY).exists()

    container.run("apt-get", "purge", "-y", "-q", "quicether")
    for path in ("/etc/quicether", "/var/lib/quicether", "/etc/sysctl.d/60-quicether.conf",
                 "/etc/systemd/system/multi-user.target.wants/quicether.service"):
        assert not root.file(path).exists(), path
    progress(f"under systemd: done ({time.monotonic() - t0:.0f}s)")
