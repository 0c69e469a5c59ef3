"""Joining a network with its invite code (`quicether join qej1.…`, the web UI's wizard), both sides.

Joining node: `join` checks the code (damaged, expired, of another network than the one this node is in),
asks the admin node named in it for a membership certificate that lets it route its LAN (the exchange is
the core's:
`core/io/src/join.rs`), checks the certificate it gets (signed by the invite's network key, issued to this
node's key) and `add_membership` writes it into the config with the admin as a peer and the network's
discovery settings, and with `use_exit` the admin as the LAN's exit when it offers one (a gateway). Nothing
is written unless all of that worked.

Admin node: `Admissions` tells the core which invite keys may shake hands, answers each join request
from the ledger (`quicether.network.admit`: single use, expiry, names), renews the certificates that
are due (`quicether.network.renewals_due`), told to every member as member news, and reads the ledger's
revocations (`quicether network revoke`), which the daemon enforces and tells the members likewise.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import logging
import socket
import time
from dataclasses import asdict, dataclass
from typing import Any

from quicether import _core, network
from quicether.config import Config, ConfigError
from quicether.identity import Identity, decode_node_id, encode_node_id, short_id
from quicether.invite import NETWORK_NAME_RE, InviteError, NetworkInvite, decode_network
from quicether.router_config import DEFAULT_LAN_ADDRESS

log = logging.getLogger("quicether")
JOIN_TIMEOUT_S = 10.0
ANSWER_VERSION = 1
Document = dict[str, Any]


@dataclass(frozen=True)
class Joined:
    """What the admin node sent a new member: its certificate and how to find the network."""
    network: str
    certificate: bytes
    name: str                 # the name the certificate gives this node
    address: str              # its overlay address with the network's prefix
    admin_name: str
    admin_address: str        # the admin's overlay IPv4
    bootstrap: list[str] | None  # the network's DHT bootstrap (None: the public mainline DHT)
    dht: bool
    exit_offered: bool = False   # the admin carries members' internet traffic (a gateway with an internet port)
    lan_prefixes: tuple[str, ...] = ()  # the LAN prefixes the certificate lets this node route


def as_dict(joined: Joined) -> dict[str, Any]:
    """`joined` as JSON values (the daemon's API answer to the web UI)."""
    return {**asdict(joined), "certificate": base64.b64encode(joined.certificate).decode()}


def from_dict(raw: dict[str, Any]) -> Joined:
    try:
        return Joined(**{**raw, "certificate": base64.b64decode(str(raw["certificate"]), validate=True),
                         "lan_prefixes": tuple(str(p) for p in raw.get("lan_prefixes", ()))})
    except (TypeError, KeyError, ValueError, binascii.Error) as exc:
        raise InviteError(f"the daemon's answer to the join is unusable: {exc}") from None


def default_name() -> str:
    """A member name from the host name (a-z, 0-9, -), for a join that gives none."""
    cleaned = "".join(c if c.isalnum() or c == "-" else "-" for c in socket.gethostname().lower()).strip("-")
    return cleaned[:32] or "node"


def _current_network_key(doc: Document) -> bytes | None:
    cert = doc.get("network", {}).get("certificate")
    try:
        data = base64.b64decode(str(cert), validate=True) if cert else b""
    except (binascii.Error, ValueError):
        return None
    return data[1:33] if len(data) > 33 else None


def lan_prefixes_of(doc: Document) -> list[str]:
    """The LAN prefix a node with config document `doc` routes (asked for when it joins): its [lan]'s."""
    lan = doc.get("lan")
    if not isinstance(lan, dict) or not lan.get("device"):
        return []
    try:
        return [str(ipaddress.IPv4Interface(str(lan.get("address", DEFAULT_LAN_ADDRESS))).network)]
    except ValueError:
        return []  # the config check names the field; the join asks for no LAN then


def join(code: str, identity: Identity, doc: Document, name: str = "", now: float | None = None,
         lan_prefixes: list[str] | None = None) -> Joined:
    """Uses invite `code` for the node `identity` (config document `doc`), asking to route `lan_prefixes`
    (default: the LAN of `doc`): InviteError says why not."""
    invite = decode_network(code)
    now = time.time() if now is None else now
    if invite.expires_at <= now:
        expired = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(invite.expires_at))
        raise InviteError(f"this invite expired on {expired}; ask the admin for a new one")
    network_key = decode_node_id(invite.network_key)
    current = _current_network_key(doc)
    if current is not None and current != network_key:
        raise InviteError(f"this invite is for network {invite.network!r} ({invite.network_key}), but this node "
                          f"is a member of another network ({encode_node_id(current)}); remove [network] from the "
                          "config first to leave it")
    name = invite.name or name or default_name()
    if not NETWORK_NAME_RE.match(name):
        raise InviteError(f"member name {name!r} must be 1-32 characters of a-z, 0-9 and -")
    try:
        certified, body = _core.request_join(invite.seed, decode_node_id(invite.admin_key), invite.endpoints,
                                             identity.seed, "" if invite.name else name,
                                             lan_prefixes=lan_prefixes_of(doc) if lan_prefixes is None
                                             else lan_prefixes, timeout_s=JOIN_TIMEOUT_S)
    except OSError as exc:
        raise InviteError(f"could not reach the admin node at {', '.join(invite.endpoints)}: {exc}") from None
    if isinstance(body, str) or not certified:
        raise InviteError(f"the admin node refused: {body!s}")
    return _read_answer(body, invite, identity)


