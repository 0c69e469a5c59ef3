"""Type stub for the Rust extension `quicether._core` (built by maturin from core/py).

`Node.peers()` returns one dict per peer: key (bytes), endpoint, connected, rtt_ms, last_handshake (unix s or
None), tx/rx packets, bytes and dropped, retransmitted, punch_attempts (punches towards it this node took part
in, initiated or answered), reorder (dict of counters and timeout_ms) and paths,
one dict per path:

    wan          str    the WAN to show: ours if we dialed the path, else the one the peer dialed from
    local_wan    str    our WAN the path runs over ("default": the listening socket of a node without WANs);
                        remove_wan(name) closes exactly the paths whose local_wan is name
    peer_wan     str | None   the peer's WAN as it named it (only [A-Za-z0-9._-], at most 32), if it said
    kind         str    "direct" (today), "punched" or "relayed"
    via          bytes | None the relaying node's key when kind is "relayed"
    origin       str    "dialed" (by us) or "accepted"
    delivery_rate_bps  int  what the path's acks show it delivers (bits/s; little while the bond uses it little)
    min_rtt_ms   float  its RTT without queues (expiring minimum: follows a base RTT that grew for good)
    local, public, remote, up, backup, rtt_ms, loss, tx/rx_bytes, tx/rx_rate_bps, cwnd_bytes, queued_bytes

`Node.events()` drains events, dicts with these fields for every kind:

    kind    str           one of the kinds below
    key     bytes | None  the peer's node key (None for tun_failed, and for a refused certificate without key)
    wan     str | None    the path's WAN as in the path dict's "wan" (path events, dial_failed)
    detail  str           human-readable; text from the network in it is escaped and bounded

and per kind:

    peer_added, peer_removed   the peer table changed (add_peer / remove_peer, or the constructor's peers)
    member_admitted            + certificate (bytes): a node with no configured key was let in by its
                               membership certificate of our network (set_network) and is now a peer
    member_learned             + certificate (bytes): a member we did not know, or a renewal (a later expiry)
                               of one we knew, told by a peer (verified)
    membership_renewed         + certificate (bytes): a renewal of this node's own certificate, told by a peer
                               or by tell_members (verified for the network; no key). Show it: set_membership
    revocation_learned         + revocation (bytes): a revocation we did not hold, told by a peer (verified,
                               already refused in handshakes; set_network with it cuts the member off)
    peer_connected             the peer's first path came up
    peer_disconnected          its last path closed; detail: "<reason>: <error>"
    path_up                    + local_wan, peer_wan, path_kind, via, origin, remote (as in the path dict);
                               reason: "connected" (new connection) or "recovered" (answers probes again);
                               detail: the remote address
    path_down                  + the same route fields; reason: "silent" (no probe replies; the connection
                               stays and may recover), "closed" (by the peer, timeout or reset), "wan_removed",
                               "duplicate" (another path over the same pair of WANs stays), "peer_removed",
                               "node_stopping"
    handshake_refused          a key not pinned, or a path unfit for the tunnel MTU. Rate-limited (once per key
                               per minute, at most 5/s); refused_handshakes() counts every refusal
    dial_failed                dialing from WAN "wan" failed; reported when the reason changes
    join_requested             key: a pending invite's key (set_invites); + id (int), node (bytes): a node asks
                               to be certified as member `detail` ("" : the invite's name), its request signed
                               by `node`. Answer with answer_join(id, …) within 10 s
    tun_failed                 reading the TUN device failed: no packet leaves the node any more. Fatal: the
                               daemon must log it and exit non-zero (its supervisor restarts it)
    lane                       the TCP lane refused a connection or reached its connection cap (detail)
    lane_fallback              key: 3 lane connections in a row to that peer fell back to plain TCP (MPTCP
                               stripped on the way); they are still carried
"""

from typing import Any

