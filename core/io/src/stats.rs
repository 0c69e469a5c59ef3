//! What `Node::peer_stats` reports of each peer and its paths, for `quicether status` and the metrics.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use quicether_proto::path_rank::PathKind;
use quicether_proto::reorder::ReorderStats;

pub struct PathStats {
    /// The WAN to show: ours if we dialed the path, else the one the peer dialed from.
    pub wan: String,
    /// Our WAN the path runs over (`DEFAULT_SOURCE`: the listening socket) and the peer's, if it said.
    pub local_wan: String,
    pub peer_wan: Option<String>,
    pub kind: PathKind,
    pub dialed: bool,
    pub local: Option<IpAddr>,
    /// Our address as the peer sees it (NAT), when it told us.
    pub public: Option<SocketAddr>,
    pub remote: SocketAddr,
    pub up: bool,
    pub backup: bool,
    pub rtt: Duration,
    pub loss: f64,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub tx_rate_bps: u64,
    pub rx_rate_bps: u64,
    /// The path's congestion window and what waits in its send queue (bytes): why a path carries what it does.
    pub cwnd: u64,
    pub queued: u64,
    /// Delivery rate from the acks (bits/s) and the expiring minimum RTT the scheduler counts with.
    pub delivery_rate_bps: u64,
    pub min_rtt: Duration,
}

/// Per-peer numbers for `quicether status`.
pub struct PeerStats {
    pub key: [u8; 32],
    pub endpoint: Option<SocketAddr>,
    pub connected: bool,
    pub rtt: Option<Duration>,
    pub last_handshake: Option<SystemTime>,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub drops: PeerDrops,
    pub retransmitted: u64,
    /// Punches towards the peer this node took part in (initiated or answered).
    pub punch_attempts: u64,
    pub paths: Vec<PathStats>,
    pub reorder: ReorderStats,
    pub reorder_timeout: Duration,
}

/// What a peer's bond dropped, by cause (`Peer::drops`): the limits' counters of the send side.
pub struct PeerDrops {
    /// Outbound packets dropped, all causes: the three below.
    pub tx: u64,
    /// No path to the peer at all.
    pub tx_no_path: u64,
    /// Every path's send queue was at its limit (the scheduler's time-based bound).
    pub tx_queue_full: u64,
    /// quinn refused every copy (the connection closing, or too large for the path).
    pub tx_refused: u64,
    /// Inbound packets dropped: no frame, source outside the allowed IPs, TUN write failed.
    pub rx: u64,
    /// Frames the resend memory forgot before its window ended, for its byte bound.
    pub resend_evicted: u64,
}

impl crate::node::Node {
    /// Per local socket that dials (each WAN's, or the listening one): the NAT mapping it is behind, told
    /// from the addresses the peers it dialed see it at (`quicether_proto::nat`).
    pub fn nat_mappings(&self) -> Vec<(String, quicether_proto::nat::Mapping)> {
        use quicether_proto::nat::{classify, Observation};
        let sockets: Vec<(String, SocketAddr)> = {
            let sources = self.sources.lock().unwrap();
            sources
                .iter()
                .filter_map(|(wan, s)| {
                    let bound = s.endpoint.local_addr().ok()?;
                    Some((wan.clone(), s.local.map_or(bound, |ip| SocketAddr::new(ip, bound.port()))))
                })
                .collect()
        };
        let mut paths: Vec<(u64, String, Observation)> = Vec::new();
        for peer in self.shared.table.read().unwrap().peers() {
            for path in peer.paths.read().unwrap().iter().filter(|p| p.route.dialed) {
                if let Some(observed) = path.public {
                    paths.push((
                        path.id,
                        path.route.local_wan.clone(),
                        Observation { remote: path.route.remote, observed },
                    ));
                }
            }
        }
        paths.sort_by_key(|(id, _, _)| *id);
        let mut mappings: Vec<(String, quicether_proto::nat::Mapping)> = sockets
            .into_iter()
            .map(|(wan, local)| {
                let seen: Vec<Observation> = paths.iter().filter(|(_, w, _)| *w == wan).map(|(_, _, o)| *o).collect();
                (wan, classify(local, &seen))
            })
            .collect();
        mappings.sort_by(|a, b| a.0.cmp(&b.0));
        mappings
    }
}