def _read_answer(body: bytes, invite: NetworkInvite, identity: Identity) -> Joined:
    """The admin's answer, its certificate checked: of the invite's network, for this node, valid now."""
    network_key = decode_node_id(invite.network_key)
    try:
        answer = json.loads(body)
        if answer.get("v") != ANSWER_VERSION:
            raise ValueError(f"answer version {answer.get('v')!r}")
        certificate = base64.b64decode(str(answer["certificate"]), validate=True)
        cert = _core.read_certificate(certificate, network_key, int(time.time()))
        raw_bootstrap = answer.get("bootstrap")
        bootstrap = None if raw_bootstrap is None else [str(b) for b in raw_bootstrap][:16]
        admin_name, admin_address = str(answer["admin_name"]), str(answer["admin_address"])
        ipaddress.IPv4Address(admin_address)
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        raise InviteError(f"the admin node's answer is unusable: {exc}") from None
    if bytes(cert["node_key"]) != identity.public_key:
        raise InviteError("the admin node certified another node's key: not used")
    prefix = ipaddress.ip_network(str(cert["overlay"])).prefixlen
    return Joined(network=invite.network, certificate=certificate, name=str(cert["name"]),
                  address=f"{cert['ipv4']}/{prefix}", admin_name=admin_name, admin_address=admin_address,
                  bootstrap=bootstrap, dht=answer.get("dht") is not False, exit_offered=answer.get("exit") is True,
                  lan_prefixes=tuple(str(p) for p in cert["lan_prefixes"]))


def add_membership(doc: Document, joined: Joined, invite: NetworkInvite, use_exit: bool = False) -> Document:
    """The document with this node a member: [network] certificate, the admin as a peer (dialed at the
    invite's endpoints), the network's DHT bootstrap unless [discovery] is set already, and no node.address
    of its own (the certificate gives it). A [[peer]] entry with the admin's name but another key is kept and
    the admin's entry named after its key instead (ACL rules may name the old one). With `use_exit`, if the
    admin offers an exit, the admin peer also carries 0.0.0.0/0 and is the LAN's exit (with a [lan]); the
    exit is the owner's choice, never the invite's."""
    new = {**doc, "network": {**doc.get("network", {}), "certificate": base64.b64encode(joined.certificate).decode()}}
    node = dict(new.get("node", {}))
    node.pop("address", None)
    new["node"] = node
    peers = [p for p in doc.get("peer", []) if p.get("key") != invite.admin_key]
    name = joined.admin_name
    if any(p.get("name") == name for p in peers):
        name = f"{name}-{short_id(invite.admin_key)}"
    ula = _core.member_ula(decode_node_id(invite.network_key), decode_node_id(invite.admin_key))
    exit_to_admin = use_exit and joined.exit_offered
    admin = {"name": name, "key": invite.admin_key, "endpoint": invite.endpoints[0],
             "allowed_ips": [f"{joined.admin_address}/32", f"{ula}/128"] + (["0.0.0.0/0"] if exit_to_admin else [])}
    new["peer"] = [*peers, admin]
    if exit_to_admin and "lan" in new:
        new["lan"] = {**new["lan"], "exit": name}
    if "discovery" not in new:
        new["discovery"] = {"dht": joined.dht, **({} if joined.bootstrap is None else {"bootstrap": joined.bootstrap})}
    return new


