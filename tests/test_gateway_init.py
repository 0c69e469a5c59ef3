"""`quicether gateway init` without a network lab: the internet port from `ip -j` output, the config it
writes, running it again (nothing changes unless --force; peers survive --force), the remembered public
endpoint, forwarding, the unit calls, the QUIC check against a stand-in server, and the invite it prints.
The whole command on a real Debian install is in tests/test_deb.py."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from quicether import config_edit, gateway_init, network
from quicether.__main__ import build_parser
from quicether.config import load
from quicether.identity import generate
from quicether.invite import decode, decode_network

ROUTES = [{"dst": "default", "gateway": "203.0.113.1", "dev": "ens3", "metric": 100},
          {"dst": "default", "gateway": "192.0.2.1", "dev": "ens4", "metric": 50}]
ADDRS = [{"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "scope": "host"}]},
         {"ifname": "ens3", "addr_info": [{"family": "inet", "local": "203.0.113.7", "scope": "global"}]},
         {"ifname": "ens4", "addr_info": [{"family": "inet", "local": "169.254.0.9", "scope": "link"},
                                          {"family": "inet", "local": "192.0.2.10", "scope": "global"}]},
         {"ifname": "ens5", "addr_info": [{"family": "inet6", "local": "2001:db8::1", "scope": "global"}]}]
SITE_ID = "qe1aaaqeayeaudaocajbifqydiob4ibceqtcqkrmfyydenbwha5dypq"
SSHD = ('LISTEN 0 128 0.0.0.0:22 0.0.0.0:* users:(("sshd",pid=512,fd=3))\n'
        'LISTEN 0 128 [::]:22 [::]:* users:(("sshd",pid=512,fd=4))\n'
        'LISTEN 0 4096 127.0.0.1:631 0.0.0.0:* users:(("cupsd",pid=600,fd=7))\n')


class FakeHost:
    """Answers `ip -j` like a host with a default route on ens3 and `ss` like one with sshd on port 22,
    and records systemctl calls."""

    def __init__(self, routes: list[dict[str, object]] | None = None, active: bool = False,
                 addrs: list[dict[str, object]] | None = None, listening: str = SSHD) -> None:
        self.listening = listening
        self.routes = routes if routes is not None else ROUTES[:1]
        self.addrs = addrs if addrs is not None else ADDRS
        self.active = active
        self.calls: list[list[str]] = []

    def __call__(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(args)
        out, rc = "", 0
        if args[:4] == ["ip", "-j", "-4", "route"]:
            out = json.dumps(self.routes)
        elif args[:4] == ["ip", "-j", "-4", "addr"]:
            out = json.dumps(self.addrs)
        elif args[:2] == ["ss", "-Hltnp"]:
            out = self.listening
        elif args[:2] == ["systemctl", "is-active"]:
            rc = 0 if self.active else 3
        elif args[:2] == ["systemctl", "start"] or args[:2] == ["systemctl", "restart"]:
            self.active = True
        return subprocess.CompletedProcess(args, rc, out, "")

    def systemctl(self) -> list[str]:
        return [" ".join(c[1:]) for c in self.calls if c[0] == "systemctl"]


def _opts(tmp_path: Path, **changes: object) -> gateway_init.Options:
    values: dict[str, object] = {"config_path": tmp_path / "etc" / "quicether.toml", "state_dir": tmp_path / "state",
                                 "sysctl_path": tmp_path / "sysctl.d" / "60-quicether.conf",
                                 "proc_forwarding": tmp_path / "ip_forward", "start": False,
                                 "network": None}  # the steps apart from the network; its tests give one
    values.update(changes)
    if not (tmp_path / "ip_forward").exists():
        (tmp_path / "ip_forward").write_text("0\n")
    return gateway_init.Options(**values)  # type: ignore[arg-type]


def _init(opts: gateway_init.Options, host: FakeHost | None = None,
          systemd: bool = False) -> tuple[gateway_init.Result, str]:
    out = io.StringIO()
    result = gateway_init.run_init(opts, out=out, run=host or FakeHost(), systemd=lambda: systemd)
    return result, out.getvalue()


@pytest.fixture(autouse=True)
def short_look(monkeypatch: pytest.MonkeyPatch) -> None:
    """The look for a daemon started elsewhere (on 127.0.0.1:4433 of this host) need not wait a second."""
    monkeypatch.setattr(gateway_init, "QUIC_LOOK_S", 0.05)


@pytest.fixture
def quic_server() -> Iterator[int]:
    """A UDP port that answers every datagram with a Version Negotiation packet, as a QUIC server does."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, addr = sock.recvfrom(2048)
            except TimeoutError:
                continue
            dcid_len = data[5]
            dcid = data[6:6 + dcid_len]
            scid_len = data[6 + dcid_len]
            scid = data[7 + dcid_len:7 + dcid_len + scid_len]
            sock.sendto(bytes([0x80]) + b"\0\0\0\0" + bytes([len(scid)]) + scid + bytes([len(dcid)]) + dcid
                        + (1).to_bytes(4, "big"), addr)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock.getsockname()[1]
    stop.set()
    thread.join()
    sock.close()


