//! Peers and their paths. A peer is a node key; a path is one authenticated QUIC connection to it from
//! one local WAN. Packets of a peer carry one bond sequence and go out on whichever path the scheduler
//! picks; they come back together in the peer's reorder buffer. Peers come and go while the node runs
//! (`peers.rs` holds the table): every task that works for a peer holds its `Arc<Peer>`, and a removed
//! peer is marked so that no path is added to it afterwards.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use quicether_proto::allowed_ips::Prefix;
use quicether_proto::bond::BondReceiver;
use quicether_proto::bond_send::BondSender;
use quicether_proto::classify::Rule;
use quicether_proto::health::PathHealth;
use quicether_proto::path_rank::{self, PathKind, PathRank};
use quicether_proto::scheduler::{queue_limit_bytes, Mode, PathView};
use tokio::sync::Notify;

pub use crate::events::Event;
use crate::events::{DownReason, UpReason};
use crate::peers::PeerTable;
use crate::stats::PeerDrops;

/// Per-path hard bound of quinn's datagram send queue (it drops the oldest beyond it). Large enough for
/// Gbit/s bursts on one path (measured: 512 KiB cost a quarter of single-path throughput); the scheduler
/// keeps multi-path queues far shorter with its time-based limit (`queue_limit_bytes`).
pub const DATAGRAM_SEND_BUFFER: usize = 2 << 20;
/// Packets the reorder buffer may hold per peer before it skips a gap (bounded memory).
pub const REORDER_MAX_PACKETS: usize = 4096;

pub struct PeerConfig {
    pub key: [u8; 32],
    /// Where the peer listens (dialed from every WAN); empty: it dials us.
    pub endpoints: Vec<SocketAddr>,
    pub allowed_ips: Vec<Prefix>,
    pub policy: PeerPolicy,
    /// Dial it only if it shows a valid membership of our network in the handshake: its key came from an
    /// unauthenticated LAN announcement, not from a certificate or the config.
    pub member_only: bool,
}

/// How a peer's packets are scheduled; changes in place while its paths stay up.
#[derive(Clone, Debug)]
pub struct PeerPolicy {
    pub bulk_mode: Mode,
    pub realtime_mode: Mode,
    pub rules: Vec<Rule>,
}

#[derive(Default)]
pub struct Counters {
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Outbound packets dropped: no path at all, every send queue at its limit, or quinn refused them.
    pub tx_dropped: AtomicU64,
    /// Of `tx_dropped`: every path's send queue was at its limit (the scheduler's `Congested`).
    pub tx_queue_full: AtomicU64,
    /// Of `tx_dropped`: quinn refused every copy (the connection closing, or too large for the path).
    pub tx_refused: AtomicU64,
    /// Inbound packets dropped: source outside the peer's allowed IPs, full reorder queue, TUN write failed.
    /// Datagrams that were no frame are counted by the bond receiver (`BondReceiver::dropped`); peer stats
    /// report the sum.
    pub rx_dropped: AtomicU64,
    /// DATA frames resent because the peer reported them lost.
    pub retransmitted: AtomicU64,
}

impl Counters {
    pub fn count(packets: &AtomicU64, bytes: &AtomicU64, len: usize) {
        packets.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(len as u64, Ordering::Relaxed);
    }
}

/// How a path reaches the peer.
#[derive(Clone, Debug)]
pub struct PathRoute {
    pub kind: PathKind,
    /// Our WAN the path runs over: the WAN socket it was dialed from or accepted on, or the WAN at whose
    /// address the listening socket accepted it; `DEFAULT_SOURCE` for the listening socket otherwise.
    /// Paths are keyed by (peer, this): removing a WAN closes exactly these.
    pub local_wan: String,
    /// The peer's WAN, as it named it (made safe); None if it did not say.
    pub peer_wan: Option<String>,
    /// The endpoint we dialed, or the address the peer dialed us from.
    pub remote: SocketAddr,
    /// We dialed it (else the peer did).
    pub dialed: bool,
}

