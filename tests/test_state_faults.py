"""Issue 15, bad input: damaged state files, a read-only state directory and a full disk, each met by the
real daemon in a lab namespace. A file the node cannot do without (its key) stops it with one line naming
the file and what is wrong; one it can do without (the peer cache, the network's ledger on the admin node,
learned revocations) is named in the log and the node runs on. Nothing is regenerated behind the owner's
back, and no traceback reaches the log. A config save that cannot be written (disk full, read-only file
system) is refused with the reason; the old file and the running config stay, and the daemon runs on."""

from __future__ import annotations

import contextlib
import html
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from quicether import network, setup_code
from quicether.daemon import api
from quicether.identity import encode_node_id, load
from tests.lab import Lab
from tests.lab import nodes as qe
from tests.lab.measure import ping, wait_for
from tests.lab.netns import LabError, Namespace
from tests.lab.sites import curl

NET = "home"


def _admin_node(lab: Lab, tmp_path: Path) -> qe.NodeSpec:
    """A lone node that is the admin of network `home` (so it keeps every kind of state file), with one
    member reached before (its peer cache) and one learned revocation."""
    ns = lab.add_namespace("a")
    node = qe.make_node(ns, "a", "", tmp_path)
    net = network.create(node.state_dir, NET, load(node.state_dir / "node.key"))
    node.sections["network"] = {"certificate": net.members[0].certificate}
    node.sections["discovery"] = {"dht": False, "lan": False}
    other = network.issue(net, bytes(range(32)), "b")
    cache = f'[{{"certificate": "{other.certificate}", "endpoints": ["192.0.2.7:4433"], "seen": 1}}]\n'
    (node.state_dir / "peers.json").write_text(cache)
    return node


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(1, len(path.read_bytes()) // 2)])


def _garble(path: Path) -> None:
    path.write_bytes(b"\x00\xff" + path.read_bytes()[2:])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


# A file the node cannot run without: the daemon stops with an error that names it and says what is wrong.
FATAL = [
    ("node.key", _truncate, "is damaged: not a QuicEther key (expected base64: Incorrect padding)"),
    ("node.key", _garble, "is damaged: not a QuicEther key (expected base64: Only base64 data is allowed)"),
    ("node.key", _empty, "is empty (truncated?): restore it from a backup"),
    ("node.key", lambda p: p.write_text("AAAA\n"), "holds 3 bytes, expected a 32-byte Ed25519 seed (truncated?)"),
]
# Files the node runs on without (logged, naming the file): the admin's ledger, its key, the invites, the
# learned revocations, the peer cache (set aside: the DHT and the configured peers find the members too).
SURVIVABLE = [
    (f"networks/{NET}/members.json", _truncate, "is damaged (JSONDecodeError"),
    (f"networks/{NET}/network.json", _garble, "is damaged (UnicodeDecodeError"),
    (f"networks/{NET}/network.key", _truncate, "is damaged: not a QuicEther key"),
    (f"networks/{NET}/invites.json", _empty, "are damaged"),
    ("revocations", _garble, "line 1 skipped"),
    ("peers.json", _truncate, "is damaged (JSONDecodeError"),
]


@pytest.mark.parametrize("name,damage,problem", FATAL, ids=["truncated", "garbled", "empty", "short"])
def test_a_damaged_node_key_stops_the_daemon_with_an_error_naming_it_and_is_never_replaced(
        lab: Lab, tmp_path: Path, name: str, damage: Callable[[Path], None], problem: str) -> None:
    node = _admin_node(lab, tmp_path)
    path = node.state_dir / name
    damage(path)
    damaged = path.read_bytes()
    with pytest.raises(LabError, match="exited 1"):
        qe.start(node)
    log = qe.read_log(node)
    assert f"quicether: error: {path} {problem}" in log, log
    assert "Traceback" not in log, log
    assert path.read_bytes() == damaged, "the damaged key was rewritten (a new identity)"
    assert sorted(p.name for p in node.state_dir.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("name,damage,problem", SURVIVABLE, ids=[n for n, _d, _p in SURVIVABLE])
def test_a_damaged_state_file_the_node_can_do_without_is_named_and_the_node_runs(
        lab: Lab, tmp_path: Path, name: str, damage: Callable[[Path], None], problem: str) -> None:
    node = _admin_node(lab, tmp_path)
    if name == "revocations":
        (node.state_dir / name).write_text("AAAA\n")
    path = node.state_dir / name
    if not path.exists():  # invites.json appears with the first invite
        path.write_text("[]\n")
    key_before = (node.state_dir / "node.key").read_bytes()
    damage(path)
    damaged = path.read_bytes()
    qe.start(node)
    try:
        status = node.status()
        assert status["ok"] and status["node"]["node_id"] == node.node_id, status
        time.sleep(0.5)  # the start's log lines written
        log = qe.read_log(node)
        lines = [line for line in log.splitlines() if str(path) in line and problem in line]
        assert len(lines) == 1, f"expected one line naming {path} and '{problem}':\n{log}"
        assert "Traceback" not in log, log
        if name == "peers.json":
            aside = path.with_name("peers.json.damaged")
            assert f"set aside as {aside}" in lines[0] and aside.read_bytes() == damaged and not path.exists()
        else:  # kept as it is, for its owner to restore from a backup
            assert path.read_bytes() == damaged
        assert (node.state_dir / "node.key").read_bytes() == key_before
    finally:
        assert qe.stop(node) == 0


def _in_daemon_mounts(node: qe.NodeSpec, *args: str) -> None:
    """Runs a mount command in the daemon's mount namespace (`ip netns exec` gave it its own)."""
    assert node.proc is not None
    subprocess.run(["nsenter", "-t", str(node.proc.pid), "-m", *args], check=True, capture_output=True)


@contextlib.contextmanager
def _mounted(*args: str, target: Path) -> Iterator[None]:
    subprocess.run(["mount", *args, str(target)], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False, capture_output=True)


def _pair(lab: Lab, tmp_path: Path) -> tuple[qe.NodeSpec, qe.NodeSpec]:
    ns_a, ns_b = qe.two_hosts(lab)
    a = qe.make_node(ns_a, "a", "10.99.0.1/24", tmp_path)
    b = qe.make_node(ns_b, "b", "10.99.0.2/24", tmp_path)
    qe.pair(a, b, "10.1.0.2:4433")
    qe.start(b)
    return a, b


def _launch(node: qe.NodeSpec, config: Path, log: Path) -> subprocess.Popen[str]:
    """Runs `quicether up -c config` for `node` (the config written beforehand), its output to `log`."""
    with open(log, "a") as out:
        node.proc = node.ns.popen([sys.executable, "-m", "quicether", "up", "-c", str(config)], stdout=out,
                                  stderr=subprocess.STDOUT)
    return node.proc


def _start_with_config(node: qe.NodeSpec, config: Path) -> None:
    """Starts `node` with its config at `config` (outside its state directory)."""
    node.write_config()
    config.write_text(node.config_path.read_text())
    node.config_path.unlink()
    proc = _launch(node, config, node.state_dir / "daemon.log")
    deadline = time.monotonic() + 10
    while True:
        try:
            node.status()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"{node.name} did not start: {qe.read_log(node)}") from None
            time.sleep(0.05)


def _refused_save(node: qe.NodeSpec, config: Path, reason: str) -> None:
    """A config save (the web UI's path: apply_config) that cannot be written is refused with `reason`, and
    the file, the running config and the tunnel stay as they were."""
    before = config.read_bytes()
    peers_before = [p["name"] for p in node.status()["peers"]]
    changed = before.decode() + f'\n[[peer]]\nname = "c"\nkey = "{encode_node_id(bytes([7] * 32))}"\n'
    answer = api.request(node.state_dir / "api.sock", "apply_config", text=changed)
    assert answer["ok"] is False and answer.get("saved") is False, answer
    assert f"cannot save {config}: {reason}; the previous config is kept" in answer["error"], answer
    assert config.read_bytes() == before
    assert sorted(p.name for p in config.parent.iterdir() if p.name.startswith(".")) == []
    assert node.proc is not None and node.proc.poll() is None
    assert [p["name"] for p in node.status()["peers"]] == peers_before
    assert ping(node.ns, "10.99.0.2", count=5, interval=0.1).received == 5, "the tunnel still carries traffic"
    assert "Traceback" not in qe.read_log(node)


def test_a_config_save_on_a_full_disk_is_refused_and_the_old_config_kept(lab: Lab, tmp_path: Path) -> None:
    a, _b = _pair(lab, tmp_path)
    etc = tmp_path / "etc"
    etc.mkdir()
    with _mounted("-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", target=etc):
        config = etc / "quicether.toml"
        _start_with_config(a, config)
        try:
            qe.wait_connected(a)
            filler = etc / "filler"
            with contextlib.suppress(OSError), open(filler, "wb") as out:  # until ENOSPC
                while True:
                    out.write(b"\0" * 4096)
                    out.flush()
            _refused_save(a, config, "No space left on device")
            # Room again: the same save goes through, so the daemon was not left half-broken.
            filler.unlink()
            text = config.read_text().replace('name = "b"', 'name = "b2"')
            answer = api.request(a.state_dir / "api.sock", "apply_config", text=text)
            assert answer["ok"] and answer["changes"] == ["peer b2 changed"], answer
            assert [p["name"] for p in a.status()["peers"]] == ["b2"]
        finally:
            assert qe.stop(a) == 0


def test_a_state_dir_turned_read_only_refuses_the_save_and_the_daemon_runs_on(lab: Lab, tmp_path: Path) -> None:
    a, _b = _pair(lab, tmp_path)
    with _mounted("--bind", str(a.state_dir), target=a.state_dir):
        qe.start(a)
        try:
            qe.wait_connected(a)
            # The flash card's file system remounted read-only under the running daemon (an I/O error).
            _in_daemon_mounts(a, "mount", "-o", "remount,ro,bind", str(a.state_dir))
            _refused_save(a, a.config_path, "Read-only file system")
            answer = api.request(a.state_dir / "api.sock", "reload")
            assert answer["ok"] and answer["changes"] == [], answer
        finally:
            # It stops cleanly too: the socket it cannot remove is said, not an error exit.
            assert qe.stop(a) == 0, qe.read_log(a)
    assert f"cannot remove the API socket {a.state_dir / 'api.sock'}: Read-only file system" in qe.read_log(a)


def test_a_read_only_state_dir_at_start_is_an_error_naming_it(lab: Lab, tmp_path: Path) -> None:
    a, _b = _pair(lab, tmp_path)
    a.write_config()
    log = tmp_path / "a.log"
    with _mounted("--bind", "-o", "ro", str(a.state_dir), target=a.state_dir):
        assert _launch(a, a.config_path, log).wait(timeout=20) == 1
    text = log.read_text()
    assert f"quicether: error: cannot create the API socket {a.state_dir / 'api.sock'}: Read-only file system" \
        in text, text
    assert "Traceback" not in text, text
    # What it had set up before it failed is gone (the TUN device, with it its routes). By name: the text
    # also names the lab's namespaces ("link-netns qe0…"), which can start with the TUN's name.
    links = {line.split(":")[1].strip().partition("@")[0] for line in a.ns.ip("-o", "link", "show").stdout.splitlines()}
    assert a.tun not in links, links


def _router(lab: Lab, tmp_path: Path, **lan: Any) -> tuple[qe.NodeSpec, Namespace]:
    """A node with a LAN (so the daemon runs its web UI there) and a host on that LAN."""
    router, host = lab.add_namespace("r"), lab.add_namespace("h")
    lab.veth(router, "lan", host, "eth0")
    host.ip("addr", "add", "192.168.50.10/24", "dev", "eth0")
    node = qe.make_node(router, "r", "10.99.0.1/24", tmp_path)
    node.sections["lan"] = {"device": "lan", "address": "192.168.50.1/24", **lan}
    (node.state_dir / "webui").mkdir(mode=0o700)
    return node, host


def test_a_damaged_web_ui_password_record_is_said_on_the_login_page_and_in_the_log(lab: Lab, tmp_path: Path
                                                                                   ) -> None:
    node, host = _router(lab, tmp_path, dhcp=False, dns=False)
    ui_dir = node.state_dir / "webui"
    record = ui_dir / "webui-admin.json"
    record.write_text('{"algorithm": "scrypt", "n": 16384, "r": 8, "p": 1, "salt": "5f2a')  # cut short
    damaged = record.read_bytes()
    qe.start(node)
    try:
        wait_for(lambda: curl(host, "http://192.168.50.1/healthz", timeout=1) is not None, timeout=20)
        page = curl(host, "http://192.168.50.1/login") or ""
        problem = f"The admin password record {record} is not a password record (JSONDecodeError"
        assert problem in html.unescape(page) and "nobody can log in" in page, page
        log = qe.read_log(node)
        assert f"quicether-webui: ERROR {problem}" in log and "Traceback" not in log, log
        # Kept as it was (not replaced by a new password nor set aside): only its owner decides.
        assert record.read_bytes() == damaged
    finally:
        assert qe.stop(node) == 0


def test_a_damaged_setup_code_sessions_file_and_lease_file_are_named_and_the_router_runs(
        lab: Lab, tmp_path: Path) -> None:
    node, host = _router(lab, tmp_path)
    code_file = node.state_dir / "webui" / setup_code.CODE_FILE
    code_file.write_text('{"code": "K7QD-')  # cut short
    sessions_file = node.state_dir / "webui" / setup_code.SESSIONS_FILE
    sessions_file.write_bytes(b"\x00\xff garbage")
    qe.start(node)
    try:
        wait_for(lambda: curl(host, "http://192.168.50.1/healthz", timeout=1) is not None, timeout=20)
        # The code no one could have matched is replaced, and the one `quicether setup-code` prints opens
        # the wizard (before, the wizard refused every code for good).
        printed = node.ns.run(sys.executable, "-m", "quicether", "setup-code", "--state-dir",
                              str(node.state_dir)).stdout.strip()
        assert setup_code.matches(node.state_dir, printed), printed
        # dnsmasq's lease file with a damaged line: the status (the dashboard polls it) still answers.
        (node.state_dir / "dhcp.leases").write_text("garbage line here x\n1700000000 aa:bb:cc:dd:ee:ff "
                                                    "192.168.50.99 laptop *\n")
        status = node.status()
        assert status["ok"] and [lease["hostname"] for lease in status["router"]["lan"]["leases"]] == ["laptop"], status
        log = qe.read_log(node)
        assert f"the setup code in {code_file} is damaged: replaced by a new one" in log, log
        assert f"stored sessions {sessions_file} cannot be read (UnicodeDecodeError" in log, log
        assert "Traceback" not in log, log
    finally:
        assert qe.stop(node) == 0