def test_the_internet_port_is_the_default_route_with_the_lowest_metric() -> None:
    port = gateway_init.parse_internet_port(ROUTES, ADDRS)
    assert port == gateway_init.InternetPort(device="ens4", address="192.0.2.10", via="192.0.2.1")
    assert gateway_init.parse_internet_port(ROUTES, ADDRS, "ens3").address == "203.0.113.7"
    with pytest.raises(gateway_init.GatewayInitError, match="no default route"):
        gateway_init.parse_internet_port([], ADDRS)
    with pytest.raises(gateway_init.GatewayInitError, match="no IPv4 address"):
        gateway_init.parse_internet_port([], ADDRS, "ens5")
    with pytest.raises(gateway_init.GatewayInitError, match="not found"):
        gateway_init.parse_internet_port([], ADDRS, "eth9")


def test_first_run_writes_key_config_forwarding_and_prints_the_invite(tmp_path: Path) -> None:
    opts = _opts(tmp_path)
    result, out = _init(opts)
    config = load(opts.config_path)
    assert config.role == "gateway" and config.gateway is not None and config.gateway.internet == "ens3"
    assert config.listen == "0.0.0.0:4433" and config.address == "10.99.0.1/24"
    assert config.state_dir == opts.state_dir and (opts.state_dir / "node.key").stat().st_mode & 0o077 == 0
    assert opts.sysctl_path.read_text() == gateway_init.SYSCTL_TEXT
    assert opts.proc_forwarding.read_text().strip() == "1"
    invite = decode(result.invite)
    assert invite.key == result.node_id and invite.endpoints == ["203.0.113.7:4433"]
    assert invite.network == "10.99.0.0/24" and invite.exit and invite.peer_address == "10.99.0.1/24"
    assert invite.name == "gateway"
    assert result.invite in out.splitlines()
    assert "node key: created" in out and "not started (--no-start)" in out
    assert [(o.protocol, o.port) for o in config.open_ports] == [("tcp", 22)]  # sshd listens there
    assert "ens3 accepts QUIC (udp 4433), tcp/22 ([firewall] open) and replies" in out
    assert "refused" not in out
    assert "quicether add-peer SITE-NAME" in out
    assert "203.0.113.7 is not a public address" in out  # documentation space: never a real VPS's
    assert result.started is False and result.quic_answers is None


def test_running_again_changes_nothing_and_prints_the_same_invite(tmp_path: Path) -> None:
    opts = _opts(tmp_path)
    first, _ = _init(opts)
    files = [opts.config_path, opts.state_dir / "node.key", opts.sysctl_path, opts.state_dir / "gateway-endpoint"]
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}
    again, out = _init(_opts(tmp_path, port=5555, address="10.98.0.1/24", device="ens4"),
                       FakeHost(routes=ROUTES))
    assert again.invite == first.invite
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files} == before
    assert "exists" in out and "kept (--force rewrites it" in out
    assert "listens on port 4433, not 5555; --force changes it" in out
    assert "overlay address is 10.99.0.1/24, not 10.98.0.1/24" in out
    assert "internet port is ens3, not ens4; --force changes it" in out and "internet port: ens3" in out


def test_force_rewrites_the_config_and_keeps_the_admitted_sites(tmp_path: Path) -> None:
    opts = _opts(tmp_path)
    first, _ = _init(opts)
    doc = config_edit.load_document(opts.config_path)
    doc["peer"] = [{"name": "site-a", "key": SITE_ID, "allowed_ips": ["10.99.0.7/32", "192.168.50.0/24"]}]
    config_edit.save(doc, opts.config_path)
    result, out = _init(_opts(tmp_path, port=5555, force=True))
    config = load(opts.config_path)
    assert config.listen == "0.0.0.0:5555" and [p.name for p in config.peers] == ["site-a"]
    assert "rewrote" in out and "1 peer(s) kept" in out
    assert result.node_id == first.node_id and decode(result.invite).endpoints == ["203.0.113.7:5555"]