impl PathRoute {
    /// The WAN name to show for this path: ours when we dialed, else the one the peer dialed from (what
    /// an operator of either node recognises as "the link").
    pub fn label(&self) -> &str {
        match (&self.peer_wan, self.dialed) {
            (Some(theirs), false) => theirs,
            _ => &self.local_wan,
        }
    }
}

pub struct Path {
    pub id: u64,
    pub route: PathRoute,
    /// Set when we closed this path because another one over the same WANs won.
    pub closed_as_duplicate: AtomicBool,
    /// Why we closed it, if we did (reported when its reader ends).
    pub closing: Mutex<Option<DownReason>>,
    /// Either end's WAN is a backup.
    pub backup: bool,
    /// Our address on this path (the WAN's), if known.
    pub local: Option<std::net::IpAddr>,
    /// The address the peer sees us at (after the ISP's NAT), from its path hello answer; dialed paths only.
    pub public: Option<std::net::SocketAddr>,
    pub conn: quinn::Connection,
    pub health: Mutex<PathHealth>,
    pub up: AtomicBool,
    /// Scheduler inputs refreshed by the path timer (reading quinn's stats per packet would be costly).
    pub srtt_us: AtomicU64,
    /// The path's RTT without queues: the expiring minimum of its RTT samples.
    pub min_rtt_us: AtomicU64,
    /// Delivery rate from the acks (bits/s).
    pub rate_bps: AtomicU64,
    /// cwnd / smoothed RTT (bits/s): how fast the congestion controller lets the path send now.
    pub window_rate_bps: AtomicU64,
    pub counters: Counters,
    /// Measured throughput (bits/s) over the last second, for status.
    pub tx_rate_bps: AtomicU64,
    pub rx_rate_bps: AtomicU64,
}

impl Path {
    pub fn view(&self) -> PathView {
        let rate_bps = self.rate_bps.load(Ordering::Relaxed);
        let window_rate_bps = self.window_rate_bps.load(Ordering::Relaxed);
        PathView {
            rank: PathRank { up: self.up.load(Ordering::Relaxed), backup: self.backup, kind: self.route.kind },
            srtt_us: self.srtt_us.load(Ordering::Relaxed),
            min_rtt_us: self.min_rtt_us.load(Ordering::Relaxed),
            rate_bps,
            window_rate_bps,
            queued_bytes: (DATAGRAM_SEND_BUFFER - self.conn.datagram_send_buffer_space().min(DATAGRAM_SEND_BUFFER))
                as u64,
            queue_limit: queue_limit_bytes(
                window_rate_bps,
                crate::debug::queue_budget_us(),
                DATAGRAM_SEND_BUFFER as u64,
            ),
        }
    }

    /// Hands a DATA frame to quinn (the caller keeps a clone of it, to record it); counted in this path's
    /// tx counters if quinn took it.
    pub fn send_data(&self, datagram: Bytes) -> bool {
        let len = datagram.len();
        if self.conn.send_datagram(datagram).is_err() {
            return false;
        }
        Counters::count(&self.counters.tx_packets, &self.counters.tx_bytes, len);
        true
    }

    /// Closes the connection, remembering why for the path-down event.
    pub fn close(&self, reason: DownReason, code: u32, text: &[u8]) {
        self.closing.lock().unwrap().get_or_insert(reason);
        self.conn.close(code.into(), text);
    }
}