def core_version() -> str: ...
def cipher() -> tuple[str, str]:
    """The AEAD this process prefers for its paths and lane ("aes-gcm" or "chacha20-poly1305") and why: by
    the CPU's AES instructions, or QUICETHER_CIPHER ("aes" or "chacha20")."""

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
        membership: bytes | None = None,
        io_threads: int | None = None,
    ) -> None: ...
    def add_peer(self, key: bytes, endpoints: list[str], allowed_ips: list[str], mode: str, realtime_mode: str,
                 classes: list[ClassArg], member_only: bool = False) -> None:
        """Adds a peer while the node runs; ValueError if the key is already there or an argument is bad.
        member_only: its handshakes (both ways) must show a valid certificate of our network; not pinned."""
    def update_peer(self, key: bytes, endpoints: list[str], allowed_ips: list[str], mode: str, realtime_mode: str,
                    classes: list[ClassArg]) -> None:
        """Changes a peer in place (paths stay up; new endpoints redial); KeyError if unknown."""
    def remove_peer(self, key: bytes) -> bool:
        """Closes the peer's paths, drops its allowed IPs, refuses its key from now on; False if unknown."""
    def add_wan(self, wan: WanArg) -> None: ...
    def remove_wan(self, name: str) -> bool: ...
    def set_network(self, network_key: bytes | None, revocations: list[bytes], mode: str, realtime_mode: str,
                    classes: list[tuple[int | None, int | None, int | None, str]]) -> list[bytes]:
        """Admits peers by a valid certificate of this network; removes admitted members no longer valid."""
    def recheck_members(self) -> list[bytes]:
        """Removes admitted members whose certificate expired or was revoked since; returns their keys."""
    def member_news(self) -> tuple[int, int]:
        """(members learned from peers, news items refused: bad signature, foreign, expired or malformed)."""
    def tell_members(self, certificates: list[bytes]) -> int:
        """Tells every peer these renewed certificates as member news (each checked); returns how many were new."""
    def set_membership(self, certificate: bytes) -> None:
        """Shows this node's renewed membership certificate in every handshake from now on (paths stay up)."""
    def set_invites(self, keys: list[bytes]) -> None:
        """The keys of the invites pending on this admin node: a handshake with one is a join request."""
    def answer_join(self, id: int, certified: bool, body: bytes) -> bool:
        """Answers join request `id` (the certificate bytes, or the refusal's reason); False if it timed out."""
    def public_key(self) -> bytes: ...
    def local_addr(self) -> str: ...
    def inner_mtu(self) -> int: ...
    def tun_offloads(self) -> tuple[str, int]: ...
    def io_threads(self) -> tuple[int, str]:
        """(threads carrying packets, why that many: set by node.io_threads, or the default)."""
    def no_route_drops(self) -> int: ...
    def udp_batching(self) -> tuple[int, int, int, int]:
        """(UDP send calls, datagrams sent, receive calls, datagrams received) over every QUIC socket."""
    def set_relay(self, enabled: bool, rate_mbit: float = 50.0) -> None:
        """Relays for the members of our network (or stops), each member at most `rate_mbit` Mbit/s."""
    def relay_stats(self) -> dict[str, int]:
        """{enabled (0/1), rate_bytes_per_s, forwarded_packets/bytes, dropped_* by cause (disabled, not_member,
        no_route, malformed, rate, queue, chained), and through relays: sent_packets, received_packets,
        received_dropped, dials}."""
    def record_relays(self) -> list[bytes]:
        """The relays to name in our DHT record (node keys): members that offered to relay for us and that
        we have a path to, the fastest 4, in key order."""
    def set_named_relays(self, key: bytes, relays: list[bytes]) -> None:
        """The relays member `key`'s DHT record names: a relayed dial to it goes through one of them when
        we have a path to one (else through any relay that offered). Ignored for a key not in the table."""
    def punch_stats(self) -> dict[str, int]:
        """Hole punching: attempts (punches this node took part in), successes (punched paths up),
        forwarded (requests relayed for other members), refused (punch messages refused), skipped (punches
        not tried: both NATs allocate ports at random, the relay carries the pair); birthday probes between a
        random symmetric NAT and an open one: probes_sent (probes sent as the open side), probe_sockets (extra
        sockets opened as the random side), probe_hits and probe_misses (probes that found a mapping, or whose
        time cap passed without one)."""
    def map_port(self, wan: str, gateway: str) -> None:
        """Maps the UDP port of WAN `wan`'s socket ("default": the listen socket of a node without WANs) on
        the WAN's IPv4 gateway with PCP, NAT-PMP or UPnP-IGD, renewed until the WAN is removed or the node stops (then
        deleted). OSError: no such WAN, or its request socket cannot be made; ValueError: not IPv4."""
    def port_mappings(self) -> list[dict[str, Any]]:
        """Per WAN with port mapping on: wan, protocol, gateway, internal_port, external ("ip:port" or
        None), expires_in_s (None when unmapped), problem (why there is no mapping, None while mapped)."""
    def nat_types(self) -> dict[str, str]:
        """{WAN (or "default"): the NAT its socket is behind, in words}, from what the peers it dialed see."""
    def start_lane_gateway(self, listen: str, max_connections: int) -> None:
        """TCP lane, gateway end: MPTCP + TLS listener on `listen` ("addr:port") for pinned peers and members."""
    def start_lane_site(self, key: bytes, listen: str, peer_lane: str, max_connections: int) -> None:
        """TCP lane, site end for peer `key`: connections TPROXY'd to `listen` are carried to `peer_lane`."""
    def set_lane_policy(self, rules: list[tuple[bool, list[str], list[str], int | None, int | None]],
                        default_deny: bool, sites: list[str], tun: str, lan: str | None, outside: list[str]) -> None:
        """The ACLs the lane's gateway end judges each connection by: rules in order (allow, sources,
        destinations, protocol, port; [] is any address), and acl_default "deny" for destinations in `sites`;
        the ports as the firewall has them (a router's `lan`), which decide where a connection keeps the LAN
        host's address (out of a port the firewall does not masquerade the tunnel's traffic out of)."""
    def stop_lanes(self) -> None: ...
    def lane_stats(self) -> dict[str, int]:
        """{site_|gateway_}{connections, active, bytes_out, bytes_in, refused, failed, at_cap, fallback,
        missed_wakeups, stuck_resets}."""
    def handshake_load(self) -> tuple[int, int]:
        """(incoming handshakes answered with a QUIC Retry under load, dropped beyond the limit in flight)."""
    def refused_handshakes(self) -> int:
        """Handshakes refused by key pinning so far; their events are rate-limited, this counts every one."""
    def peers(self) -> list[dict[str, Any]]: ...
    def events(self) -> list[dict[str, Any]]: ...
    def close(self) -> None: ...