def test_a_public_ip_behind_nat_is_remembered(tmp_path: Path) -> None:
    private_host = FakeHost(routes=[ROUTES[0] | {"dev": "ens4"}])
    _init(_opts(tmp_path), private_host)
    result, _ = _init(_opts(tmp_path, public_ip="198.51.100.20"), private_host)
    assert decode(result.invite).endpoints == ["198.51.100.20:4433"]
    again, _ = _init(_opts(tmp_path), private_host)
    assert decode(again.invite).endpoints == ["198.51.100.20:4433"]
    with pytest.raises(gateway_init.GatewayInitError, match="not an IPv4 address"):
        _init(_opts(tmp_path, public_ip="gateway.example"), private_host)


def test_a_private_internet_address_is_flagged(tmp_path: Path) -> None:
    addrs: list[dict[str, object]] = [
        {"ifname": "ens3", "addr_info": [{"family": "inet", "local": "10.0.0.5", "scope": "global"}]}]
    _, out = _init(_opts(tmp_path), FakeHost(addrs=addrs))
    assert "10.0.0.5 is not a public address" in out and "--public-ip" in out


def test_an_existing_site_config_is_kept_with_a_warning(tmp_path: Path) -> None:
    opts = _opts(tmp_path)
    opts.config_path.parent.mkdir(parents=True)
    opts.config_path.write_text(f'[node]\naddress = "10.99.0.5/24"\nstate_dir = "{opts.state_dir}"\n')
    generate(opts.state_dir / "node.key")
    _, out = _init(opts)
    assert "not a gateway config" in out and load(opts.config_path).role == "site"


def test_a_broken_config_is_refused_unless_forced(tmp_path: Path) -> None:
    opts = _opts(tmp_path)
    opts.config_path.parent.mkdir(parents=True)
    opts.config_path.write_text("[node\n")
    with pytest.raises(gateway_init.GatewayInitError, match="--force replaces"):
        _init(opts)
    _init(_opts(tmp_path, force=True))
    assert load(opts.config_path).role == "gateway"


def test_the_packaged_template_counts_as_no_config() -> None:
    template = Path(__file__).resolve().parents[1] / "packaging" / "debian" / "quicether.toml"
    assert config_edit.load_document(template) == {}


def test_with_systemd_the_unit_is_enabled_started_and_the_quic_port_checked(tmp_path: Path,
                                                                           quic_server: int) -> None:
    host = FakeHost()
    result, out = _init(_opts(tmp_path, start=True, port=quic_server), host, systemd=True)
    assert host.systemctl() == ["enable quicether.service", "is-active --quiet quicether.service",
                                "start quicether.service"]
    assert result.started and result.quic_answers is True
    assert f"QUIC port: udp {quic_server} answers locally" in out
    # Running again with the daemon up: nothing to restart.
    host.calls.clear()
    _init(_opts(tmp_path, start=True), host, systemd=True)
    assert host.systemctl() == ["enable quicether.service", "is-active --quiet quicether.service"]
    # A rewritten config restarts it.
    host.calls.clear()
    _init(_opts(tmp_path, start=True, force=True), host, systemd=True)
    assert host.systemctl()[-1] == "restart quicether.service"


def test_a_silent_quic_port_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway_init, "QUIC_CHECK_TIMEOUT_S", 0.5)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        result, out = _init(_opts(tmp_path, start=True, port=port), FakeHost(), systemd=True)
    assert result.quic_answers is False and "does not answer locally" in out


def test_version_probe_and_answer() -> None:
    probe, scid = gateway_init.version_probe()
    assert len(probe) == gateway_init.MIN_INITIAL_SIZE and probe[0] & 0xC0 == 0xC0
    assert int.from_bytes(probe[1:5], "big") == gateway_init.PROBE_VERSION
    answer = bytes([0x80]) + b"\0\0\0\0" + bytes([len(scid)]) + scid + b"\x08" + bytes(8) + b"\0\0\0\1"
    assert gateway_init.is_version_negotiation(answer, scid)
    assert not gateway_init.is_version_negotiation(answer, bytes(8))
    assert not gateway_init.is_version_negotiation(b"\x40" + answer[1:], scid)