pub struct Peer {
    pub key: [u8; 32],
    pub policy: RwLock<PeerPolicy>,
    /// Endpoints the dialers use (for status while no path is up).
    pub endpoints: RwLock<Vec<SocketAddr>>,
    pub paths: RwLock<Vec<Arc<Path>>>,
    /// Set (under the paths lock) when the peer is removed: a handshake that completes afterwards must not
    /// add a path to it.
    pub removed: AtomicBool,
    /// The send side of the bond (`quicether_proto::bond_send`): sequence numbers, DATA framing and what
    /// the paths sent lately (found by sequence for NACKs, by path when one fails: late beats lost for
    /// TCP). `send.rs` drives it; it is locked twice per packet (number and frame; record what quinn
    /// took), never across a hand-over to quinn.
    pub sender: Mutex<BondSender>,
    /// The receive side of the bond (`quicether_proto::bond`): path readers hand it their datagrams
    /// directly (no hop to another task on the packet path); the reorder timer only handles its deadlines.
    pub bond: Mutex<BondReceiver>,
    /// Wakes the reorder timer when the bond receiver's next deadline moved earlier (`timeout_moved_earlier`).
    pub reorder_wake: Notify,
    /// Held while writing released packets to the TUN. Taken before the bond lock is let go, so
    /// batches reach the TUN in the order the buffer released them: path readers run on several
    /// threads, and without it a reader writing a long run could be overtaken by one releasing the
    /// next packets (measured: ~180 spurious fast retransmits per 8 s in the inner TCP).
    pub delivery: Mutex<()>,
    pub last_handshake: Mutex<Option<SystemTime>>,
    pub counters: Counters,
    /// The membership certificate it was admitted by (no configured key); None for a configured peer.
    pub member: Option<Vec<u8>>,
    /// See `PeerConfig::member_only` (fixed when the peer is added).
    pub member_only: bool,
    /// Signalled when one of the peer's paths goes down (but for a duplicate, whose twin carries on): its
    /// dialers that are waiting out a backoff, or a path to their address, or are in a handshake that may be
    /// waiting out a retransmission timer, dial again at once. A WAN that came back during a long backoff is
    /// then used as soon as it is needed, not seconds later.
    pub redial: Notify,
    /// Punches towards this peer this node took part in, initiated or answered (`punch.rs`), for status.
    pub punch_attempts: AtomicU64,
    /// What the peer's close of our last usable path as a duplicate left to send again once its twin is up
    /// here (`Shared::remove_path`): the closed path's id and since when (µs) it sent what may be lost. Set
    /// and taken under the `paths` lock, so a twin added at that moment cannot miss it.
    pub duplicate_resend: Mutex<Option<(u64, u64)>>,
}

/// Why `Shared::add_path` did not add a path (its connection is closed).
#[derive(Debug, PartialEq, Eq)]
pub enum NotAdded {
    PeerRemoved,
    Duplicate,
}

/// Which of two paths over the same pair of WANs to close, deciding the same way on both nodes: the one
/// dialed by the node with the higher key (so the lower key's dial survives). If one node dialed both, the
/// old one: a node dials only where it has no path, so its new dial says the old path is dead on its side,
/// as when it restarted (SIGKILL, crash) while the other side still held its connection; keeping the old one
/// would refuse every new dial until that dead connection timed out. True: close `new`, else `old`.
pub fn duplicate_loser(our_key: &[u8; 32], peer_key: &[u8; 32], old_dialed: bool, new_dialed: bool) -> bool {
    if old_dialed == new_dialed {
        return false;
    }
    let we_are_lower = our_key < peer_key;
    // The survivor is the path dialed by the lower key: ours (dialed) if we are lower.
    new_dialed != we_are_lower
}

impl Peer {
    /// True if a path runs between our WAN `local_wan` and the peer's WAN `peer_wan`.
    pub fn has_path_between(&self, local_wan: &str, peer_wan: Option<&str>) -> bool {
        self.paths
            .read()
            .unwrap()
            .iter()
            .any(|p| p.route.local_wan == local_wan && p.route.peer_wan.as_deref() == peer_wan)
    }

    /// True if a path that is up runs from our WAN `local_wan` to the peer's address `remote` (one we dialed
    /// there, or one the peer dialed from there, as a punched path is).
    pub fn has_path_to(&self, local_wan: &str, remote: std::net::SocketAddr) -> bool {
        let same =
            |a: std::net::SocketAddr| a.ip().to_canonical() == remote.ip().to_canonical() && a.port() == remote.port();
        self.paths
            .read()
            .unwrap()
            .iter()
            .any(|p| p.route.local_wan == local_wan && same(p.route.remote) && p.up.load(Ordering::Relaxed))
    }

    /// True if a path runs over our WAN `local_wan`.
    pub fn has_path_on(&self, local_wan: &str) -> bool {
        self.paths.read().unwrap().iter().any(|p| p.route.local_wan == local_wan)
    }

