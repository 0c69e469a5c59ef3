"""The router part of the config: the LAN, gateway mode, ACLs. Parsed from the same TOML file as the
node (quicether/config.py); every error names its field.

    [node]
    role = "site"                  # "site": a router with a LAN; "gateway": a server that accepts sites
    detect_wans = false            # true: every port with a default route (a DHCP lease, a static
                                   # gateway) is a WAN too, found and dropped at run time
    acl_default = "allow"          # traffic from the tunnel to another site: "allow" or "deny"
                                   # (a site's own LAN is never filtered: it does not cross the router)

    [lan]
    device = "eth0"                # the LAN port
    address = "192.168.50.1/24"    # the appliance's address there (the default)
    dhcp = true                    # DHCP for LAN clients (dnsmasq, run by the daemon)
    dhcp_range = ["192.168.50.100", "192.168.50.250"]   # default: .100 to .250 of the LAN subnet
    dns = true                     # DNS forwarder for LAN clients at the LAN address
    dns_servers = ["9.9.9.9"]      # upstream servers (default: the system's /etc/resolv.conf)
    dns_from_peers = false         # true: the DNS forwarder also answers peers through the tunnel (the
                                   # web UI never does: it answers the LAN port only)
    exit = "gateway"               # the peer whose tunnel carries LAN internet traffic (its allowed_ips
                                   # must hold 0.0.0.0/0); without it LAN traffic leaves by the WANs (NAT)
    kill_switch = false            # true: LAN traffic never leaves by a raw WAN, even with the bond down
    direct = ["192.168.1.0/24"]    # destinations the LAN reaches by the WANs directly, not through the exit
                                   # (the ISP modem's page, local services); allowed past the kill switch

    [gateway]                      # role = "gateway" only
    internet = "eth0"              # port to the internet: sites' exit traffic is masqueraded out of it
    [[gateway.forward]]            # port forward from the internet port into a site
    protocol = "tcp"
    port = 8080
    to = "10.0.50.10:80"

    [firewall]
    open = ["tcp/22"]              # more ports accepted from outside (WANs, the gateway's internet port)
                                   # besides QUIC: e.g. SSH to a gateway VPS; none by default

    [webui]                        # the web UI, served on the LAN address only (needs [lan])
    enabled = true
    port = 80

    [[acl]]                        # first match wins; applied to traffic routed from the tunnel
    action = "deny"                # allow or deny
    from = "site-a"                # a peer name (its allowed_ips), "group:<name>" (every peer in that
                                   # group), "lan" (this node's LAN) or a prefix
    to = "10.0.80.0/24"            # same forms as from
    protocol = "tcp"               # optional: tcp, udp, icmp or a number
    port = 22                      # optional destination port (tcp/udp)
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

ROUTER_NODE_KEYS = ("role", "detect_wans", "acl_default")
DEFAULT_LAN_ADDRESS = "192.168.50.1/24"
PROTOCOL_NUMBERS = {"tcp": 6, "udp": 17, "icmp": 1}
# Default DHCP pool: hosts .100 to .250 of the LAN, leaving the low addresses for static devices.
DHCP_FIRST_HOST = 100
DHCP_LAST_HOST = 250


class ConfigError(ValueError):
    """The config cannot be used; the message starts with the file and field."""


@dataclass(frozen=True)
class LanConfig:
    device: str
    address: str
    dhcp: bool
    dhcp_range: tuple[str, str]
    dns: bool
    dns_servers: list[str]
    exit_peer: str | None
    kill_switch: bool
    direct: list[str] = field(default_factory=list)
    dns_from_peers: bool = False

    @property
    def subnet(self) -> str:
        return str(ipaddress.ip_interface(self.address).network)

    @property
    def ip(self) -> str:
        return str(ipaddress.ip_interface(self.address).ip)


@dataclass(frozen=True)
class PortForward:
    protocol: str
    port: int
    to_addr: str
    to_port: int


@dataclass(frozen=True)
class GatewayConfig:
    internet: str | None
    forwards: list[PortForward] = field(default_factory=list)


@dataclass(frozen=True)
class AclRule:
    action: str
    source: str          # a peer name, "lan" or a prefix, resolved when the firewall is built
    destination: str
    protocol: int | None
    port: int | None


@dataclass(frozen=True)
class WebUiConfig:
    enabled: bool = True
    port: int = 80


@dataclass(frozen=True)
class OpenPort:
    protocol: str   # "tcp" or "udp"
    port: int


@dataclass(frozen=True)
class RouterConfig:
    role: str
    detect_wans: bool
    acl_default: str
    lan: LanConfig | None
    gateway: GatewayConfig | None
    acls: list[AclRule]
    webui: WebUiConfig
    open_ports: list[OpenPort] = field(default_factory=list)


def check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{where}.{key}: unknown setting (known: {', '.join(sorted(allowed))})")


def _table(raw: object, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table")
    return raw


def _bool(raw: dict[str, Any], key: str, default: bool, where: str) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key}: expected true or false, got {value!r}")
    return value


# Linux interface names: 1 to 15 characters (IFNAMSIZ - 1). We take letters, digits and "_.-" only: the
# kernel refuses "/", ":" and white space, and nftables reads a trailing "*" as a wildcard (a port named
# "*" would match every port, the LAN included), so neither may reach a rule.
INTERFACE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")


def interface_name(value: object, where: str) -> str:
    if not isinstance(value, str) or not INTERFACE_NAME.fullmatch(value) or value in (".", ".."):
        raise ConfigError(f"{where}: {value!r} is not an interface name (1 to 15 letters, digits, '_', '.' or '-')")
    return value





def _ipv4(value: object, where: str) -> str:
    try:
        return str(ipaddress.IPv4Address(str(value)))
    except ValueError:
        raise ConfigError(f"{where}: {value!r} is not an IPv4 address") from None


def _lan(raw_in: object, peer_names: list[str], where: str) -> LanConfig:
    raw = _table(raw_in, where)
    check_keys(raw, {"device", "address", "dhcp", "dhcp_range", "dns", "dns_servers", "dns_from_peers", "exit",
                     "kill_switch", "direct"}, where)
    direct = raw.get("direct", [])
    if not isinstance(direct, list):
        raise ConfigError(f"{where}.direct: expected a list of prefixes")
    device = interface_name(raw.get("device"), f"{where}.device")
    text = raw.get("address", DEFAULT_LAN_ADDRESS)
    try:
        iface = ipaddress.IPv4Interface(str(text))
    except ValueError:
        raise ConfigError(f"{where}.address: {text!r} is not an IPv4 address/prefix like 192.168.50.1/24") from None
    net = iface.network
    if net.prefixlen > 30 or iface.ip in (net.network_address, net.broadcast_address):
        raise ConfigError(f"{where}.address: {text!r} is not a usable host address in a subnet of /30 or larger")
    if "dhcp_range" in raw:
        pool = raw["dhcp_range"]
        if not isinstance(pool, list) or len(pool) != 2:
            raise ConfigError(f"{where}.dhcp_range: expected [first, last] addresses")
        first, last = (ipaddress.IPv4Address(_ipv4(a, f"{where}.dhcp_range")) for a in pool)
        if first not in net or last not in net or first > last:
            raise ConfigError(f"{where}.dhcp_range: {pool} is not an ascending range inside {net}")
    else:
        hosts = net.num_addresses - 2
        first = net.network_address + min(DHCP_FIRST_HOST, max(1, hosts // 2))
        last = net.network_address + min(DHCP_LAST_HOST, hosts)
    if first <= iface.ip <= last:
        raise ConfigError(f"{where}.dhcp_range: the pool {first}-{last} holds the LAN address {iface.ip}")
    servers = raw.get("dns_servers", [])
    if not isinstance(servers, list):
        raise ConfigError(f"{where}.dns_servers: expected a list of addresses")
    exit_peer = raw.get("exit")
    if exit_peer is not None and exit_peer not in peer_names:
        raise ConfigError(f"{where}.exit: no peer named {exit_peer!r} (peers: {', '.join(peer_names) or 'none'})")
    return LanConfig(device=device, address=str(iface), dhcp=_bool(raw, "dhcp", True, where), dhcp_range=(
        str(first), str(last)), dns=_bool(raw, "dns", True, where),
        dns_servers=[_ipv4(s, f"{where}.dns_servers") for s in servers], exit_peer=exit_peer,
        kill_switch=_bool(raw, "kill_switch", False, where),
        direct=[_prefix(d, f"{where}.direct") for d in direct],
        dns_from_peers=_bool(raw, "dns_from_peers", False, where))


def _prefix(value: object, where: str) -> str:
    try:
        return str(ipaddress.IPv4Network(str(value), strict=False))
    except ValueError:
        raise ConfigError(f"{where}: {value!r} is not an IPv4 prefix") from None


def parse_protocol(value: object, where: str) -> int:
    """A protocol by name (tcp, udp, icmp) or number, for traffic classes and ACLs."""
    if isinstance(value, str) and value in PROTOCOL_NUMBERS:
        return PROTOCOL_NUMBERS[value]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255:
        return value
    raise ConfigError(f"{where}: {value!r} is not tcp, udp, icmp or a protocol number")


def _port(value: object, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise ConfigError(f"{where}: must be a port number from 1 to 65535")
    return value


def _forward(raw_in: object, where: str) -> PortForward:
    raw = _table(raw_in, where)
    check_keys(raw, {"protocol", "port", "to"}, where)
    protocol = raw.get("protocol", "tcp")
    if protocol not in ("tcp", "udp"):
        raise ConfigError(f"{where}.protocol: {protocol!r} is not tcp or udp")
    to = raw.get("to")
    host, _, port = str(to).rpartition(":")
    if not isinstance(to, str) or not (port.isascii() and port.isdigit()):
        raise ConfigError(f"{where}.to: expected \"address:port\", got {to!r}")
    return PortForward(protocol=protocol, port=_port(raw.get("port"), f"{where}.port"),
                       to_addr=_ipv4(host, f"{where}.to"), to_port=_port(int(port), f"{where}.to"))


def _endpoint_set(value: object, peer_names: list[str], where: str) -> str:
    if value == "lan" or value in peer_names:
        return str(value)
    try:
        return _prefix(value, where)
    except ConfigError:
        raise ConfigError(f"{where}: {value!r} is neither a peer name, a peer group (group:<name>), \"lan\" "
                          "nor an IPv4 prefix") from None


def _acl(raw_in: object, peer_names: list[str], where: str) -> AclRule:
    raw = _table(raw_in, where)
    check_keys(raw, {"action", "from", "to", "protocol", "port"}, where)
    action = raw.get("action")
    if action not in ("allow", "deny"):
        raise ConfigError(f"{where}.action: {action!r} is not allow or deny")
    protocol = parse_protocol(raw["protocol"], f"{where}.protocol") if "protocol" in raw else None
    port = _port(raw["port"], f"{where}.port") if "port" in raw else None
    if port is not None and protocol not in (6, 17):
        raise ConfigError(f"{where}.port: a port needs protocol = \"tcp\" or \"udp\"")
    return AclRule(action=str(action), source=_endpoint_set(raw.get("from", "0.0.0.0/0"), peer_names, f"{where}.from"),
                   destination=_endpoint_set(raw.get("to", "0.0.0.0/0"), peer_names, f"{where}.to"),
                   protocol=protocol, port=port)


def parse_router(data: dict[str, Any], node: dict[str, Any], peer_names: list[str], path: str) -> RouterConfig:
    role = node.get("role", "site")
    if role not in ("site", "gateway"):
        raise ConfigError(f"{path}: node.role: {role!r} is not site or gateway")
    acl_default = node.get("acl_default", "allow")
    if acl_default not in ("allow", "deny"):
        raise ConfigError(f"{path}: node.acl_default: {acl_default!r} is not allow or deny")
    # The exit is one peer: a "group:…" name (valid in ACL rules) is not one.
    lan = _lan(data["lan"], [n for n in peer_names if not n.startswith("group:")], f"{path}: lan") \
        if "lan" in data else None
    gateway = None
    if "gateway" in data:
        if role != "gateway":
            raise ConfigError(f"{path}: gateway: only for role = \"gateway\" in [node]")
        raw = _table(data["gateway"], f"{path}: gateway")
        check_keys(raw, {"internet", "forward"}, f"{path}: gateway")
        internet = interface_name(raw["internet"], f"{path}: gateway.internet") if "internet" in raw else None
        forwards_raw = raw.get("forward", [])
        if not isinstance(forwards_raw, list):
            raise ConfigError(f"{path}: gateway.forward: use [[gateway.forward]] tables")
        forwards = [_forward(f, f"{path}: gateway.forward[{i}]") for i, f in enumerate(forwards_raw)]
        if forwards and internet is None:
            raise ConfigError(f"{path}: gateway.forward: port forwards need gateway.internet")
        gateway = GatewayConfig(internet=internet, forwards=forwards)
    acls_raw = data.get("acl", [])
    if not isinstance(acls_raw, list):
        raise ConfigError(f"{path}: acl: use [[acl]] tables")
    acls = [_acl(a, peer_names, f"{path}: acl[{i}]") for i, a in enumerate(acls_raw)]
    webui_raw = _table(data.get("webui", {}), f"{path}: webui")
    check_keys(webui_raw, {"enabled", "port"}, f"{path}: webui")
    webui = WebUiConfig(enabled=_bool(webui_raw, "enabled", True, f"{path}: webui"),
                        port=_port(webui_raw.get("port", 80), f"{path}: webui.port"))
    firewall_raw = _table(data.get("firewall", {}), f"{path}: firewall")
    check_keys(firewall_raw, {"open"}, f"{path}: firewall")
    opened = firewall_raw.get("open", [])
    if not isinstance(opened, list):
        raise ConfigError(f"{path}: firewall.open: expected a list like [\"tcp/22\"]")
    return RouterConfig(role=str(role), detect_wans=_bool(node, "detect_wans", False, f"{path}: node"),
                        acl_default=str(acl_default), lan=lan, gateway=gateway, acls=acls, webui=webui,
                        open_ports=[_open_port(o, f"{path}: firewall.open") for o in opened])


def _open_port(value: object, where: str) -> OpenPort:
    protocol, _, port = str(value).partition("/")
    if protocol not in ("tcp", "udp") or not (port.isascii() and port.isdigit()):
        raise ConfigError(f"{where}: {value!r} is not like \"tcp/22\" or \"udp/5353\"")
    return OpenPort(protocol, _port(int(port), where))