def generate_seed() -> bytes: ...
def request_join(invite_seed: bytes, admin_key: bytes, endpoints: list[str], node_seed: bytes, name: str,
                 lan_prefixes: list[str] = ..., timeout_s: float = 10.0) -> tuple[bool, bytes | str]:
    """Asks the admin node for a membership certificate with an invite, routing `lan_prefixes` if the admin
    grants them: (True, answer) or (False, reason); OSError if no endpoint answered or the admin refused the
    invite's key in the handshake."""
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
def read_certificate(data: bytes, network_key: bytes, now: int | None,
                     revoked: list[bytes] | None = None) -> dict[str, Any]:
    """Verifies a certificate of this network at `now` (None: at any time, its validity window unchecked):
    dict with version, network (bytes), node_key (bytes), name, ipv4, overlay ("100.64.0.0/16"), ipv6 (the
    ULA derived from both keys), groups, lan_prefixes, exit, not_before, not_after."""
def issue_revocation(network_seed: bytes, node_key: bytes, revoked_at: int, sequence: int) -> bytes: ...
def member_ula(network_key: bytes, node_key: bytes) -> str:
    """The IPv6 ULA of a member (derived from the two 32-byte keys; ValueError for other lengths)."""
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
                 *, bind: str | None = None, serve_on: list[str] | None = None) -> None:
        """serve_on (with server and a fixed port): one serving DHT node bound to each of these IPv4
        addresses, each answering from the address it was asked at, and this node's own lookups and
        publishes through a read-only client node on a free port. None or []: one node, bound to bind."""
    def publish(self, record: dict[str, Any]) -> None:
        """Seals and publishes; seq is Unix milliseconds (one more than the last if the clock has not
        moved on). ValueError for a bad record, OSError if no DHT node stored it."""
    def lookup(self, node_key: bytes, timeout_s: float) -> dict[str, Any] | None:
        """The newest record of node_key passing signature, replay, membership, format and expiry
        checks, or None. OSError if 8 lookups stayed in flight for the whole timeout."""
    def counters(self) -> dict[str, int]:
        """published, publish_failed, lookups, found, not_found, busy; refusals: bad_signature, replay,
        expired, non_member, malformed; server mode: server_answered, server_refused_source_rate,
        server_refused_total_rate, server_sources (source addresses tracked, at most 1024)."""
    def local_addr(self) -> str: ...
    def serving(self) -> list[str]:
        """Where this node answers other DHT nodes, "ip:port" each; [] when it does not serve."""
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