    pub fn new(cfg: &PeerConfig, first_seq: u64) -> Peer {
        Peer {
            key: cfg.key,
            policy: RwLock::new(cfg.policy.clone()),
            endpoints: RwLock::new(cfg.endpoints.clone()),
            paths: RwLock::new(Vec::new()),
            removed: AtomicBool::new(false),
            sender: Mutex::new(BondSender::new(first_seq)),
            bond: Mutex::new(BondReceiver::new(REORDER_MAX_PACKETS)),
            reorder_wake: Notify::new(),
            delivery: Mutex::new(()),
            last_handshake: Mutex::new(None),
            counters: Default::default(),
            redial: Notify::new(),
            punch_attempts: AtomicU64::new(0),
            duplicate_resend: Mutex::new(None),
            member: None,
            member_only: cfg.member_only,
        }
    }

    /// What was dropped on the way to and from the peer, by cause; `malformed`: the bond receiver's count
    /// of datagrams that were no frame (`BondReceiver::dropped`).
    pub fn drops(&self, malformed: u64) -> PeerDrops {
        let c = &self.counters;
        let (tx, queue_full, refused) = (
            c.tx_dropped.load(Ordering::Relaxed),
            c.tx_queue_full.load(Ordering::Relaxed),
            c.tx_refused.load(Ordering::Relaxed),
        );
        PeerDrops {
            tx,
            tx_no_path: tx.saturating_sub(queue_full + refused),
            tx_queue_full: queue_full,
            tx_refused: refused,
            rx: c.rx_dropped.load(Ordering::Relaxed) + malformed,
            resend_evicted: self.sender.lock().unwrap().resend_evicted(),
        }
    }

    /// Marks the peer removed and takes its paths (the caller closes them).
    pub fn mark_removed(&self) -> Vec<Arc<Path>> {
        let mut paths = self.paths.write().unwrap();
        self.removed.store(true, Ordering::Relaxed);
        std::mem::take(&mut *paths)
    }

    /// The lowest-RTT path among those that rank first (NACKs go there; repairs go where they arrive first).
    pub fn fastest_path(&self) -> Option<Arc<Path>> {
        let paths = self.paths.read().unwrap();
        paths
            .iter()
            .filter(|p| p.up.load(Ordering::Relaxed))
            .min_by(|a, b| {
                path_rank::compare(&a.view().rank, &b.view().rank)
                    .then(a.srtt_us.load(Ordering::Relaxed).cmp(&b.srtt_us.load(Ordering::Relaxed)))
            })
            .cloned()
    }
}

pub struct Shared {
    /// This node's key (decides which of two duplicate paths stays).
    pub local_key: [u8; 32],
    pub table: RwLock<PeerTable>,
    /// Our mesh network, if any: whose certificates admit a peer that has no configured key.
    pub trust: crate::tls::SharedTrust,
    /// How an admitted member's packets are scheduled (the daemon's defaults).
    pub member_policy: RwLock<PeerPolicy>,
    /// What we know of our network's members and revocations, told to every peer (`member_news.rs`).
    /// Lock order: `trust` before `news`.
    pub news: Mutex<crate::member_news::NewsBook>,
    /// On an admin node: pending invites and the join requests waiting for the daemon (`join.rs`).
    pub joins: crate::join::JoinDesk,
    /// Hole punching: the sockets it dials from, who punched when, its counters (`punch.rs`).
    pub punch: crate::punch::PunchDesk,
    /// Relaying for other members, and our relayed endpoints (`relay.rs`).
    pub relay: crate::relay::RelayDesk,
    /// Port mappings on the WANs' home routers (`portmap.rs`).
    pub portmap: crate::portmap::PortMapDesk,
    /// Our WANs by local address: a path the listening socket accepts at one of these runs over that WAN.
    pub wan_addrs: RwLock<std::collections::HashMap<std::net::IpAddr, String>>,
    pub tun: crate::tun::Tun,
    pub events: Mutex<VecDeque<Event>>,
    pub notify_fd: Option<std::os::fd::RawFd>,
    /// Outbound packets with no peer for their destination.
    pub no_route: AtomicU64,
    /// Incoming handshakes in flight on every socket, and those answered with a Retry or dropped
    /// (`quicether_proto::admission`).
    pub handshakes_in_flight: std::sync::atomic::AtomicUsize,
    pub handshakes_retried: AtomicU64,
    pub handshakes_dropped: AtomicU64,
    pub next_path_id: AtomicU64,
    /// UDP system calls of every QUIC socket and the datagrams they moved (`batching.rs`).
    pub batching: Arc<crate::batching::BatchCounters>,
    pub epoch: Instant,
    /// Largest DATAGRAM we send: a full-size inner packet with its bond header. A path must carry it.
    pub datagram_len: usize,
    /// Largest UDP payload our QUIC connections send (`node::transport_config`): sockets cap their GSO
    /// batches by it (`batching.rs`).
    pub udp_payload: usize,
}

