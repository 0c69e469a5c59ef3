"""The node's TOML config, validated into dataclasses. Every error names the field it is about.

    [node]
    listen = "0.0.0.0:4433"        # UDP address of the QUIC endpoint
    tun = "qe0"                    # TUN device name
    address = "10.99.0.1/24"       # this node's overlay address on the TUN device
    state_dir = "/var/lib/quicether"
    path_mtu = 1500                # MTU of the underlying network; the TUN MTU is derived from it
    congestion = "loss-tolerant"   # per-path congestion control: loss-tolerant (CUBIC ignoring random loss),
                                   # cubic or bbr
    io_threads = "auto"            # threads carrying packets, 1-8; auto: 2 (README: when 1 is faster)

    [[wan]]                        # one per WAN port to bond; none: dial from the listen socket
    device = "eth1"
    name = "isp-a"                 # label in status and logs (default: the device name)
    address = "192.0.2.10"         # source address (default: the device's first IPv4 address)
    gateway = "192.0.2.1"          # optional: install a routing table + rule so this WAN's packets use it
    role = "primary"               # or "backup": carries traffic only when every primary is down
    rate_mbit = 40                 # optional upload cap (tbf on the port), a little under the ISP's rate

    [[peer]]
    name = "gateway"
    key = "qe1…"                   # the peer's node id
    endpoint = "203.0.113.5:4433"  # optional: dial it (otherwise wait for the peer to dial us)
    endpoints = ["203.0.113.5:4433", "[2001:db8::5]:4433"]   # or several: each is dialed (with backoff)
                                   # from every WAN; paths over one WAN to the peer collapse to one
    allowed_ips = ["10.99.0.2/32"] # inner addresses this peer may use; routed into the tunnel
    groups = ["office"]            # optional: ACL rules can name "group:office"
    mode = "aggregate"             # bulk traffic: aggregate, lowest-rtt or redundant
    realtime_mode = "redundant"    # small UDP packets (≤ 200 bytes)
    tcp_lane = "off"               # "auto": the LAN's TCP to this peer's allowed_ips is terminated here and
                                   # carried over MPTCP + TLS to the peer's lane port (its QUIC port + 1);
                                   # both ends must say "auto"; one subflow per healthy WAN (README: the
                                   # TCP lane, its figures and limits; default "off")
    [[peer.class]]                 # optional rules, first match wins: protocol/port/dscp → mode
    protocol = "udp"
    port = 5060
    mode = "redundant"

    [network]                      # optional: this node is a member of a mesh network
    certificate = "AQ…"            # its membership certificate, base64 (`quicether network issue` on an
                                   # admin node): peers showing a valid certificate of the same network
                                   # are let in with no [[peer]] entry; node.address defaults to its address
    revoked = ["Ag…"]              # revocations signed by the network key (`quicether network revoke`)
    mode = "aggregate"             # how members' bulk and real-time traffic is scheduled
    realtime_mode = "redundant"
    relay = true                   # forward other members' (end-to-end encrypted) QUIC packets between
                                   # members that cannot reach each other directly; default: on a gateway
    relay_rate_mbit = 50           # each member's rate through this relay (more is dropped)

    [discovery]                    # how a member finds the others (with [network] only)
    dht = true                     # publish our record in the mainline DHT and look up the members we learn of
    lan = true                     # announce this member on the LAN and find others there (mDNS)
    bootstrap = ["198.51.100.9:6881"]   # a private DHT's nodes (default: the public mainline DHT's)
    port = 0                       # the DHT's UDP port (0: any)
    server = false                 # answer other DHT nodes' queries too (a publicly reachable gateway)

    [nat]
    port_mapping = true            # ask each WAN's home router for a port mapping (PCP, NAT-PMP, UPnP) of its QUIC
                                   # socket: peers then reach it directly even through a symmetric NAT

Router settings (see quicether/router_config.py for every field): [lan] (appliance address, DHCP/DNS,
exit peer, kill switch), [gateway] (exit to the internet, port forwards), [[acl]] rules, [firewall] (more
ports open from outside), and in [node]:
role = "site" or "gateway", detect_wans, acl_default.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from quicether import _core
from quicether.identity import IdentityError, decode_node_id
from quicether.router_config import (
    ROUTER_NODE_KEYS,
    AclRule,
    GatewayConfig,
    LanConfig,
    OpenPort,
    WebUiConfig,
    check_keys,
    interface_name,
    parse_protocol,
    parse_router,
)
from quicether.router_config import ConfigError as ConfigError  # re-exported: every module catches it from here

DEFAULT_STATE_DIR = Path("/var/lib/quicether")
DEFAULT_LISTEN = "0.0.0.0:4433"
MIN_PATH_MTU = 1280
MAX_IO_THREADS = 8  # core/proto/src/io_threads.rs
# Addresses a peer may be dialed at (from the config; discovery adds its own later).
MAX_ENDPOINTS = 16
# Upload caps the kernel's tbf takes: below 0.1 Mbit/s its rate rounds to 0 kbit (a division by zero in
# the burst), above ~34 Gbit/s the rate in bytes/s overflows its 32 bits; no WAN upload needs more than 10.
MIN_RATE_MBIT = 0.1
MAX_RATE_MBIT = 10_000
# Each member's rate through a relay by default (`quicether_proto::relay::RATE_BYTES_PER_S`).
DEFAULT_RELAY_RATE_MBIT = 50.0


PEER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
MODES = ("aggregate", "lowest-rtt", "redundant")
CONGESTION_CONTROLS = ("loss-tolerant", "cubic", "bbr")


@dataclass(frozen=True)
class ClassRule:
    protocol: int | None
    port: int | None
    dscp: int | None
    mode: str


@dataclass(frozen=True)
class PeerConfig:
    name: str
    key: bytes
    node_id: str
    endpoint: str | None           # the first of `endpoints` (what status and invites show)
    allowed_ips: list[str]
    mode: str = "aggregate"
    realtime_mode: str = "redundant"
    classes: list[ClassRule] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    endpoints: list[str] = field(default_factory=list)  # every address to dial it at, `endpoint` first
    tcp_lane: str = "off"          # "auto": TCP to it goes through the TCP lane (quicether/daemon/lane.py)


@dataclass(frozen=True)
class WanConfig:
    name: str
    device: str
    address: str | None
    gateway: str | None
    backup: bool
    rate_mbit: float | None = None


@dataclass(frozen=True)
class NetworkConfig:
    """This node's membership of a mesh network: its certificate (checked for form and signature; its
    validity window is the core's concern at each handshake) and the network's revocations."""

    certificate: bytes
    network_key: bytes
    node_key: bytes           # whom it was issued to (the daemon checks it is this node)
    name: str                 # this node's name in the network
    address: str              # its overlay address with the network's prefix, e.g. "100.64.0.7/16"
    not_after: int            # Unix s: renew before then
    ipv6: str = ""            # its ULA with the network's /48 (derived from both keys), e.g. "fd12:…:9a/48"
    revoked: list[bytes] = field(default_factory=list)
    mode: str = "aggregate"
    realtime_mode: str = "redundant"
    relay: bool | None = None  # relay for other members; None: as the role says (`relays`)
    relay_rate_mbit: float = DEFAULT_RELAY_RATE_MBIT  # each member's rate through us when we relay


@dataclass(frozen=True)
class DiscoveryConfig:
    dht: bool = True
    lan: bool = True                     # announce and find members on the LAN (mDNS)
    bootstrap: list[str] | None = None   # None: the public mainline DHT
    port: int = 0
    server: bool = False


@dataclass(frozen=True)
class NatConfig:
    port_mapping: bool = True            # map each WAN socket's port on its gateway (PCP, NAT-PMP, UPnP-IGD)


@dataclass(frozen=True)
class Config:
    path: Path
    listen: str
    tun: str
    address: str | None
    state_dir: Path
    path_mtu: int
    congestion: str = "loss-tolerant"
    io_threads: int | None = None  # None: "auto"
    peers: list[PeerConfig] = field(default_factory=list)
    wans: list[WanConfig] = field(default_factory=list)
    role: str = "site"
    detect_wans: bool = False
    lan: LanConfig | None = None
    gateway: GatewayConfig | None = None
    acls: list[AclRule] = field(default_factory=list)
    acl_default: str = "allow"
    webui: WebUiConfig = field(default_factory=WebUiConfig)
    open_ports: list[OpenPort] = field(default_factory=list)
    network: NetworkConfig | None = None
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    nat: NatConfig = field(default_factory=NatConfig)

    @property
    def key_path(self) -> Path:
        return self.state_dir / "node.key"

    @property
    def api_socket(self) -> Path:
        return self.state_dir / "api.sock"


def _socket_addr(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected \"host:port\", got {value!r}")
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        port_n = int(port)
    except ValueError:
        raise ConfigError(f"{where}: {value!r} is not an IP address with a port (e.g. \"198.51.100.7:4433\")") from None
    if not sep or not 0 <= port_n <= 65535:
        raise ConfigError(f"{where}: port out of range in {value!r}")
    return value




def _peer(raw: object, index: int, path: Path) -> PeerConfig:
    where = f"{path}: peer[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table")
    check_keys(raw, {"name", "key", "endpoint", "endpoints", "allowed_ips", "mode", "realtime_mode", "class",
                     "groups", "tcp_lane"}, where)
    tcp_lane = raw.get("tcp_lane", "off")
    if tcp_lane not in ("auto", "off"):
        raise ConfigError(f'{where}.tcp_lane: expected "auto" or "off", not {tcp_lane!r}')
    groups = raw.get("groups", [])
    if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
        raise ConfigError(f"{where}.groups: expected a list of group names")
    name = peer_name(raw.get("name", f"peer{index}"), f"{where}.name")
    if "key" not in raw:
        raise ConfigError(f"{where}.key: missing (the peer's node id, `quicether pubkey` on the peer)")
    try:
        key = decode_node_id(str(raw["key"]))
    except IdentityError as exc:
        raise ConfigError(f"{where}.key: {exc}") from None
    endpoints = [_socket_addr(raw["endpoint"], f"{where}.endpoint")] if "endpoint" in raw else []
    listed = raw.get("endpoints", [])
    if not isinstance(listed, list) or len(listed) > MAX_ENDPOINTS:
        raise ConfigError(f"{where}.endpoints: expected a list of at most {MAX_ENDPOINTS} \"host:port\" addresses")
    for i, text in enumerate(listed):
        address = _socket_addr(text, f"{where}.endpoints[{i}]")
        if address not in endpoints:
            endpoints.append(address)
    allowed = raw.get("allowed_ips", [])
    if not isinstance(allowed, list):
        raise ConfigError(f"{where}.allowed_ips: expected a list of prefixes")
    for prefix in allowed:
        try:
            ipaddress.ip_network(str(prefix), strict=False)
        except ValueError:
            raise ConfigError(f"{where}.allowed_ips: {prefix!r} is not an IP prefix") from None
    modes = {k: _mode(raw.get(k, default), f"{where}.{k}")
             for k, default in (("mode", "aggregate"), ("realtime_mode", "redundant"))}
    classes_raw = raw.get("class", [])
    if not isinstance(classes_raw, list):
        raise ConfigError(f"{where}.class: use [[peer.class]] tables")
    classes = [_class_rule(c, f"{where}.class[{i}]") for i, c in enumerate(classes_raw)]
    return PeerConfig(name=name, key=key, node_id=str(raw["key"]).strip(), endpoint=endpoints[0] if endpoints else None,
                      endpoints=endpoints,
                      allowed_ips=[str(p) for p in allowed], mode=modes["mode"],
                      realtime_mode=modes["realtime_mode"], classes=classes, groups=[str(g) for g in groups],
                      tcp_lane=str(tcp_lane))


def peer_name(value: object, where: str) -> str:
    """A peer's name: ACL rules, status and logs use it, so it may not look like what else a rule can name
    (a prefix, an address, "lan", "group:…") and holds only a short safe alphabet."""
    if not isinstance(value, str) or not PEER_NAME.fullmatch(value) or value == "lan" or _is_address(value):
        raise ConfigError(f"{where}: {value!r} is not a peer name (1 to 32 letters, digits, '_', '.' or '-', "
                          "starting with a letter or digit, not an address and not \"lan\")")
    return value


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _mode(value: object, where: str) -> str:
    if value not in MODES:
        raise ConfigError(f"{where}: {value!r} is not a bonding mode ({', '.join(MODES)})")
    return str(value)


def _int_in(value: object, low: int, high: int, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"{where}: must be an integer from {low} to {high}")
    return value


def _class_rule(raw: object, where: str) -> ClassRule:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table")
    check_keys(raw, {"protocol", "port", "dscp", "mode"}, where)
    if "mode" not in raw:
        raise ConfigError(f"{where}.mode: missing")
    protocol = parse_protocol(raw["protocol"], f"{where}.protocol") if "protocol" in raw else None
    port = _int_in(raw["port"], 1, 65535, f"{where}.port") if "port" in raw else None
    dscp = _int_in(raw["dscp"], 0, 63, f"{where}.dscp") if "dscp" in raw else None
    return ClassRule(protocol=protocol, port=port, dscp=dscp, mode=_mode(raw["mode"], f"{where}.mode"))


def _ip(value: object, where: str) -> str:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise ConfigError(f"{where}: {value!r} is not an IP address") from None


def _wan(raw: object, index: int, path: Path) -> WanConfig:
    where = f"{path}: wan[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table")
    check_keys(raw, {"name", "device", "address", "gateway", "role", "rate_mbit"}, where)
    device = interface_name(raw.get("device"), f"{where}.device")
    role = raw.get("role", "primary")
    if role not in ("primary", "backup"):
        raise ConfigError(f"{where}.role: {role!r} is not primary or backup")
    return WanConfig(name=str(raw.get("name", device)), device=device,
                     address=_ip(raw["address"], f"{where}.address") if "address" in raw else None,
                     gateway=_ip(raw["gateway"], f"{where}.gateway") if "gateway" in raw else None,
                     backup=role == "backup", rate_mbit=_rate(raw.get("rate_mbit"), f"{where}.rate_mbit"))


def _rate(value: object, where: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not MIN_RATE_MBIT <= value <= MAX_RATE_MBIT:
        raise ConfigError(f"{where}: must be a rate in Mbit/s from {MIN_RATE_MBIT} to {MAX_RATE_MBIT}")
    return float(value)


def _base64(value: object, where: str) -> bytes:
    try:
        if not isinstance(value, str):
            raise ValueError
        return base64.b64decode(value.strip(), validate=True)
    except (ValueError, binascii.Error):
        raise ConfigError(f"{where}: not base64 text (paste it as `quicether network` printed it)") from None


def _network(raw: object, where: str) -> NetworkConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: [network] must be a table")
    check_keys(raw, {"certificate", "revoked", "mode", "realtime_mode", "relay", "relay_rate_mbit"}, where)
    relay = raw.get("relay")
    if relay is not None and not isinstance(relay, bool):
        raise ConfigError(f"{where}.relay: must be true or false")
    if "certificate" not in raw:
        raise ConfigError(f"{where}.certificate: missing (`quicether network issue` on an admin node prints it)")
    data = _base64(raw["certificate"], f"{where}.certificate")
    # The certificate names its network (the key after the version byte); the signature is checked against
    # it, so a damaged certificate is refused here, not at the first handshake.
    network_key = data[1:33]
    try:
        cert = _core.read_certificate(data, network_key, None) if len(network_key) == 32 else {}
    except ValueError as exc:
        raise ConfigError(f"{where}.certificate: {exc}") from None
    if not cert:
        raise ConfigError(f"{where}.certificate: too short to be a membership certificate")
    revoked_raw = raw.get("revoked", [])
    if not isinstance(revoked_raw, list):
        raise ConfigError(f"{where}.revoked: expected a list of revocations (base64)")
    revoked = []
    for i, text in enumerate(revoked_raw):
        rev = _base64(text, f"{where}.revoked[{i}]")
        try:
            _core.read_revocation(rev, network_key)
        except ValueError as exc:
            raise ConfigError(f"{where}.revoked[{i}]: {exc}") from None
        revoked.append(rev)
    overlay = ipaddress.ip_network(str(cert["overlay"]))
    relay_rate = _rate(raw.get("relay_rate_mbit", DEFAULT_RELAY_RATE_MBIT), f"{where}.relay_rate_mbit")
    return NetworkConfig(certificate=data, network_key=network_key, node_key=bytes(cert["node_key"]),
                         name=str(cert["name"]),
                         address=f"{cert['ipv4']}/{overlay.prefixlen}", not_after=int(cert["not_after"]),
                         ipv6=f"{cert['ipv6']}/48",
                         revoked=revoked, mode=_mode(raw.get("mode", "aggregate"), f"{where}.mode"),
                         realtime_mode=_mode(raw.get("realtime_mode", "redundant"), f"{where}.realtime_mode"),
                         relay=relay, relay_rate_mbit=relay_rate or DEFAULT_RELAY_RATE_MBIT)


def relays(config: Config) -> bool:
    """Whether this node relays for the other members of its network: as `[network] relay` says, else on a
    gateway (public, always on: where members behind symmetric NATs can meet)."""
    if config.network is None:
        return False
    return config.network.relay if config.network.relay is not None else config.role == "gateway"


def _discovery(raw: object, where: str) -> DiscoveryConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: [discovery] must be a table")
    check_keys(raw, {"dht", "lan", "bootstrap", "port", "server"}, where)
    for flag in ("dht", "lan", "server"):
        if not isinstance(raw.get(flag, False), bool):
            raise ConfigError(f"{where}.{flag}: must be true or false")
    bootstrap = raw.get("bootstrap")
    if bootstrap is not None and (not isinstance(bootstrap, list) or len(bootstrap) > MAX_ENDPOINTS):
        raise ConfigError(f"{where}.bootstrap: expected a list of at most {MAX_ENDPOINTS} \"ip:port\" addresses")
    nodes = None if bootstrap is None else [_socket_addr(b, f"{where}.bootstrap[{i}]") for i, b in enumerate(bootstrap)]
    port = _int_in(raw.get("port", 0), 0, 65535, f"{where}.port")
    server = bool(raw.get("server", False))
    if server and port == 0:
        raise ConfigError(f"{where}.server: a DHT server needs a fixed port that the firewall opens"
                          " (discovery.port, e.g. 6881)")
    return DiscoveryConfig(dht=bool(raw.get("dht", True)), lan=bool(raw.get("lan", True)), bootstrap=nodes,
                           port=port, server=server)


def _nat(raw: object, where: str) -> NatConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: [nat] must be a table")
    check_keys(raw, {"port_mapping"}, where)
    port_mapping = raw.get("port_mapping", True)
    if not isinstance(port_mapping, bool):
        raise ConfigError(f"{where}.port_mapping: must be true or false")
    return NatConfig(port_mapping=port_mapping)


def parse(text: str, path: Path) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    check_keys(data, {"node", "peer", "wan", "lan", "gateway", "acl", "webui", "firewall", "network",
                      "discovery", "nat"}, str(path))
    node = data.get("node", {})
    if not isinstance(node, dict):
        raise ConfigError(f"{path}: [node] must be a table")
    check_keys(node, {"listen", "tun", "address", "state_dir", "path_mtu", "congestion", "io_threads",
                      *ROUTER_NODE_KEYS},
                f"{path}: node")
    congestion = node.get("congestion", "loss-tolerant")
    if congestion not in CONGESTION_CONTROLS:
        raise ConfigError(f"{path}: node.congestion: {congestion!r} is not one of {', '.join(CONGESTION_CONTROLS)}")
    listen = _socket_addr(node.get("listen", DEFAULT_LISTEN), f"{path}: node.listen")
    tun = interface_name(node.get("tun", "qe0"), f"{path}: node.tun")
    address = node.get("address")
    if address is not None:
        try:
            ipaddress.ip_interface(str(address))
        except ValueError:
            raise ConfigError(f"{path}: node.address: {address!r} is not an address/prefix like 10.99.0.1/24") from None
    network = _network(data["network"], f"{path}: network") if "network" in data else None
    if network is not None:
        if address is None:
            address = network.address
        elif ipaddress.ip_interface(str(address)).ip != ipaddress.ip_interface(network.address).ip:
            raise ConfigError(f"{path}: node.address: {address} is not the address the network certificate gives"
                              f" this node ({network.address}): remove node.address or make it that")
    path_mtu = node.get("path_mtu", 1500)
    if not isinstance(path_mtu, int) or not MIN_PATH_MTU <= path_mtu <= 9000:
        raise ConfigError(f"{path}: node.path_mtu: must be an integer from {MIN_PATH_MTU} to 9000")
    io_threads = node.get("io_threads", "auto")
    if io_threads != "auto" and (not isinstance(io_threads, int) or isinstance(io_threads, bool)
                                 or not 1 <= io_threads <= MAX_IO_THREADS):
        raise ConfigError(f"{path}: node.io_threads: must be \"auto\" or an integer from 1 to {MAX_IO_THREADS}")
    peers_raw = data.get("peer", [])
    if not isinstance(peers_raw, list):
        raise ConfigError(f"{path}: peer: use [[peer]] tables")
    peers = [_peer(p, i, path) for i, p in enumerate(peers_raw)]
    seen: set[bytes] = set()
    for i, p in enumerate(peers):
        if p.key in seen:
            raise ConfigError(f"{path}: peer[{i}].key: the same peer is listed twice")
        seen.add(p.key)
    wans_raw = data.get("wan", [])
    if not isinstance(wans_raw, list):
        raise ConfigError(f"{path}: wan: use [[wan]] tables")
    wans = [_wan(w, i, path) for i, w in enumerate(wans_raw)]
    names = [w.name for w in wans]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"{path}: wan[{i}].name: {name!r} is used twice")
        if wans[i].device in [w.device for w in wans[:i]]:
            raise ConfigError(f"{path}: wan[{i}].device: port {wans[i].device} is already a WAN")
    group_names = sorted({f"group:{g}" for p in peers for g in p.groups})
    router = parse_router(data, node, [p.name for p in peers] + group_names, str(path))
    for i, acl in enumerate(router.acls):
        if router.lan is None and "lan" in (acl.source, acl.destination):
            raise ConfigError(f"{path}: acl[{i}]: \"lan\" needs a [lan] section")
    if router.lan is not None and (router.lan.device in {w.device for w in wans} or router.lan.device == tun):
        raise ConfigError(f"{path}: lan.device: {router.lan.device} is also a WAN or the tunnel")
    if router.lan is not None and router.lan.exit_peer is not None:
        exit_peer = next(p for p in peers if p.name == router.lan.exit_peer)
        if not any(ipaddress.ip_network(a, strict=False).prefixlen == 0 for a in exit_peer.allowed_ips):
            raise ConfigError(f"{path}: lan.exit: peer {exit_peer.name!r} needs \"0.0.0.0/0\" in its allowed_ips "
                              "to carry internet traffic")
    return Config(path=path, listen=listen, tun=tun, address=str(address) if address else None,
                  state_dir=Path(node.get("state_dir", DEFAULT_STATE_DIR)), path_mtu=path_mtu,
                  congestion=str(congestion), io_threads=None if io_threads == "auto" else io_threads,
                  peers=peers, wans=wans, role=router.role,
                  detect_wans=router.detect_wans, lan=router.lan, gateway=router.gateway, acls=router.acls,
                  acl_default=router.acl_default, webui=router.webui, open_ports=router.open_ports,
                  network=network,
                  discovery=_discovery(data["discovery"], f"{path}: discovery") if "discovery" in data
                  else DiscoveryConfig(),
                  nat=_nat(data["nat"], f"{path}: nat") if "nat" in data else NatConfig())


def load(path: Path) -> Config:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return parse(text, path)
