//! What the core tells the daemon, as typed events (drained by `Node::drain_events`, woken through the
//! notify fd). Past-tense facts; every string in them that came from the network is already made safe
//! (`quicether_proto::peer_text`).

use std::net::SocketAddr;

use crate::peer::PathRoute;

/// Why a path came up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpReason {
    /// A new connection finished its handshake and hello.
    Connected,
    /// A path marked down by its health check answers probes again.
    Recovered,
}

/// Why a path went down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownReason {
    /// No probe replies for max(3 × RTT, 300 ms): unusable, but its connection stays and it may recover.
    Silent,
    /// Its connection closed (by the peer, a timeout or a reset; `detail` says which).
    Closed,
    /// Its WAN was removed here.
    WanRemoved,
    /// Another path over the same pair of WANs stays instead.
    Duplicate,
    /// Its peer was removed here.
    PeerRemoved,
    /// The node is stopping.
    NodeStopping,
}

impl UpReason {
    pub fn name(self) -> &'static str {
        match self {
            UpReason::Connected => "connected",
            UpReason::Recovered => "recovered",
        }
    }
}

impl DownReason {
    pub fn name(self) -> &'static str {
        match self {
            DownReason::Silent => "silent",
            DownReason::Closed => "closed",
            DownReason::WanRemoved => "wan_removed",
            DownReason::Duplicate => "duplicate",
            DownReason::PeerRemoved => "peer_removed",
            DownReason::NodeStopping => "node_stopping",
        }
    }
}

/// Something that happened which the daemon should log or act on.
#[derive(Clone, Debug)]
pub enum Event {
    PeerAdded {
        key: [u8; 32],
    },
    PeerRemoved {
        key: [u8; 32],
    },
    /// A peer with no configured key was let in by its membership certificate of our network (now a peer
    /// of the table, routed to its overlay addresses and the LAN prefixes the certificate names).
    MemberAdmitted {
        key: [u8; 32],
        certificate: Vec<u8>,
    },
    /// A peer told us (or showed in its handshake) the certificate of a member we did not know, or a
    /// renewal of one we knew: one to look up and dial. Verified for our network; passed on to our other
    /// peers.
    MemberLearned {
        key: [u8; 32],
        certificate: Vec<u8>,
    },
    /// A certificate of this node that expires later than its own (a renewal by the admin node) came as
    /// member news; verified for our network. The daemon keeps it and shows it (`Node::set_membership`).
    MembershipRenewed {
        certificate: Vec<u8>,
    },
    /// A peer told us a revocation we did not hold: already refused in handshakes here; the daemon keeps
    /// it and cuts the member off (`Node::set_network`). Verified; passed on to our other peers.
    RevocationLearned {
        key: [u8; 32],
        revocation: Vec<u8>,
    },
    /// A node showing pending invite key `invite` asks to be certified as member `name` (its request is
    /// signed by `node`), routing `lan_prefixes` (canonical IPv4, at most `join::MAX_LAN_PREFIXES`: the
    /// daemon decides whether it grants them). The daemon answers with `Node::answer_join(id, …)` within
    /// 10 s. `name` is a-z, 0-9 and - only (empty: the invite's name).
    JoinRequested {
        id: u64,
        invite: [u8; 32],
        node: [u8; 32],
        name: String,
        lan_prefixes: Vec<quicether_proto::allowed_ips::Prefix>,
    },
    /// The peer's first path came up.
    PeerConnected {
        key: [u8; 32],
    },
    /// The peer's last path closed.
    PeerDisconnected {
        key: [u8; 32],
        reason: String,
    },
    PathUp {
        key: [u8; 32],
        route: PathRoute,
        remote: SocketAddr,
        reason: UpReason,
    },
    PathDown {
        key: [u8; 32],
        route: PathRoute,
        reason: DownReason,
        detail: String,
    },
    /// A handshake was refused (key not pinned, path unfit). Rate-limited; `Node::refused_handshakes` counts all.
    HandshakeRefused {
        key: Option<[u8; 32]>,
        reason: String,
    },
    /// A WAN's port mapping on its home router changed: made, renewed at another address, lost, or
    /// refused or unusable (`detail` says which; reported on change only, never per retry).
    PortMapping {
        wan: String,
        detail: String,
    },
    /// Dialing a peer from a WAN failed (reported when the reason changes, not on every retry).
    DialFailed {
        key: [u8; 32],
        wan: String,
        reason: String,
    },
    /// The TCP lane's news: a refused connection, the connection cap reached (rate-limited in `lane.rs`).
    Lane {
        detail: String,
    },
    /// A lane connection to peer `key` fell back to plain TCP (MPTCP stripped on the way): the daemon sends
    /// the peer's TCP through the QUIC bond for a while.
    LaneFallback {
        key: [u8; 32],
        detail: String,
    },
    /// Reading the TUN device failed: no packet leaves this node any more. Fatal; the daemon must exit
    /// (non-zero, so its supervisor restarts it).
    TunFailed {
        error: String,
    },
}