impl Shared {
    pub fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    pub fn emit(&self, event: Event) {
        let mut q = self.events.lock().unwrap();
        // Bounded: if nobody drains events, the oldest go.
        if q.len() >= 1024 {
            q.pop_front();
        }
        q.push_back(event);
        drop(q);
        if let Some(fd) = self.notify_fd {
            // SAFETY: writing one byte from a valid buffer; a full pipe (EAGAIN) already means "wake up".
            unsafe { libc::write(fd, [1u8].as_ptr().cast(), 1) };
        }
    }

    /// The WAN whose local address is `ip`.
    pub fn wan_at(&self, ip: std::net::IpAddr) -> Option<String> {
        self.wan_addrs.read().unwrap().get(&ip).cloned()
    }

    /// The peer with node key `key`, if it is in the table.
    pub fn peer(&self, key: &[u8; 32]) -> Option<Arc<Peer>> {
        self.table.read().unwrap().get(key).cloned()
    }

    /// The peer an accepted connection belongs to: the one with its key, or else (the verifier let it in
    /// by its membership certificate) a new peer made from that certificate, with no endpoints to dial
    /// (it dialed us) and its overlay addresses and LAN prefixes as allowed IPs. Err: neither (the peer
    /// was removed, or revoked, or its certificate expired, during the handshake).
    pub fn peer_of_accepted(self: &Arc<Self>, conn: &quinn::Connection) -> Result<Arc<Peer>, String> {
        let der = crate::tls::peer_certificate(conn).ok_or("no peer certificate")?;
        let key = quicether_proto::certkey::ed25519_key_of_cert(&der).ok_or("no node key")?;
        if let Some(peer) = self.peer(&key) {
            return Ok(peer);
        }
        let now = crate::unix_time().as_secs();
        let cert = crate::tls::member_of(&self.trust, &der, &key, now)
            .map_err(|e| format!("peer removed during the handshake ({e})"))?;
        let data = quicether_proto::certkey::membership_of_cert(&der).unwrap_or_default().to_vec();
        let mut allowed_ips =
            vec![Prefix { addr: cert.ipv4.into(), len: 32 }, Prefix { addr: cert.ipv6().into(), len: 128 }];
        allowed_ips.extend(cert.lan_prefixes.iter().copied());
        let config = PeerConfig {
            key,
            endpoints: vec![],
            allowed_ips,
            policy: self.member_policy.read().unwrap().clone(),
            member_only: false,
        };
        let peer = {
            let mut table = self.table.write().unwrap();
            if let Some(peer) = table.get(&key) {
                return Ok(peer.clone()); // admitted by a handshake on another WAN meanwhile
            }
            let peer = Arc::new(Peer { member: Some(data.clone()), ..Peer::new(&config, crate::node::random_u64()) });
            table.insert(peer.clone(), &config.allowed_ips);
            peer
        };
        // It ends by itself once the peer is marked removed.
        tokio::spawn(crate::receive::reorder_timer(self.clone(), peer.clone()));
        self.emit(Event::MemberAdmitted { key, certificate: data });
        Ok(peer)
    }

