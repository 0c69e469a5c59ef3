"""`quicether gateway init`: make this host (a VPS, an office server) the sites' gateway in one command.

Steps, in order; each prints what it found or did, and none changes what already exists unless `force`:
  1. the node key (`state_dir/node.key`): created if missing;
  2. the internet port and public address, from the default route (`public_ip`, `device` override them,
     e.g. behind a provider's 1:1 NAT, where the port's own address is private);
  3. the config: role "gateway", `[gateway] internet` = that port (the sites' exit), a mesh network this
     gateway is the admin of (`network`, created in the state dir with the gateway as its first member;
     its certificate gives the overlay address) or, with `network=None`, a fixed overlay address, and the
     SSH server's port in `[firewall] open` (the firewall otherwise refuses new SSH connections on the
     internet port, which on a VPS is usually the only way in; `keep_ssh=False` leaves it out); kept if
     the file already holds settings (the package's commented template holds none);
  4. IPv4 forwarding, persistently (a sysctl.d file) and now;
  5. the systemd unit, enabled and started (skipped with a note when systemd is not running, e.g. in a
     chroot or container, or with `start=False`);
  6. a local check that the QUIC port answers (a packet with an unknown QUIC version must bring a
     version negotiation back, as from any QUIC server);
  7. the invite code (what `quicether invite` prints), as text and as a QR code (qrencode) for a phone.
     With a network it is a single-use network invite: the router that uses it is admitted by this
     gateway by itself (a certificate with its LAN prefix, the gateway as its exit if it asks); each run
     prints a new one. Without a network it is a peer invite, and the `quicether add-peer` line that
     admits a site after it joined is printed too.

The public endpoint the invite carries is remembered in `state_dir/gateway-endpoint`, so running it again
uses it without the overrides.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from quicether import config_edit, network
from quicether.config import DEFAULT_STATE_DIR, Config, ConfigError, load
from quicether.identity import KEY_FILE_NAME, Identity, IdentityError, generate
from quicether.identity import load as load_identity
from quicether.invite import Invite

DEFAULT_ADDRESS = "10.99.0.1/24"
DEFAULT_NETWORK = "home"
DEFAULT_PORT = 4433
UNIT = "quicether.service"
SYSCTL_FILE = Path("/etc/sysctl.d/60-quicether.conf")
SYSCTL_TEXT = ("# Written by `quicether gateway init`: a QuicEther gateway routes its sites' traffic.\n"
               "net.ipv4.ip_forward = 1\n")
ENDPOINT_FILE = "gateway-endpoint"
# How long a freshly started daemon gets to answer on its QUIC port (it opens the port within a second).
QUIC_CHECK_TIMEOUT_S = 10.0
# A daemon this command did not start is either up already or not there: a look, not a wait.
QUIC_LOOK_S = 1.0
# A version no QUIC implementation speaks (RFC 9000 §15 reserves 0x?a?a?a?a): a server must answer
# a client Initial of at least 1200 bytes with it by a Version Negotiation packet (RFC 9000 §6).
PROBE_VERSION = 0x1A2A3A4A
MIN_INITIAL_SIZE = 1200


class GatewayInitError(RuntimeError):
    """A step cannot be done; the message says why and what to give instead."""


@dataclass(frozen=True)
class InternetPort:
    device: str
    address: str          # the port's own IPv4 address
    via: str | None       # the default route's next hop


@dataclass(frozen=True)
class Options:
    config_path: Path
    state_dir: Path = DEFAULT_STATE_DIR
    public_ip: str | None = None       # the address sites dial (default: the internet port's own address)
    port: int | None = None            # UDP port to listen on and advertise (default 4433, or the config's)
    device: str | None = None          # the internet port (default: the default route's)
    address: str = DEFAULT_ADDRESS     # the overlay address without a network (its prefix is the sites')
    network: str | None = DEFAULT_NETWORK  # the mesh network this gateway admits sites to (None: peer invites)
    name: str = "gateway"              # the name sites give this gateway (its member name in the network)
    start: bool = True                 # enable and start the systemd unit
    force: bool = False                # rewrite the config (peers are kept) and the remembered endpoint
    keep_ssh: bool = True              # keep the SSH server's port open on the internet port
    sysctl_path: Path = SYSCTL_FILE
    proc_forwarding: Path = Path("/proc/sys/net/ipv4/ip_forward")


@dataclass(frozen=True)
class Result:
    invite: str
    node_id: str
    config: Config
    started: bool
    quic_answers: bool | None          # None: not checked (the daemon was not started here)


Runner = Callable[[list[str]], subprocess.CompletedProcess[str]]


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


# -- 2. the internet port ------------------------------------------------------------------------------

def parse_internet_port(routes: list[dict[str, Any]], addresses: list[dict[str, Any]],
                        device: str | None = None) -> InternetPort:
    """The internet port from `ip -j -4 route show default` and `ip -j -4 addr show` output: the
    default route with the lowest metric (or the port `device`), and that port's first global address."""
    if device is None:
        defaults = sorted((r for r in routes if r.get("dst") == "default" and r.get("dev")),
                          key=lambda r: int(r.get("metric", 0)))
        if not defaults:
            raise GatewayInitError("no default route: which port faces the internet? give it with --internet DEVICE")
        route = defaults[0]
        device, via = str(route["dev"]), route.get("gateway")
    else:
        via = next((r.get("gateway") for r in routes if r.get("dst") == "default" and r.get("dev") == device), None)
    link = next((a for a in addresses if a.get("ifname") == device), None)
    if link is None:
        raise GatewayInitError(f"port {device} not found (ip addr shows no such device)")
    infos = [i for i in link.get("addr_info", []) if i.get("family") == "inet"]
    usable = [i for i in infos if i.get("scope") == "global"] or infos
    if not usable:
        raise GatewayInitError(f"port {device} has no IPv4 address; give the address sites reach this host at "
                               "with --public-ip")
    return InternetPort(device=device, address=str(usable[0]["local"]), via=str(via) if via else None)


