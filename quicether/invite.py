"""Invite codes: one string a user pastes to join a gateway or peer. It carries the inviting node's id
(its public key), the endpoints it can be dialed at, the overlay network, its name, and whether it offers
an exit to the internet.

    qei1.<base64url( JSON | CRC-32 )>

The CRC catches a code that lost or changed characters on the way (chat apps, retyping) before it is
used; the key inside is the trust anchor, as when a node id is pasted into the config. An invite is not a
secret and grants nothing by itself: the inviting node still has to list the joining node's key.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import zlib
from dataclasses import asdict, dataclass

from quicether.config import ConfigError, peer_name
from quicether.identity import IdentityError, decode_node_id

INVITE_PREFIX = "qei1."
# Overlay networks an invite may name: private IPv4, at most a /8 (or inside 100.64.0.0/10).
MIN_NETWORK_PREFIX = 8
CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
# Codes longer than this are not ours (a handful of endpoints fit easily); refuse before decoding.
MAX_INVITE_CHARS = 2048


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
        payload = json.dumps({"v": 1, **asdict(self)}, separators=(",", ":")).encode()
        body = payload + zlib.crc32(payload).to_bytes(4, "big")
        return INVITE_PREFIX + base64.urlsafe_b64encode(body).decode().rstrip("=")


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
    text = "".join(code.split())  # line breaks and spaces picked up when copying are harmless
    if not text:
        raise InviteError("the invite code is empty")
    if not text.startswith(INVITE_PREFIX):
        raise InviteError(f"not an invite code (it should start with {INVITE_PREFIX!r}; "
                          "run `quicether invite` on the gateway)")
    if len(text) > MAX_INVITE_CHARS:
        raise InviteError("the invite code is too long")
    body = text[len(INVITE_PREFIX):]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise InviteError("the invite code is damaged (not valid base64); copy it again") from None
    payload, crc = raw[:-4], raw[-4:]
    if len(raw) < 5 or zlib.crc32(payload).to_bytes(4, "big") != crc:
        raise InviteError("the invite code is damaged or incomplete (checksum mismatch); copy it again")
    try:
        data = json.loads(payload)
        if data.get("v") != 1:
            raise InviteError(f"invite version {data.get('v')!r} is not supported by this QuicEther")
        key, endpoints, network = str(data["key"]), data["endpoints"], str(data["network"])
    except (ValueError, KeyError, TypeError, AttributeError):
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