def test_without_systemd_nothing_is_started(tmp_path: Path) -> None:
    host = FakeHost()
    result, out = _init(_opts(tmp_path, start=True), host, systemd=False)
    assert host.systemctl() == [] and not result.started
    assert "systemd is not running here" in out


def test_the_command_line() -> None:
    args = build_parser().parse_args(["gateway", "init", "--no-start", "--public-ip", "198.51.100.20", "--port",
                                      "5000", "--internet", "eth1", "--force"])
    assert (args.start, args.public_ip, args.port, args.internet, args.force) == (False, "198.51.100.20", 5000,
                                                                                  "eth1", True)
    assert args.config == "/etc/quicether/quicether.toml" and args.address == "10.99.0.1/24"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["gateway"])


def test_ssh_stays_open_unless_closed_and_a_kept_config_without_it_is_flagged(tmp_path: Path) -> None:
    assert gateway_init.parse_ssh_ports(SSHD) == [22]
    assert gateway_init.parse_ssh_ports('LISTEN 0 128 0.0.0.0:2222 0.0.0.0:* users:(("sshd",pid=5,fd=3))') == [2222]
    assert gateway_init.parse_ssh_ports('LISTEN 0 4096 *:22 *:* users:(("systemd",pid=1,fd=50))') == [22]
    assert gateway_init.parse_ssh_ports("") == []
    # --close-ssh: not opened, and said so.
    opts = _opts(tmp_path, keep_ssh=False)
    _, out = _init(opts)
    assert load(opts.config_path).open_ports == []
    assert "SSH listens on tcp/22: new SSH connections to 203.0.113.7 are refused" in out
    assert '[firewall] open = ["tcp/22"] keeps it open' in out
    # Kept as it is on the next run, with the way to open it.
    _, out = _init(_opts(tmp_path))
    assert load(opts.config_path).open_ports == [] and "--force without --close-ssh keeps it open" in out
    # --force opens it and keeps what was open already.
    doc = config_edit.load_document(opts.config_path)
    config_edit.save({**doc, "firewall": {"open": ["udp/5353"]}}, opts.config_path)
    _, out = _init(_opts(tmp_path, force=True))
    assert [f"{o.protocol}/{o.port}" for o in load(opts.config_path).open_ports] == ["udp/5353", "tcp/22"]
    assert "refused" not in out
    # No SSH server: nothing opened, nothing to warn about.
    other = tmp_path / "other"
    other.mkdir()
    _, out = _init(_opts(other), FakeHost(listening=""))
    assert load(_opts(other).config_path).open_ports == [] and "SSH" not in out


def test_with_a_network_the_gateway_is_its_admin_and_prints_an_invite_that_admits_by_itself(tmp_path: Path) -> None:
    opts = _opts(tmp_path, network="home")
    result, out = _init(opts)
    config = load(opts.config_path)
    assert config.network is not None and config.address == "100.64.0.1/16"  # the certificate's
    net = network.holding_key(opts.state_dir, config.network.network_key)
    assert net is not None and net.name == "home" and [m.name for m in net.active()] == ["gateway"]
    invite = decode_network(result.invite)
    assert invite.network == "home" and invite.admin_key == result.node_id and invite.endpoints == ["203.0.113.7:4433"]
    assert [i.used_by for i in network.invitations(net)] == [None]  # pending, single use
    assert "network: created home" in out and "admits the router by itself" in out and "add-peer" not in out
    # Again: the network, config and key are kept; a new single-use invite is printed.
    before = opts.config_path.read_bytes()
    again, out = _init(opts)
    assert opts.config_path.read_bytes() == before and again.invite != result.invite
    assert len(network.invitations(net)) == 2 and "network: created" not in out
    # --force rewrites the config and keeps its [network] (the admitted members stay members).
    forced, out = _init(_opts(tmp_path, network="home", force=True, port=5555))
    assert load(opts.config_path).network == config.network
    assert decode_network(forced.invite).endpoints == ["203.0.113.7:5555"]


def test_a_kept_config_without_a_network_keeps_peer_invites(tmp_path: Path) -> None:
    _init(_opts(tmp_path))
    result, out = _init(_opts(tmp_path, network="home"))
    assert decode(result.invite).network == "10.99.0.0/24" and "quicether add-peer SITE-NAME" in out
    assert not (tmp_path / "state" / "networks").exists()