def find_internet_port(device: str | None = None, run: Runner = _run) -> InternetPort:
    outputs = []
    for args in (["ip", "-j", "-4", "route", "show", "default"], ["ip", "-j", "-4", "addr", "show"]):
        proc = run(args)
        if proc.returncode != 0:
            raise GatewayInitError(f"{' '.join(args)} failed: {proc.stderr.strip()}")
        outputs.append(json.loads(proc.stdout or "[]"))
    return parse_internet_port(outputs[0], outputs[1], device)


def parse_ssh_ports(ss_output: str) -> list[int]:
    """TCP ports an SSH server listens on, from `ss -Hltnp` output: sshd's sockets, and port 22 whoever
    holds it (socket-activated ssh.socket shows systemd as its process)."""
    ports = set()
    for line in ss_output.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        port = fields[3].rpartition(":")[2]
        if port.isdigit() and ('"sshd"' in line or port == "22"):
            ports.add(int(port))
    return sorted(ports)


def find_ssh_ports(run: Runner = _run) -> list[int]:
    proc = run(["ss", "-Hltnp"])
    return parse_ssh_ports(proc.stdout) if proc.returncode == 0 else []


# -- 3. the config -------------------------------------------------------------------------------------

def gateway_document(old: config_edit.Document, *, port: int, device: str, address: str, state_dir: Path,
                     open_ports: list[str] | None = None, certificate: str | None = None) -> config_edit.Document:
    """A gateway config: role gateway, listening on `port`, exit to the internet through `device`, the
    `open_ports` ("tcp/22") accepted there, and either the membership `certificate` of the network it is
    admin of (which gives its overlay address) or the overlay `address`; the peers (admitted sites), ACLs,
    port forwards, open ports and the [network] of `old` are kept."""
    network_section = dict(old.get("network", {}))
    if certificate is not None:
        network_section["certificate"] = certificate
    node: dict[str, Any] = {"listen": f"0.0.0.0:{port}", "role": "gateway"}
    if not network_section:
        node["address"] = address
    if state_dir != DEFAULT_STATE_DIR:
        node["state_dir"] = str(state_dir)
    gateway: dict[str, Any] = {"internet": device}
    forwards = old.get("gateway", {}).get("forward")
    if forwards:
        gateway["forward"] = forwards
    doc: config_edit.Document = {"node": node, "gateway": gateway}
    if network_section:
        doc["network"] = network_section
    for key in ("discovery",):
        if old.get(key):
            doc[key] = old[key]
    opened = list(old.get("firewall", {}).get("open", []))
    opened += [o for o in open_ports or [] if o not in opened]
    if opened:
        doc["firewall"] = {"open": opened}
    for key in ("peer", "acl"):
        if old.get(key):
            doc[key] = old[key]
    return doc


