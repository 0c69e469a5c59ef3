"""The core's events as typed values. `Node.events()` hands over dicts (see quicether/_core.pyi for their
fields); `parse` turns each into one of the dataclasses below, so the daemon dispatches on types and a
misspelt field is a mypy error, not a KeyError at run time. Past-tense names: each says what happened.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CoreEvent:
    key: bytes | None   # the peer's node key (None for TunFailed, and a refusal without a key)
    detail: str         # human-readable; text from the network in it is escaped and bounded by the core


@dataclass(frozen=True)
class PeerAdded(CoreEvent):
    """The core's peer table gained this peer (add_peer)."""


@dataclass(frozen=True)
class PeerRemoved(CoreEvent):
    """The peer left the table (remove_peer): its paths closed, its key is refused from now on."""


@dataclass(frozen=True)
class MemberAdmitted(CoreEvent):
    """A node with no [[peer]] entry was let in by its membership certificate of our network, and added to
    the core's peer table (routed to its overlay addresses and the LAN prefixes the certificate names)."""

    certificate: bytes


@dataclass(frozen=True)
class MemberLearned(CoreEvent):
    """A peer told us the certificate of a member we did not know, or a renewal of one we knew (verified by
    the core)."""

    certificate: bytes


@dataclass(frozen=True)
class MembershipRenewed(CoreEvent):
    """A renewal of this node's own certificate came as member news (verified for our network by the core;
    no key). The daemon keeps it in the config and shows it in handshakes (`Node.set_membership`)."""

    certificate: bytes


@dataclass(frozen=True)
class RevocationLearned(CoreEvent):
    """A peer told us a revocation of our network we did not hold (verified by the core)."""

    revocation: bytes


@dataclass(frozen=True)
class PeerConnected(CoreEvent):
    """The peer's first path came up."""


@dataclass(frozen=True)
class PeerDisconnected(CoreEvent):
    """Its last path closed."""


@dataclass(frozen=True)
class PathChanged(CoreEvent):
    wan: str                # the WAN shown for the path (ours if we dialed it)
    local_wan: str | None   # our WAN it runs over
    peer_wan: str | None    # the peer's WAN as it named it (a safe label)
    path_kind: str          # direct, punched or relayed
    via: bytes | None       # the relay's key for a relayed path
    remote: str | None
    reason: str             # up: connected | recovered; down: silent | closed | wan_removed | duplicate | …


@dataclass(frozen=True)
class PathUp(PathChanged):
    """A path carries traffic: a new connection, or one that answers probes again."""


@dataclass(frozen=True)
class PathDown(PathChanged):
    """A path stopped carrying traffic (silent: the connection stays and may recover)."""


@dataclass(frozen=True)
class HandshakeRefused(CoreEvent):
    """A handshake from a key that is not a peer, or a path unfit for the tunnel (rate-limited)."""


@dataclass(frozen=True)
class DialFailed(CoreEvent):
    wan: str


@dataclass(frozen=True)
class PortMappingChanged(CoreEvent):
    """A WAN's port mapping on its home router was made, changed, lost, or refused (`detail` says which)."""

    wan: str


@dataclass(frozen=True)
class TunFailed(CoreEvent):
    """Reading the TUN device failed: nothing leaves the node any more. Fatal."""


@dataclass(frozen=True)
class JoinRequested(CoreEvent):
    """A node showing a pending invite's key (`key`) asks to be certified as member `detail` ("": the
    invite's name), routing `lan_prefixes`; its request is signed by `node`. Answered with
    `Node.answer_join(request_id, …)`."""

    request_id: int
    node: bytes
    lan_prefixes: tuple[str, ...] = ()


@dataclass(frozen=True)
class LaneNews(CoreEvent):
    """The TCP lane refused a connection or reached its connection cap (rate-limited in the core)."""


@dataclass(frozen=True)
class LaneFellBack(CoreEvent):
    """Lane connections to peer `key` keep falling back to plain TCP: MPTCP is stripped on the way to it."""


@dataclass(frozen=True)
class UnknownEvent(CoreEvent):
    """A kind this daemon does not know (a newer core): logged, otherwise ignored."""

    kind: str


_SIMPLE: dict[str, type[CoreEvent]] = {
    "peer_added": PeerAdded, "peer_removed": PeerRemoved, "peer_connected": PeerConnected,
    "peer_disconnected": PeerDisconnected, "handshake_refused": HandshakeRefused, "tun_failed": TunFailed,
    "lane": LaneNews, "lane_fallback": LaneFellBack,
}
_PATHS: dict[str, type[PathChanged]] = {"path_up": PathUp, "path_down": PathDown}


def _text(raw: dict[str, Any], name: str) -> str | None:
    value = raw.get(name)
    return None if value is None else str(value)


def _bytes(raw: dict[str, Any], name: str) -> bytes:
    value = raw.get(name)
    return bytes(value) if isinstance(value, bytes | bytearray) else b""


def parse(raw: dict[str, Any]) -> CoreEvent:
    kind = str(raw.get("kind", ""))
    key = raw.get("key")
    key = bytes(key) if isinstance(key, bytes | bytearray) else None
    detail = str(raw.get("detail", ""))
    if kind in _SIMPLE:
        return _SIMPLE[kind](key=key, detail=detail)
    if kind in _PATHS:
        via = raw.get("via")
        return _PATHS[kind](key=key, detail=detail, wan=str(raw.get("wan") or ""), local_wan=_text(raw, "local_wan"),
                            peer_wan=_text(raw, "peer_wan"), path_kind=str(raw.get("path_kind") or "direct"),
                            via=bytes(via) if isinstance(via, bytes | bytearray) else None,
                            remote=_text(raw, "remote"), reason=str(raw.get("reason") or ""))
    if kind in ("member_admitted", "member_learned"):
        kind_type = MemberAdmitted if kind == "member_admitted" else MemberLearned
        return kind_type(key=key, detail=detail, certificate=_bytes(raw, "certificate"))
    if kind == "membership_renewed":
        return MembershipRenewed(key=key, detail=detail, certificate=_bytes(raw, "certificate"))
    if kind == "revocation_learned":
        return RevocationLearned(key=key, detail=detail, revocation=_bytes(raw, "revocation"))
    if kind == "join_requested":
        prefixes = raw.get("lan_prefixes")
        return JoinRequested(key=key, detail=detail, request_id=int(raw.get("id", -1)), node=_bytes(raw, "node"),
                             lan_prefixes=tuple(str(p) for p in prefixes) if isinstance(prefixes, list) else ())
    if kind == "port_mapping":
        return PortMappingChanged(key=key, detail=detail, wan=str(raw.get("wan") or ""))
    if kind == "dial_failed":
        return DialFailed(key=key, detail=detail, wan=str(raw.get("wan") or ""))
    return UnknownEvent(key=key, detail=detail, kind=kind)
