"""Type stub for the Rust extension `quicether._core` (built by maturin from core/py)."""

from typing import Any

class DelayLine:
    """A userspace delay line on an existing TUN device (the lab's netem replacement)."""

    def __init__(self, tun_name: str, delay_us: int = 0, jitter_us: int = 0) -> None: ...
    def set(self, delay_us: int, jitter_us: int) -> None: ...
    def stats(self) -> dict[str, int]: ...
    def close(self) -> None: ...

def core_version() -> str: ...

ClassArg = tuple[int | None, int | None, int | None, str]  # protocol, port, dscp, mode
PeerArg = tuple[bytes, str | None, list[str], str, str, list[ClassArg]]
WanArg = tuple[str, str | None, str, bool, int]  # name, device, local address, backup, fwmark (0: none)

class Node:
    """A running QuicEther node: QUIC endpoints, peers and their paths, TUN device, packet loops (Rust)."""

    def __init__(
        self,
        listen: str,
        tun_name: str,
        path_mtu: int,
        seed: bytes,
        peers: list[PeerArg],
        notify_fd: int | None = None,
        wans: list[WanArg] | None = None,
        congestion: str = "loss-tolerant",
    ) -> None: ...
    def add_peer(self, key: bytes, endpoints: list[str], allowed_ips: list[str], mode: str, realtime_mode: str,
                 classes: list[ClassArg]) -> None:
        """Adds a peer while the node runs; ValueError if the key is already there or an argument is bad."""
    def update_peer(self, key: bytes, endpoints: list[str], allowed_ips: list[str], mode: str, realtime_mode: str,
                    classes: list[ClassArg]) -> None:
        """Changes a peer in place (paths stay up; new endpoints redial); KeyError if unknown."""
    def remove_peer(self, key: bytes) -> bool:
        """Closes the peer's paths, drops its allowed IPs, refuses its key from now on; False if unknown."""
    def add_wan(self, wan: WanArg) -> None: ...
    def remove_wan(self, name: str) -> bool: ...
    def public_key(self) -> bytes: ...
    def local_addr(self) -> str: ...
    def inner_mtu(self) -> int: ...
    def no_route_drops(self) -> int: ...
    def refused_handshakes(self) -> int:
        """Handshakes refused by key pinning so far; their events are rate-limited, this counts every one."""
    def peers(self) -> list[dict[str, Any]]: ...
    def events(self) -> list[dict[str, Any]]: ...
    def close(self) -> None: ...

def generate_seed() -> bytes: ...
def public_key_of_seed(seed: bytes) -> bytes: ...
def sign(seed: bytes, message: bytes) -> bytes:
    """Ed25519 signature (64 bytes) of `message` with a 32-byte key seed; ValueError if the seed is not 32 bytes."""
def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True if `signature` is `public_key`'s Ed25519 signature of `message`; False otherwise (bad lengths too)."""

# Membership (core/proto/src/membership.rs has the wire formats). A refusal is a ValueError whose message
# is "certificate refused: CAUSE" (or "revocation refused: CAUSE"), CAUSE one of "malformed: <why>",
# "foreign network: …", "bad signature", "not yet valid", "expired", "revoked". Bad fields when issuing
# are ValueErrors naming the field. Times are Unix seconds; the window has a 600 s clock tolerance.
def issue_certificate(network_seed: bytes, node_key: bytes, name: str, ipv4: str, overlay: str, groups: list[str],
                      lan_prefixes: list[str], exit: bool, not_before: int, not_after: int) -> bytes:
    """A membership certificate signed by the network key (name/groups: 1-32 of a-z 0-9 -, ≤ 8 groups,
    ≤ 16 canonical LAN prefixes; overlay a /10../16 inside 100.64.0.0/10 holding the host address ipv4)."""
def read_certificate(data: bytes, network_key: bytes, now: int, revoked: list[bytes] | None = None) -> dict[str, Any]:
    """Verifies a certificate of this network at `now`: dict with version, network (bytes), node_key (bytes),
    name, ipv4, overlay ("100.64.0.0/16"), ipv6 (the ULA derived from both keys), groups, lan_prefixes,
    exit, not_before, not_after."""
def issue_revocation(network_seed: bytes, node_key: bytes, revoked_at: int, sequence: int) -> bytes: ...
def read_revocation(data: bytes, network_key: bytes) -> dict[str, Any]:
    """Verifies a revocation of this network: dict with version, network, node_key, revoked_at, sequence."""

# Discovery records (wire formats in core/proto/src/record.rs). A record dict, as publish takes it and
# lookup returns it (lookup adds node_key: bytes and seq: int):
#   {"expires_at": int (Unix s),
#    "endpoints": [{"wan": str (1-32 of A-Za-z0-9._-), "kind": "public" | "reflexive" | "mapped",
#                   "addr": "ip:port"}, …] (≤ 12),
#    "lan": ["ip:port", …] (≤ 8), "relays": [node key (32 bytes), …] (≤ 4)}
class Discovery:
    """A member's node in the mainline DHT (BEP 44 records signed with its node key, salted and sealed
    with keys derived from the network key). bootstrap None: the public mainline DHT; []: none. server
    False: only asks, never answers. At most 8 lookups in flight, one publish per second."""

    def __init__(self, port: int, bootstrap: list[str] | None, server: bool, seed: bytes, network_key: bytes,
                 *, bind: str | None = None) -> None: ...
    def publish(self, record: dict[str, Any]) -> None:
        """Seals and publishes; seq is Unix milliseconds (one more than the last if the clock has not
        moved on). ValueError for a bad record, OSError if no DHT node stored it."""
    def lookup(self, node_key: bytes, timeout_s: float) -> dict[str, Any] | None:
        """The newest record of node_key passing signature, replay, membership, format and expiry
        checks, or None. OSError if 8 lookups stayed in flight for the whole timeout."""
    def counters(self) -> dict[str, int]:
        """published, publish_failed, lookups, found, not_found, busy; refusals: bad_signature, replay,
        expired, non_member, malformed."""
    def local_addr(self) -> str: ...
    def node_key(self) -> bytes: ...
    def close(self) -> None: ...

class LanDiscovery:
    """Announces this member on the LAN with mDNS (`_quicether._udp.local.`, TXT k = node key hex, n = the
    network's LAN tag derived from the network key) and browses for the others. Announcements are
    candidates to dial, never trusted: the QUIC handshake decides. interfaces None: all but loopback."""

    def __init__(self, network_key: bytes, node_key: bytes, port: int, addresses: list[str],
                 interfaces: list[str] | None = None) -> None: ...
    def members(self) -> list[dict[str, Any]]:
        """Other members announced on the LAN, newest first: node_key (bytes), addrs (["ip:port"]), age_s."""
    def counters(self) -> dict[str, int]:
        """resolved, foreign_network, malformed, full (at most 256 candidates are kept)."""
    def close(self) -> None: ...