# -- 4. forwarding -------------------------------------------------------------------------------------

def enable_forwarding(sysctl_path: Path, proc_path: Path) -> str:
    """Writes the sysctl.d file (if its content differs) and switches forwarding on now."""
    done = []
    try:
        current = sysctl_path.read_text()
    except FileNotFoundError:
        current = None
    if current != SYSCTL_TEXT:
        sysctl_path.parent.mkdir(parents=True, exist_ok=True)
        sysctl_path.write_text(SYSCTL_TEXT)
        done.append(f"wrote {sysctl_path}")
    else:
        done.append(f"{sysctl_path} exists")
    try:
        if proc_path.read_text().strip() != "1":
            proc_path.write_text("1\n")
            done.append("switched on now")
        else:
            done.append("already on")
    except OSError as exc:
        done.append(f"not switched on now ({proc_path}: {exc.strerror}; it applies at the next boot)")
    return "IPv4 forwarding: " + ", ".join(done)


# -- 5. the unit ---------------------------------------------------------------------------------------

def systemd_running() -> bool:
    """As sd_booted(3): systemd is the init system of this (mount) namespace."""
    return Path("/run/systemd/system").is_dir()


def start_unit(config_changed: bool, run: Runner = _run) -> str:
    """Enables the unit and starts it (restarts it if it runs and the config changed)."""
    enable = run(["systemctl", "enable", UNIT])
    if enable.returncode != 0:
        raise GatewayInitError(f"systemctl enable {UNIT} failed: {enable.stderr.strip()}")
    active = run(["systemctl", "is-active", "--quiet", UNIT]).returncode == 0
    if active and not config_changed:
        return f"{UNIT}: enabled, running"
    action = "restart" if active else "start"
    proc = run(["systemctl", action, UNIT])
    if proc.returncode != 0:
        raise GatewayInitError(f"systemctl {action} {UNIT} failed: {proc.stderr.strip()} "
                               f"(see `journalctl -u {UNIT}`)")
    return f"{UNIT}: enabled, {'restarted (new config)' if active else 'started'}"


# -- 6. the QUIC check ---------------------------------------------------------------------------------

def version_probe() -> tuple[bytes, bytes]:
    """A client Initial-sized long-header packet with an unknown version, and the connection id a
    Version Negotiation answer must carry as its destination."""
    dcid, scid = secrets.token_bytes(8), secrets.token_bytes(8)
    header = (bytes([0xC0]) + PROBE_VERSION.to_bytes(4, "big") + bytes([len(dcid)]) + dcid
              + bytes([len(scid)]) + scid)
    return header + bytes(MIN_INITIAL_SIZE - len(header)), scid


def is_version_negotiation(answer: bytes, scid: bytes) -> bool:
    return (len(answer) >= 7 + len(scid) and answer[0] & 0x80 != 0 and answer[1:5] == b"\0\0\0\0"
            and answer[5] == len(scid) and answer[6:6 + len(scid)] == scid)


