"""Invite codes: one string a user pastes to join. Two kinds:

    qei1.<base64url( JSON | CRC-32 )>   a peer invite: the inviting node's id (its public key), the
                                        endpoints it can be dialed at, the overlay network, its name, and
                                        whether it offers an exit. Not a secret and grants nothing by itself:
                                        the inviting node still has to list the joining node's key.
    qej1.<base64url( JSON | CRC-32 )>   a network invite (`quicether invite` on a network's admin node): a
                                        one-time secret (the seed of the invite's own key), the network's
                                        key, the admitting node's key and endpoints, and when it expires. The
                                        joining node shows the secret's key to the admin once and gets its
                                        membership certificate (`quicether.joining`). A secret: whoever holds
                                        the code can join, once, until it expires.

The CRC catches a code that lost or changed characters on the way (chat apps, retyping) before it is
used; the keys inside are the trust anchors, as when a node id is pasted into the config.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
import zlib
from dataclasses import asdict, dataclass

from quicether.config import ConfigError, peer_name
from quicether.identity import IdentityError, decode_node_id

INVITE_PREFIX = "qei1."
NETWORK_INVITE_PREFIX = "qej1."
# Overlay networks an invite may name: private IPv4, at most a /8 (or inside 100.64.0.0/10).
MIN_NETWORK_PREFIX = 8
CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
# Codes longer than this are not ours (a handful of endpoints fit easily); refuse before decoding.
MAX_INVITE_CHARS = 2048
# Names in a network (as `quicether.network` checks them).
NETWORK_NAME_RE = re.compile(r"^[a-z0-9-]{1,32}$")


class InviteError(ValueError):
    """The code cannot be used; the message says what is wrong in words for the person who pasted it."""


@dataclass(frozen=True)
class Invite:
    key: str                      # the inviting node's id (qe1…)
    endpoints: list[str]          # "host:port" it listens on, best first
    network: str                  # the overlay network, e.g. 10.99.0.0/24
    name: str = "gateway"
    exit: bool = False            # offers an exit: route the joining site's internet traffic through it
    peer_address: str = ""        # the inviting node's overlay address

    def encode(self) -> str:
        return _frame(INVITE_PREFIX, asdict(self))


@dataclass(frozen=True)
class NetworkInvite:
    network: str                  # the network's name
    network_key: str              # the network's key, written like a node id (qe1…)
    admin_key: str                # the admitting node's id: the joining node pins it
    endpoints: list[str]          # "ip:port" the admin node listens on, best first
    secret: str                   # base64url of the invite key's seed (32 bytes)
    expires_at: int               # Unix seconds
    name: str = ""                # the name the new member gets ("": the joining node chooses)

    def encode(self) -> str:
        return _frame(NETWORK_INVITE_PREFIX, asdict(self))

    @property
    def seed(self) -> bytes:
        return base64.urlsafe_b64decode(self.secret + "=" * (-len(self.secret) % 4))


def _frame(prefix: str, fields: dict[str, object]) -> str:
    payload = json.dumps({"v": 1, **fields}, separators=(",", ":")).encode()
    body = payload + zlib.crc32(payload).to_bytes(4, "big")
    return prefix + base64.urlsafe_b64encode(body).decode().rstrip("=")


def _unframe(code: str, prefix: str) -> dict[str, object]:
    """The fields of a code of kind `prefix`, its framing checked (prefix, length, base64, CRC, version)."""
    text = "".join(code.split())  # line breaks and spaces picked up when copying are harmless
    if not text:
        raise InviteError("the invite code is empty")
    if not text.startswith(prefix):
        raise InviteError(f"not an invite code (it should start with {prefix!r}; "
                          "run `quicether invite` on the gateway)")
    if len(text) > MAX_INVITE_CHARS:
        raise InviteError("the invite code is too long")
    body = text[len(prefix):]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise InviteError("the invite code is damaged (not valid base64); copy it again") from None
    payload, crc = raw[:-4], raw[-4:]
    if len(raw) < 5 or zlib.crc32(payload).to_bytes(4, "big") != crc:
        raise InviteError("the invite code is damaged or incomplete (checksum mismatch); copy it again")
    try:
        data = json.loads(payload)
        if not isinstance(data, dict):
            raise ValueError
    except ValueError:
        raise InviteError("the invite code does not hold an invite") from None
    if data.get("v") != 1:
        raise InviteError(f"invite version {data.get('v')!r} is not supported by this QuicEther")
    return data


def is_network_invite(code: str) -> bool:
    return "".join(code.split()).startswith(NETWORK_INVITE_PREFIX)


def _endpoint(text: object) -> str:
    host, sep, port = str(text).rpartition(":")
    try:
        ipaddress.ip_address(host.strip("[]"))
        port_n = int(port)
    except ValueError:
        raise InviteError(f"endpoint {text!r} is not an IP address with a port") from None
    if not sep or not 1 <= port_n <= 65535:
        raise InviteError(f"endpoint {text!r} has no valid port")
    return str(text)


def decode(code: str) -> Invite:
    data = _unframe(code, INVITE_PREFIX)
    try:
        key, endpoints, network = str(data["key"]), data["endpoints"], str(data["network"])
    except KeyError:
        raise InviteError("the invite code does not hold an invite") from None
    try:
        decode_node_id(key)
    except IdentityError as exc:
        raise InviteError(f"the invite's node id is invalid: {exc}") from None
    if not isinstance(endpoints, list) or not endpoints:
        raise InviteError("the invite has no endpoint to connect to")
    try:
        net = ipaddress.ip_network(network, strict=False)
    except ValueError:
        raise InviteError(f"the invite's network {network!r} is not a prefix") from None
    # The overlay is a private network: a huge or public prefix would route half the internet to the
    # inviter without anyone choosing it as the exit.
    if net.version != 4 or net.prefixlen < MIN_NETWORK_PREFIX or not (net.is_private or net.subnet_of(CGNAT)):
        raise InviteError(f"the invite's network {net} is not a private IPv4 network of /{MIN_NETWORK_PREFIX} "
                          "or smaller")
    peer_address = str(data.get("peer_address", ""))
    if peer_address:
        try:
            if ipaddress.ip_interface(peer_address).ip not in net:
                raise ValueError
        except ValueError:
            raise InviteError(f"the invite's own address {peer_address!r} is not inside {net}") from None
    try:
        name = peer_name(data.get("name") or "gateway", "name")
    except ConfigError:
        raise InviteError(f"the invite's name {data.get('name')!r} cannot be a peer name (letters, digits, "
                          "'_', '.' and '-' only)") from None
    return Invite(key=key, endpoints=[_endpoint(e) for e in endpoints], network=str(net),
                  name=name, exit=data.get("exit") is True,
                  peer_address=peer_address)


def decode_network(code: str) -> NetworkInvite:
    """A network invite's fields, each checked (not its expiry: `quicether.joining` says that in words)."""
    data = _unframe(code, NETWORK_INVITE_PREFIX)
    endpoints, expires_at = data.get("endpoints"), data.get("expires_at")
    if not isinstance(endpoints, list) or not isinstance(expires_at, int):
        raise InviteError("the invite code does not hold a network invite")
    try:
        invite = NetworkInvite(network=str(data["network"]), network_key=str(data["network_key"]),
                               admin_key=str(data["admin_key"]), endpoints=[str(e) for e in endpoints],
                               secret=str(data["secret"]), expires_at=expires_at, name=str(data.get("name") or ""))
    except KeyError:
        raise InviteError("the invite code does not hold a network invite") from None
    for what, key in (("network key", invite.network_key), ("admin node id", invite.admin_key)):
        try:
            decode_node_id(key)
        except IdentityError as exc:
            raise InviteError(f"the invite's {what} is invalid: {exc}") from None
    try:
        if len(invite.seed) != 32:
            raise ValueError
    except (binascii.Error, ValueError):
        raise InviteError("the invite's secret is damaged") from None
    if not invite.endpoints:
        raise InviteError("the invite has no endpoint to reach the admin node at")
    for endpoint in invite.endpoints:
        _endpoint(endpoint)
    if invite.name and not NETWORK_NAME_RE.match(invite.name):
        raise InviteError(f"the invite's member name {invite.name!r} is not 1-32 of a-z, 0-9 and -")
    return invite