    /// Adds an authenticated connection as a path of `peer`. Not added (and the connection closed) if the
    /// peer was removed meanwhile, or if it loses to a path over the same pair of WANs (`duplicate_loser`);
    /// a path it wins against is closed.
    pub fn add_path(
        &self,
        peer: &Arc<Peer>,
        conn: quinn::Connection,
        route: PathRoute,
        backup: bool,
        local: Option<std::net::IpAddr>,
        public: Option<std::net::SocketAddr>,
    ) -> Result<Arc<Path>, NotAdded> {
        let rtt = conn.rtt();
        let path = Arc::new(Path {
            id: self.next_path_id.fetch_add(1, Ordering::Relaxed),
            route,
            closed_as_duplicate: AtomicBool::new(false),
            closing: Mutex::new(None),
            backup,
            local: conn.local_ip().or(local),
            public,
            health: Mutex::new(PathHealth::new(self.now_us(), rtt.as_micros() as u64)),
            up: AtomicBool::new(true),
            srtt_us: AtomicU64::new(rtt.as_micros() as u64),
            min_rtt_us: AtomicU64::new(rtt.as_micros() as u64),
            rate_bps: AtomicU64::new(0),
            window_rate_bps: AtomicU64::new(0),
            counters: Counters::default(),
            tx_rate_bps: AtomicU64::new(0),
            rx_rate_bps: AtomicU64::new(0),
            conn,
        });
        let (first, displaced, pending) = {
            let mut paths = peer.paths.write().unwrap();
            if peer.removed.load(Ordering::Relaxed) {
                drop(paths);
                path.conn.close(CLOSE_PEER_REMOVED.into(), b"peer removed");
                return Err(NotAdded::PeerRemoved);
            }
            let twin = path.route.peer_wan.as_ref().and_then(|_| {
                paths
                    .iter()
                    .position(|p| p.route.local_wan == path.route.local_wan && p.route.peer_wan == path.route.peer_wan)
            });
            let mut displaced = None;
            if let Some(i) = twin {
                if duplicate_loser(&self.local_key, &peer.key, paths[i].route.dialed, path.route.dialed) {
                    drop(paths);
                    path.closed_as_duplicate.store(true, Ordering::Relaxed);
                    path.conn.close(CLOSE_DUPLICATE.into(), b"duplicate path");
                    return Err(NotAdded::Duplicate);
                }
                displaced = Some(paths.remove(i));
            }
            paths.push(path.clone());
            let pending = peer.duplicate_resend.lock().unwrap().take();
            (paths.len() == 1 && displaced.is_none(), displaced, pending)
        };
        let now = self.now_us();
        if let Some(old) = displaced {
            // Its reader reports it down when the close takes effect. The peer may have closed it already (it
            // came up there after its twin: both ends dialed), so what it sent lately may never have been
            // read, and the close drops what quinn had not sent yet: the usable paths, the new one among
            // them, carry that again (the peer's bond drops what it already had).
            old.closed_as_duplicate.store(true, Ordering::Relaxed);
            old.close(DownReason::Duplicate, CLOSE_DUPLICATE, b"duplicate path");
            peer.resend_from_failed(old.id, duplicate_resend_window(&old), now);
        }
        if let Some((closed, since)) = pending.filter(|&(_, since)| now.saturating_sub(since) < DUPLICATE_TWIN_WAIT_US)
        {
            peer.resend_from_failed(closed, now.saturating_sub(since), now);
        }
        *peer.last_handshake.lock().unwrap() = Some(SystemTime::now());
        if first {
            self.emit(Event::PeerConnected { key: peer.key });
        }
        self.emit(Event::PathUp {
            key: peer.key,
            route: path.route.clone(),
            remote: path.conn.remote_address(),
            reason: UpReason::Connected,
        });
        Ok(path)
    }