def quic_answers(port: int, timeout: float = QUIC_CHECK_TIMEOUT_S, host: str = "127.0.0.1") -> bool:
    """True when a QUIC endpoint on `host:port` answers a version probe within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        while time.monotonic() < deadline:
            probe, scid = version_probe()
            with contextlib.suppress(OSError):
                sock.sendto(probe, (host, port))
            sock.settimeout(min(0.5, max(0.01, deadline - time.monotonic())))
            try:
                answer = sock.recv(2048)
            except (TimeoutError, ConnectionRefusedError):  # refused: nothing listens yet
                time.sleep(0.2)
                continue
            if is_version_negotiation(answer, scid):
                return True
    return False


# -- 7. the invite -------------------------------------------------------------------------------------

def qr_code(text: str, tty: bool) -> str | None:
    """`text` as a QR code for a terminal (qrencode), or None if qrencode is not installed."""
    qrencode = shutil.which("qrencode")
    if qrencode is None:
        return None
    proc = subprocess.run([qrencode, "-t", "ANSIUTF8" if tty else "UTF8", "-m", "2", text],
                          capture_output=True, text=True, timeout=30, check=False)
    return proc.stdout if proc.returncode == 0 else None


def add_peer_hint(node_id_placeholder: str = "SITE-NODE-ID") -> str:
    return (f"  quicether add-peer SITE-NAME {node_id_placeholder} --allowed-ips "
            "SITE-OVERLAY-IP/32,SITE-LAN-PREFIX")


def _endpoint_host(value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise GatewayInitError(f"--public-ip: {value!r} is not an IPv4 address") from None


def own_network(state_dir: Path, name: str, identity: Identity,
                member_name: str) -> tuple[network.Network, network.Member, bool]:
    """The network `name` in `state_dir` and this gateway's membership of it, the network made with this
    gateway as its admin and first member if there is none (True: made now). One held there already must
    have this node as a member."""
    try:
        made = not (state_dir / network.NETWORKS_DIR / name / "network.json").exists()
        net = (network.create(state_dir, name, identity, admin_name=member_name) if made
               else network.load(state_dir, name))
        return net, net.find(identity.node_id), made
    except network.NetworkError as exc:
        raise GatewayInitError(f"network {name!r}: {exc}") from None


def _tell_daemon_of_invites(config: Config) -> bool:
    """A running daemon accepts a new invite's key from now on (one that starts reads them itself)."""
    from quicether.daemon import api

    try:
        return bool(api.request(config.api_socket, "invites").get("ok"))
    except (OSError, ValueError):
        return False