class Admissions:
    """On a network's admin node: the invites the core lets shake hands, and the answers to join requests."""

    def __init__(self, node: _core.Node, config: Config) -> None:
        self.node = node
        self.config = config
        self.joined = 0
        self.refused = 0
        self._damage_said: str | None = None  # the ledger's damage, logged once (not on every recheck)

    def network(self) -> network.Network | None:
        """The network of [network] if this node holds its key (is its admin), else None."""
        net = self.config.network
        if net is None:
            return None
        try:
            found = network.holding_key(self.config.state_dir, net.network_key)
        except network.NetworkError as exc:
            if str(exc) != self._damage_said:
                log.error("invites: %s; this node admits no members until it is restored", exc)
                self._damage_said = str(exc)
            return None
        self._damage_said = None
        return found

    def check(self) -> None:
        """At start, on the admin node: a network key that cannot be used is said at once (it is needed only
        when a member joins or a certificate is due, which may be days away)."""
        net = self.network()
        if net is None:
            return
        try:
            network.check_key(net)
        except network.NetworkError as exc:
            log.error("%s: this node cannot admit members nor renew certificates until it is restored", exc)

    def refresh(self) -> int:
        """Tells the core the invite keys to accept (after `quicether invite`, and as invites expire)."""
        net = self.network()
        try:
            keys = network.invite_keys(net) if net is not None else []
        except network.NetworkError as exc:
            log.error("invites: %s", exc)
            keys = []
        self.node.set_invites(keys)
        return len(keys)

    def requested(self, request_id: int, invite_key: bytes, node_key: bytes, name: str,
                  lan_prefixes: tuple[str, ...] = ()) -> None:
        """Answers one join request (the core waits up to 10 s for it); the LAN prefixes the node asks to
        route are granted if no other member routes them (`network.admit`)."""
        net, own = self.network(), self.config.network
        who = f"node {short_id(encode_node_id(node_key))}"
        try:
            if net is None or own is None:
                raise network.NetworkError("this node no longer admits members of that network")
            member = network.admit(net, invite_key, node_key, name, asked_lan=list(lan_prefixes))
        except network.NetworkError as exc:
            self.refused += 1
            log.warning("join of %s refused: %s", who, exc)
            self.node.answer_join(request_id, False, str(exc).encode())
            return
        discovery = self.config.discovery
        gateway = self.config.gateway
        answer = {"v": ANSWER_VERSION, "network": net.name, "certificate": member.certificate,
                  "admin_name": own.name, "admin_address": own.address.split("/")[0],
                  "bootstrap": discovery.bootstrap, "dht": discovery.dht,
                  "exit": gateway is not None and gateway.internet is not None}
        if self.node.answer_join(request_id, True, json.dumps(answer).encode()):
            self.joined += 1
            log.info("%s joined network %s as %s (%s) with an invite", who, net.name, member.name, member.ipv4)
        else:
            log.warning("join of %s: certified as %s, but the request timed out before the answer", who,
                        member.name)
        self.refresh()

    def revocations(self) -> list[bytes]:
        """The revocations in the ledger of this node's network (none if it is not its admin), each checked
        against the network key: one that does not verify is skipped (and said), the others still hold."""
        net = self.network()
        if net is None:
            return []
        kept = []
        for i, text in enumerate(net.revocations):
            try:
                data = base64.b64decode(text, validate=True)
                _core.read_revocation(data, net.public_key)
            except ValueError as exc:  # binascii.Error is one
                log.error("network %s: revocation %d of its ledger skipped: %s", net.name, i + 1, exc)
                continue
            kept.append(data)
        return kept

    def renew(self) -> int:
        """Renews the members' certificates that are due and tells them to the mesh (the renewed member
        learns its own from whichever peer it is connected to, now or when it comes back); how many."""
        net = self.network()
        if net is None:
            return 0
        try:
            renewed = network.renewals_due(net)
        except network.NetworkError as exc:
            log.error("renewing certificates: %s", exc)
            return 0
        if renewed:
            self.node.tell_members([base64.b64decode(m.certificate) for m in renewed])
            log.info("renewed the certificates of %s (valid until %s)", ", ".join(m.name for m in renewed),
                     time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(max(m.not_after for m in renewed))))
        return len(renewed)


def invite_endpoints(config: Config, given: list[str]) -> list[str]:
    """The endpoints an invite names: those given, else the listen address if it is a specific one."""
    if given:
        return given
    host = config.listen.rpartition(":")[0].strip("[]")
    if ipaddress.ip_address(host).is_unspecified:
        raise ConfigError(f"listening on {config.listen}: give the address others reach this node at with "
                          "--endpoint IP:PORT (its public address)")
    return [config.listen]