    /// Removes a closed path; reports the peer gone if it was the last. `detail`: the connection's error.
    pub fn remove_path(&self, peer: &Peer, path: &Path, detail: String) {
        let closed_by_peer_as_duplicate = matches!(path.conn.close_reason(),
            Some(quinn::ConnectionError::ApplicationClosed(c)) if c.error_code == quinn::VarInt::from_u32(CLOSE_DUPLICATE));
        let reason = path.closing.lock().unwrap().unwrap_or(if closed_by_peer_as_duplicate {
            DownReason::Duplicate
        } else {
            DownReason::Closed
        });
        let (window, now) = (duplicate_resend_window(path), self.now_us());
        let (found, remaining, resend_now) = {
            let mut paths = peer.paths.write().unwrap();
            let before = paths.len();
            paths.retain(|p| p.id != path.id);
            let found = paths.len() < before;
            // The peer closed it as the loser of two paths that came up together (both ends dialed): what we
            // sent on it lately may have reached a connection the peer no longer reads. The usable paths
            // carry that again (the peer's bond drops what it already had); if none is usable, its twin,
            // whose handshake is ending here, does once it is up (`add_path`).
            let lost_as_duplicate = found && closed_by_peer_as_duplicate;
            let usable = paths.iter().any(|p| p.up.load(Ordering::Relaxed));
            if lost_as_duplicate && !usable {
                *peer.duplicate_resend.lock().unwrap() = Some((path.id, now.saturating_sub(window)));
            }
            (found, paths.len(), lost_as_duplicate && usable)
        };
        if resend_now {
            peer.resend_from_failed(path.id, window, now);
        }
        let summary = format!("{}: {detail}", reason.name());
        if reason != DownReason::Duplicate {
            // A duplicate's twin carries on: waking the dialers would only make more duplicates.
            peer.redial.notify_waiters();
        }
        self.emit(Event::PathDown { key: peer.key, route: path.route.clone(), reason, detail });
        if found && remaining == 0 {
            self.emit(Event::PeerDisconnected { key: peer.key, reason: summary });
        }
    }
}

/// QUIC application close codes we send.
pub const CLOSE_PEER_REMOVED: u32 = 4;
/// Another path over the same pair of WANs stays instead of this one (see `duplicate_loser`).
pub const CLOSE_DUPLICATE: u32 = 5;
/// Beyond two round trips, how far back a path closed as a duplicate has its packets sent again.
const DUPLICATE_RESEND_MARGIN_US: u64 = 20_000;
/// How long what the peer's close of our last path as a duplicate left waits for the twin to come up.
const DUPLICATE_TWIN_WAIT_US: u64 = 2_000_000;

/// How far back what a path closed as a duplicate sent is sent again on its twin.
fn duplicate_resend_window(path: &Path) -> u64 {
    2 * path.srtt_us.load(Ordering::Relaxed) + DUPLICATE_RESEND_MARGIN_US
}

#[cfg(test)]
mod tests {
    use super::duplicate_loser;

    #[test]
    fn both_nodes_close_the_same_duplicate() {
        let (low, high) = ([1u8; 32], [2u8; 32]);
        // A path dialed by `low` (dialed from low's view, accepted from high's) and one dialed by `high`.
        // Whichever arrives first, both nodes keep low's dial.
        for (old_is_lows_dial, label) in [(true, "low's dial first"), (false, "high's dial first")] {
            // At low: its own dial is `dialed`; at high: low's dial is the accepted one.
            let low_closes_new = duplicate_loser(&low, &high, old_is_lows_dial, !old_is_lows_dial);
            let high_closes_new = duplicate_loser(&high, &low, !old_is_lows_dial, old_is_lows_dial);
            // Closing `new` keeps `old`: the survivor must be low's dial on both sides.
            let low_keeps_lows_dial = if low_closes_new { old_is_lows_dial } else { !old_is_lows_dial };
            let high_keeps_lows_dial = if high_closes_new { old_is_lows_dial } else { !old_is_lows_dial };
            assert!(low_keeps_lows_dial && high_keeps_lows_dial, "{label}");
        }
        // Two paths one node dialed (it restarted, or lost the old one): the old one goes, on both sides.
        assert!(!duplicate_loser(&low, &high, true, true));
        assert!(!duplicate_loser(&high, &low, false, false));
    }
}