def _saved_endpoint(state_dir: Path) -> str | None:
    try:
        return (state_dir / ENDPOINT_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None


def run_init(opts: Options, out: TextIO = sys.stdout, run: Runner = _run,
             systemd: Callable[[], bool] = systemd_running) -> Result:
    """Does every step (see the module docstring), printing one line per step to `out`."""
    def say(text: str) -> None:
        print(text, file=out, flush=True)

    # 1. The key.
    key_path = opts.state_dir / KEY_FILE_NAME
    try:
        if key_path.exists():
            identity: Identity = load_identity(key_path)
            say(f"node key: {key_path} exists, node id {identity.node_id}")
        else:
            identity = generate(key_path)
            say(f"node key: created {key_path} (mode 600), node id {identity.node_id}")
    except (IdentityError, OSError) as exc:
        raise GatewayInitError(str(exc)) from None

    # 3 (first, since an existing config names the port). The config.
    try:
        old = config_edit.load_document(opts.config_path)
    except ConfigError as exc:
        if not opts.force:
            raise GatewayInitError(f"{exc} (--force replaces the file)") from None
        old = {}
    configured = bool(old)
    old_node = old.get("node", {})
    old_port = int(str(old_node.get("listen", f"0.0.0.0:{DEFAULT_PORT}")).rpartition(":")[2] or DEFAULT_PORT)
    port = opts.port if opts.port is not None else (old_port if configured else DEFAULT_PORT)
    old_device = old.get("gateway", {}).get("internet")
    # 2. The internet port: the configured one if the config is kept, else the one given or the default route's.
    device = old_device if configured and not opts.force else opts.device
    internet = find_internet_port(device, run)
    say(f"internet port: {internet.device} ({internet.address}"
        f"{', default route via ' + internet.via if internet.via else ''})")

    ssh_ports = find_ssh_ports(run)
    config_changed = False
    if configured and not opts.force:
        try:
            config = load(opts.config_path)
        except ConfigError as exc:
            raise GatewayInitError(f"{exc} (--force replaces the file)") from None
        say(f"config: {opts.config_path} exists, kept (--force rewrites it and keeps its peers)")
        if config.role != "gateway" or config.gateway is None or config.gateway.internet is None:
            say(f"  warning: it is not a gateway config with an internet port (role {config.role!r}); "
                "--force makes it one")
        if opts.port is not None and opts.port != old_port:
            say(f"  warning: it listens on port {old_port}, not {opts.port}; --force changes it")
        if opts.device is not None and opts.device != old_device:
            say(f"  warning: its internet port is {old_device}, not {opts.device}; --force changes it")
        if opts.address != DEFAULT_ADDRESS and opts.address != old_node.get("address"):
            say(f"  warning: its overlay address is {old_node.get('address')}, not {opts.address}; "
                "--force changes it")
    else:
        certificate = None
        if opts.network is not None and not old.get("network"):
            net, admin, made = own_network(opts.state_dir, opts.network, identity, opts.name)
            certificate = admin.certificate
            say(f"network: {'created' if made else 'kept'} {net.name} ({net.overlay}, key {net.key}) in "
                f"{net.directory}, this gateway its admin: keep a copy of network.key somewhere safe")
        doc = gateway_document(old, port=port, device=internet.device, address=opts.address,
                               state_dir=opts.state_dir, certificate=certificate,
                               open_ports=[f"tcp/{p}" for p in ssh_ports] if opts.keep_ssh else [])
        try:
            config = config_edit.save(doc, opts.config_path)
        except (ConfigError, OSError) as exc:
            raise GatewayInitError(str(exc)) from None
        config_changed = True
        kept = len(doc.get("peer", []))
        say(f"config: {'rewrote' if configured else 'wrote'} {opts.config_path} (role gateway, listen "
            f"{config.listen}, overlay {config.address}, exit through {internet.device}"
            f"{f', {kept} peer(s) kept' if kept else ''})")
    if config.address is None:
        raise GatewayInitError(f"{opts.config_path}: node.address: needed for an invite (--force sets one)")
    port = int(config.listen.rpartition(":")[2])

    # The endpoint sites dial.
    saved = _saved_endpoint(opts.state_dir)
    if opts.public_ip is not None:
        endpoint = f"{_endpoint_host(opts.public_ip)}:{port}"
    elif saved is not None and saved.rpartition(":")[2] == str(port):
        endpoint = saved
    else:
        endpoint = f"{internet.address}:{port}"
    if endpoint != saved:
        (opts.state_dir / ENDPOINT_FILE).write_text(endpoint + "\n")
    public = ipaddress.ip_address(endpoint.rpartition(":")[0])
    say(f"public endpoint: {endpoint}" + ("" if public.is_global else
        f"  (warning: {public} is not a public address; if the internet reaches this host at another one, "
        "e.g. behind a provider's 1:1 NAT, run again with --public-ip ADDRESS)"))

    # 4. Forwarding.
    say(enable_forwarding(opts.sysctl_path, opts.proc_forwarding))

    # The firewall closes the internet port: say what stays open before the daemon starts.
    opened = [f"{o.protocol}/{o.port}" for o in config.open_ports]
    accepted = [f"QUIC (udp {port})"] + [f"{o} ([firewall] open)" for o in opened]
    say(f"firewall: while QuicEther runs, {internet.device} accepts {', '.join(accepted)} and replies to this "
        "host's own traffic, nothing else")
    closed = [p for p in ssh_ports if f"tcp/{p}" not in opened]
    if closed:
        how = ("--force without --close-ssh keeps it open" if configured and not opts.force
               else f'[firewall] open = ["tcp/{closed[0]}"] keeps it open')
        say(f"  warning: SSH listens on tcp/{', '.join(map(str, closed))}: new SSH connections to "
            f"{internet.address} are refused (open ones stay up); {how}, or use another way in (the provider's "
            f"console, SSH to {config.address.split('/')[0]} through the tunnel from a site)")
        if os.environ.get("SSH_CONNECTION", "").split()[2:3] == [internet.address]:
            say(f"  warning: this session is SSH to {internet.address}: after it ends, SSH there is refused")

    # The invite is made before the daemon starts (it reads the pending invites when it does).
    admin_of = None
    if config.network is not None:
        try:
            admin_of = network.holding_key(opts.state_dir, config.network.network_key)
        except network.NetworkError as exc:
            raise GatewayInitError(str(exc)) from None
    if admin_of is not None:
        try:
            network_invite = network.invite(admin_of, identity, [endpoint])
        except network.NetworkError as exc:
            raise GatewayInitError(f"invite: {exc}") from None
        code = network_invite.encode()
    else:
        invite = Invite(key=identity.node_id, endpoints=[endpoint],
                        network=str(ipaddress.ip_interface(config.address).network), name=opts.name,
                        exit=config.gateway is not None and config.gateway.internet is not None,
                        peer_address=config.address)
        code = invite.encode()

    # 5. The unit, and 6. the check.
    started = False
    checked: bool | None = None
    if not opts.start:
        say(f"daemon: not started (--no-start); `systemctl enable --now {UNIT}` starts it")
    elif not systemd():
        say("daemon: systemd is not running here (a chroot or container?): not enabled or started; run "
            f"`quicether up -c {opts.config_path}` under this system's service manager")
    else:
        say("daemon: " + start_unit(config_changed, run))
        started = True
        checked = quic_answers(port, timeout=QUIC_CHECK_TIMEOUT_S)
        say(f"QUIC port: udp {port} answers locally" if checked else
            f"QUIC port: udp {port} does not answer locally (see `journalctl -u {UNIT}`)")
    if not started:  # a daemon started some other way may run: a short look, no verdict if none answers
        running = quic_answers(port, timeout=QUIC_LOOK_S)
        checked = True if running else None
        say(f"QUIC port: udp {port} answers locally (a daemon is running)" if running else
            f"QUIC port: udp {port} not checked (no daemon answers yet)")

    # 7. The invite.
    if admin_of is not None:
        if checked:
            _tell_daemon_of_invites(config)
        until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(network_invite.expires_at))
        say(f"\ninvite code to network {admin_of.name}, usable once until {until} (paste it into the router's "
            "web UI wizard, or run `quicether join CODE --exit` there; this gateway admits the router by itself):")
    else:
        say("\ninvite code (paste it into the router's web UI wizard, or run `quicether join CODE --exit` there):")
    say(code)
    tty = hasattr(out, "isatty") and out.isatty()
    qr = qr_code(code, tty)
    say(qr.rstrip("\n") if qr else "(install qrencode to see it as a QR code here)")
    if admin_of is not None:
        say("\nit is a secret: whoever holds it can join. For another router, run this again or `quicether invite`.")
    else:
        say("\nthen admit the router here: after joining, the router shows (web UI) or prints (`quicether join`) "
            "the exact line to run on this gateway, with its node id and prefixes:")
        say(add_peer_hint())
    return Result(invite=code, node_id=identity.node_id, config=config, started=started, quic_answers=checked)
