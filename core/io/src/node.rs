//! A QuicEther node: QUIC endpoints (one listening, one per WAN), peers, TUN device, and the tasks that
//! move packets between them. Wiring only; each mechanism has its own file:
//! `send.rs` (TUN → paths), `receive.rs` (paths → bond receiver → TUN), `connect.rs` (accept/dial/hello),
//! `timers.rs` (probes and health), `peer.rs` (peer and path state), `sockets.rs` (UDP sockets).

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use quicether_proto::frame::DATA_HEADER_LEN;
use quicether_proto::health::PathState;
use quicether_proto::path_rank;
pub use quicether_proto::path_rank::PathKind;
use quinn::crypto::rustls::QuicServerConfig;
use tokio::task::JoinHandle;

use crate::congestion::LossTolerantConfig;
use crate::connect::{accept_loop, dialer, DialTarget};
pub use crate::events::{DownReason, Event, UpReason};
use crate::peer::{Peer, Shared, CLOSE_PEER_REMOVED, DATAGRAM_SEND_BUFFER};
pub use crate::peer::{PeerConfig, PeerPolicy};
use crate::peers::PeerTable;
use crate::receive::reorder_timer;
use crate::send::tun_reader;
use crate::sockets::{bind_listen, bind_wan};
pub use crate::stats::{PathStats, PeerStats};
use crate::tls::{self, Identity, KnownClientKeys};
use crate::tun::Tun;

/// A silent path is closed after this long; keepalives make silence mean failure. Health marks it down
/// much sooner (~300 ms); this only frees the connection, after which the dialer tries again.
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
/// Keepalive well under the idle timeout and typical NAT UDP mapping life times (≥ 30 s).
const KEEPALIVE_INTERVAL: Duration = Duration::from_millis(500);
const DATAGRAM_RECV_BUFFER: usize = 4 << 20;
/// Length of the connection IDs our endpoints issue. Fixed (quinn's default) because every byte of it is in
/// every packet the peer sends us and so part of the tunnel's per-packet overhead.
pub const CONNECTION_ID_LEN: usize = 8;
/// QUIC per-packet overhead above the UDP payload that a DATAGRAM frame must leave room for, as quinn
/// counts it (`max_datagram_size`): short header (1) + the peer's connection ID + packet number (≤ 4) +
/// AEAD tag (16) + frame type and length (≤ 9). A peer issuing longer IDs is refused at path setup.
pub const QUIC_DATAGRAM_OVERHEAD: usize = 1 + CONNECTION_ID_LEN + 4 + 16 + 9;
/// What a relayed path's QUIC packets lose against a direct one's: they travel in a DATAGRAM frame of
/// our path to the relay, with the RELAY header (`quicether_proto::relay`) in front.
pub const RELAY_OVERHEAD: usize = QUIC_DATAGRAM_OVERHEAD + quicether_proto::relay::RELAY_HEADER_LEN;
/// IP + UDP headers around each QUIC packet.
const IPV4_UDP_OVERHEAD: usize = 28;
const IPV6_UDP_OVERHEAD: usize = 48;
/// The dial source of a node without WANs: its listening socket.
pub const DEFAULT_SOURCE: &str = "default";

/// One WAN port: paths to every dialed peer leave from `local` through `device`.
#[derive(Clone, Debug)]
pub struct WanConfig {
    pub name: String,
    pub device: Option<String>,
    pub local: IpAddr,
    pub backup: bool,
    /// Firewall mark on the WAN's packets (0: none); the daemon's rule for it selects the WAN's table.
    pub mark: u32,
}

pub struct NodeConfig {
    pub listen: SocketAddr,
    pub tun_name: String,
    /// MTU of the underlying network path (1500 on Ethernet): QUIC packets are sized to fit it unfragmented.
    pub path_mtu: u16,
    pub seed: [u8; 32],
    /// This node's membership certificate of a mesh network, shown to every peer in the TLS handshake.
    pub membership: Option<Vec<u8>>,
    /// WANs to dial from (more can be added later); None: dial from the listening socket.
    pub wans: Option<Vec<WanConfig>>,
    /// Congestion control of every path.
    pub congestion: Congestion,
    /// Threads that carry packets (`quicether_proto::io_threads`); None: the default (two).
    pub io_threads: Option<usize>,
}

/// Per-path congestion control. Measured in the lab (scripts/bench-bond --congestion): quinn's BBR gave the
/// bond ~35 % less goodput than CUBIC; plain CUBIC starves WANs with random loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Congestion {
    Cubic,
    Bbr,
    /// CUBIC that ignores losses without signs of congestion (see `congestion.rs`).
    LossTolerant,
}

pub(crate) fn udp_payload(path_mtu: u16, v4: bool) -> usize {
    (path_mtu as usize).saturating_sub(if v4 { IPV4_UDP_OVERHEAD } else { IPV6_UDP_OVERHEAD })
}

/// The UDP payload of our QUIC packets at `path_mtu` (QUIC's minimum, 1200, below that).
pub(crate) fn quic_payload(path_mtu: u16, v4: bool) -> usize {
    udp_payload(path_mtu, v4).max(1200)
}

/// Largest inner IP packet that fits one DATAGRAM frame with its bond header: the TUN MTU.
pub fn inner_mtu(path_mtu: u16, v4: bool) -> usize {
    udp_payload(path_mtu, v4).saturating_sub(QUIC_DATAGRAM_OVERHEAD + DATA_HEADER_LEN)
}

/// A local socket that dials peers: a WAN's, or the listening one when the node has no WANs.
pub(crate) struct DialSource {
    pub(crate) endpoint: quinn::Endpoint,
    backup: bool,
    /// The WAN's address, and the task accepting paths on its socket (None for the listening socket,
    /// which lives as long as the node); its device and firewall mark (a port mapping's requests use them).
    pub(crate) local: Option<IpAddr>,
    accept: Option<JoinHandle<()>>,
    pub(crate) device: Option<String>,
    pub(crate) mark: u32,
}

/// The tasks that work for one peer, ended when it is removed.
struct PeerTasks {
    /// None for an admitted member (its timer ends by itself when the peer is marked removed).
    reorder_timer: Option<JoinHandle<()>>,
    /// One dialer per (WAN, endpoint), by WAN name.
    dialers: HashMap<String, Vec<JoinHandle<()>>>,
}

impl PeerTasks {
    fn abort_dialers(&mut self, wan: Option<&str>) {
        let wans: Vec<String> = match wan {
            Some(w) => vec![w.to_string()],
            None => self.dialers.keys().cloned().collect(),
        };
        for w in wans {
            for d in self.dialers.remove(&w).unwrap_or_default() {
                d.abort();
            }
        }
    }
}

/// What is wrong with a peer change the caller asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum PeerError {
    AlreadyExists,
    Unknown,
    Stopped,
}

impl std::fmt::Display for PeerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PeerError::AlreadyExists => "a peer with this key is already there",
            PeerError::Unknown => "no peer with this key",
            PeerError::Stopped => "the node is stopped",
        })
    }
}

/// A running node. Dropping it (or `stop`) closes every connection, socket and the TUN device.
pub struct Node {
    runtime: Option<tokio::runtime::Runtime>,
    pub(crate) shared: Arc<Shared>,
    listener: quinn::Endpoint,
    /// What every handshake shows (replaced when the membership certificate is renewed).
    identity: Arc<tls::CurrentIdentity>,
    seed: [u8; 32],
    transport: Arc<quinn::TransportConfig>,
    /// Every local socket accepts paths with the same key pinning.
    server_config: quinn::ServerConfig,
    /// Counts and reports refused handshakes.
    verifier: Arc<KnownClientKeys>,
    /// The TLS verifier's pinning set: the keys of the peers in the table.
    known_keys: Arc<RwLock<HashSet<[u8; 32]>>>,
    /// Lock order: `sources` before `tasks`.
    pub(crate) sources: Mutex<HashMap<String, DialSource>>,
    tasks: Mutex<HashMap<[u8; 32], PeerTasks>>,
    /// The TCP lane's ends, started and stopped by the daemon (`node_lane.rs`).
    lanes: Mutex<lanes::Lanes>,
    pub public_key: [u8; 32],
    pub local_addr: SocketAddr,
    pub inner_mtu: usize,
    /// Why the runtime has as many worker threads as it has (`quicether_proto::io_threads`).
    io_threads_why: String,
}

#[path = "node_lane.rs"]
mod lanes;

fn io_err(context: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{context}: {e}"))
}

pub(crate) fn transport_config(path_mtu: u16, v4: bool, congestion: Congestion) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("small duration")));
    t.keep_alive_interval(Some(KEEPALIVE_INTERVAL));
    t.datagram_send_buffer_size(DATAGRAM_SEND_BUFFER);
    t.datagram_receive_buffer_size(Some(DATAGRAM_RECV_BUFFER));
    // The TUN MTU is fixed from the path MTU, so QUIC packets are that size from the first one on.
    let payload = quic_payload(path_mtu, v4) as u16;
    t.initial_mtu(payload);
    t.min_mtu(payload);
    t.mtu_discovery_config(None);
    t.congestion_controller_factory(match congestion {
        Congestion::Cubic => {
            Arc::new(LossTolerantConfig::measured(Arc::new(quinn::congestion::CubicConfig::default())))
        }
        Congestion::Bbr => Arc::new(LossTolerantConfig::measured(Arc::new(quinn::congestion::BbrConfig::default()))),
        Congestion::LossTolerant => Arc::new(LossTolerantConfig::default()),
    });
    // Data travels in DATAGRAM frames; the streams are the path hello and batches of member news.
    t.max_concurrent_uni_streams(4u8.into());
    t.max_concurrent_bidi_streams(2u8.into());
    t
}

pub(crate) fn endpoint_config() -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    config.cid_generator(|| Box::new(quinn_proto::RandomConnectionIdGenerator::new(CONNECTION_ID_LEN)));
    config
}

/// The listening endpoint's config: its stateless-reset key is derived from the node's seed and the socket's
/// address, so a restarted node (same key, address and port) resets the connections its previous run left
/// open on its peers, at their next packet (a probe within 50 ms): they dial again at once instead of holding
/// a dead connection until it times out. Per address, so that no other endpoint of this node answers with a
/// valid token for this one's connections (RFC 9000, 10.3.2).
pub(crate) fn listener_endpoint_config(seed: &[u8; 32], local: SocketAddr) -> quinn::EndpointConfig {
    let derive = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, seed);
    let key = ring::hmac::sign(&derive, format!("quicether stateless reset key {local}").as_bytes());
    let mut config = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_ref())));
    config.cid_generator(|| Box::new(quinn_proto::RandomConnectionIdGenerator::new(CONNECTION_ID_LEN)));
    config
}

pub(crate) fn random_u64() -> u64 {
    let seed = tls::generate_seed();
    u64::from_le_bytes(seed[..8].try_into().expect("8 bytes"))
}

impl Node {
    pub fn start(cfg: NodeConfig, peers: Vec<PeerConfig>, notify_fd: Option<RawFd>) -> io::Result<Node> {
        let identity = Identity::from_seed(&cfg.seed, cfg.membership.as_deref()).map_err(|e| io_err("identity", e))?;
        let current_identity = tls::CurrentIdentity::new(&identity).map_err(|e| io_err("identity", e))?;
        // The TUN MTU: a full-size inner packet plus its bond header must fit one DATAGRAM on every path.
        // A member of a mesh network may reach a peer through a relay, whose path carries our QUIC packets
        // inside its own DATAGRAMs: its packets are smaller by that much (`RELAY_OVERHEAD`).
        let tun_mtu = inner_mtu(cfg.path_mtu, cfg.listen.is_ipv4()).saturating_sub(if cfg.membership.is_some() {
            RELAY_OVERHEAD
        } else {
            0
        });
        let socket = bind_listen(cfg.listen)?;
        let local_addr = socket.local_addr()?;
        let io_threads = quicether_proto::io_threads::choose(cfg.io_threads)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(io_threads.0)
            .thread_name("quicether-io")
            .enable_all()
            .build()?;
        let _guard = runtime.enter();
        let tun = Tun::open(&cfg.tun_name)?;

        let known_keys = Arc::new(RwLock::new(HashSet::new()));
        let shared = Arc::new(Shared {
            local_key: identity.public_key,
            table: RwLock::new(PeerTable::default()),
            trust: Arc::new(RwLock::new(None)),
            news: Mutex::new(crate::member_news::NewsBook::new(cfg.membership.clone())),
            joins: crate::join::JoinDesk::default(),
            punch: crate::punch::PunchDesk::default(),
            relay: crate::relay::RelayDesk::default(),
            portmap: crate::portmap::PortMapDesk::default(),
            member_policy: RwLock::new(PeerPolicy {
                bulk_mode: quicether_proto::scheduler::Mode::Aggregate,
                realtime_mode: quicether_proto::scheduler::Mode::Redundant,
                rules: Vec::new(),
            }),
            wan_addrs: RwLock::new(HashMap::new()),
            tun,
            events: Mutex::new(VecDeque::new()),
            notify_fd,
            no_route: AtomicU64::new(0),
            handshakes_in_flight: Default::default(),
            handshakes_retried: AtomicU64::new(0),
            handshakes_dropped: AtomicU64::new(0),
            next_path_id: AtomicU64::new(0),
            batching: Default::default(),
            epoch: Instant::now(),
            datagram_len: tun_mtu + DATA_HEADER_LEN,
            udp_payload: quic_payload(cfg.path_mtu, cfg.listen.is_ipv4()),
        });

        let provider = tls::provider();
        let refused_sink = Arc::downgrade(&shared);
        let verifier = Arc::new(
            KnownClientKeys::new(
                known_keys.clone(),
                shared.trust.clone(),
                provider.clone(),
                Box::new(move |key, reason| {
                    if let Some(shared) = refused_sink.upgrade() {
                        shared.emit(Event::HandshakeRefused { key, reason: reason.to_string() });
                    }
                }),
            )
            .with_invites(shared.joins.invites.clone()),
        );
        let server_tls =
            tls::server_tls(verifier.clone(), current_identity.clone(), tls::ALPN).map_err(|e| io_err("tls", e))?;
        let quic_server = QuicServerConfig::try_from(server_tls).map_err(|e| io_err("quic", e))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(quic_server));
        let transport = Arc::new(transport_config(cfg.path_mtu, cfg.listen.is_ipv4(), cfg.congestion));
        server_config.transport_config(transport.clone());
        // Bounded memory for handshakes not yet taken on (the accept loop decides at once, see
        // `quicether_proto::admission`): a flood of Initials cannot queue without end.
        server_config.max_incoming(4 * quicether_proto::admission::MAX_IN_FLIGHT);
        server_config.incoming_buffer_size(64 * 1024);
        server_config.incoming_buffer_size_total(8 * 1024 * 1024);
        let listener_raw = socket.try_clone().ok().map(Arc::new);
        let listener = crate::batching::endpoint(
            listener_endpoint_config(&cfg.seed, socket.local_addr()?),
            Some(server_config.clone()),
            socket,
            shared.batching.clone(),
            shared.udp_payload,
        )?;

        runtime.spawn(accept_loop(shared.clone(), listener.clone(), DEFAULT_SOURCE.to_string(), None));
        runtime.spawn(tun_reader(shared.clone()));
        runtime.spawn(crate::punch::initiator(shared.clone()));
        runtime.spawn(crate::relay::initiator(shared.clone()));
        crate::relay::install(&shared, &server_config, cfg.path_mtu, cfg.listen.is_ipv4(), cfg.congestion);
        *shared.punch.client.write().unwrap() =
            Some(crate::punch::ClientKit { identity: current_identity.clone(), transport: transport.clone() });
        let node = Node {
            shared,
            listener,
            public_key: identity.public_key,
            identity: current_identity,
            seed: cfg.seed,
            transport,
            server_config,
            verifier,
            known_keys,
            sources: Mutex::new(HashMap::new()),
            tasks: Mutex::new(HashMap::new()),
            lanes: Mutex::default(),
            local_addr,
            inner_mtu: tun_mtu,
            io_threads_why: io_threads.1,
            runtime: Some(runtime),
        };
        // Sources first, then peers: each added peer is dialed from every source there is.
        match cfg.wans {
            None => {
                let source = DialSource {
                    endpoint: node.listener.clone(),
                    backup: false,
                    local: None,
                    accept: None,
                    device: None,
                    mark: 0,
                };
                node.shared.punch.sockets.write().unwrap().push(crate::punch::PunchSocket {
                    wan: DEFAULT_SOURCE.to_string(),
                    endpoint: node.listener.clone(),
                    backup: false,
                    local: None,
                    device: None,
                    mark: 0,
                    raw: listener_raw,
                });
                node.sources.lock().unwrap().insert(DEFAULT_SOURCE.to_string(), source);
            }
            Some(wans) => {
                for wan in wans {
                    node.add_wan(wan)?;
                }
            }
        }
        for peer in peers {
            node.add_peer(peer).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        }
        Ok(node)
    }

    fn client_config(&self, peer: &Peer) -> io::Result<quinn::ClientConfig> {
        let members_of = peer.member_only.then(|| self.shared.trust.clone());
        let quic =
            tls::quic_client_config(self.identity.clone(), peer.key, members_of).map_err(|e| io_err("tls", e))?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        config.transport_config(self.transport.clone());
        Ok(config)
    }

    pub(crate) fn runtime(&self) -> io::Result<&tokio::runtime::Runtime> {
        self.runtime.as_ref().ok_or_else(|| io_err("node", "stopped"))
    }

    /// Starts one dialer per endpoint of `peer` from source `wan`.
    fn spawn_dialers(&self, peer: &Arc<Peer>, wan: &str, source: &DialSource) -> io::Result<Vec<JoinHandle<()>>> {
        let runtime = self.runtime()?;
        let endpoints = peer.endpoints.read().unwrap().clone();
        let mut dialers = Vec::new();
        for addr in endpoints {
            let target = DialTarget {
                peer: peer.clone(),
                addr,
                wan: wan.to_string(),
                backup: source.backup,
                config: self.client_config(peer)?,
            };
            dialers.push(runtime.spawn(dialer(self.shared.clone(), source.endpoint.clone(), target)));
        }
        Ok(dialers)
    }

    /// Starts dialing every peer with an endpoint from this WAN (one path per peer and endpoint).
    pub fn add_wan(&self, wan: WanConfig) -> io::Result<()> {
        let mut sources = self.sources.lock().unwrap();
        if sources.contains_key(&wan.name) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("WAN {} already added", wan.name)));
        }
        let runtime = self.runtime()?;
        let _guard = runtime.enter();
        let socket = bind_wan(wan.device.as_deref(), SocketAddr::new(wan.local, 0), wan.mark)?;
        let raw = socket.try_clone().ok().map(Arc::new);
        // The WAN's socket accepts too: a peer that learned this WAN's public address (a NAT mapping this
        // socket made) reaches us on it, and only on it.
        let endpoint = crate::batching::endpoint(
            endpoint_config(),
            Some(self.server_config.clone()),
            socket,
            self.shared.batching.clone(),
            self.shared.udp_payload,
        )?;
        let accept = runtime.spawn(accept_loop(self.shared.clone(), endpoint.clone(), wan.name.clone(), None));
        self.shared.wan_addrs.write().unwrap().insert(wan.local, wan.name.clone());
        self.shared.punch.sockets.write().unwrap().push(crate::punch::PunchSocket {
            wan: wan.name.clone(),
            endpoint: endpoint.clone(),
            backup: wan.backup,
            local: Some(wan.local),
            device: wan.device.clone(),
            mark: wan.mark,
            raw,
        });
        let (device, mark) = (wan.device.clone(), wan.mark);
        let source =
            DialSource { endpoint, backup: wan.backup, local: Some(wan.local), accept: Some(accept), device, mark };
        let mut tasks = self.tasks.lock().unwrap();
        let peers: Vec<Arc<Peer>> = self.shared.table.read().unwrap().peers().cloned().collect();
        for peer in peers {
            let dialers = self.spawn_dialers(&peer, &wan.name, &source)?;
            if let Some(t) = tasks.get_mut(&peer.key) {
                t.dialers.insert(wan.name.clone(), dialers);
            }
        }
        sources.insert(wan.name, source);
        Ok(())
    }

    /// Stops dialing from this WAN and closes its paths at once (the WAN lost its link or address).
    pub fn remove_wan(&self, name: &str) -> bool {
        let mut sources = self.sources.lock().unwrap();
        let Some(source) = sources.remove(name) else {
            return false;
        };
        for t in self.tasks.lock().unwrap().values_mut() {
            t.abort_dialers(Some(name));
        }
        self.shared.punch.sockets.write().unwrap().retain(|s| s.wan != name);
        drop(sources);
        self.unmap_port(name);
        if let Some(accept) = &source.accept {
            accept.abort();
        }
        if let Some(ip) = source.local {
            let mut addrs = self.shared.wan_addrs.write().unwrap();
            if addrs.get(&ip).is_some_and(|w| w == name) {
                addrs.remove(&ip);
            }
        }
        let now = self.shared.now_us();
        let peers: Vec<Arc<Peer>> = self.shared.table.read().unwrap().peers().cloned().collect();
        for peer in peers {
            // Our own WAN's paths only: a peer's path that merely carries the same label is not ours to close.
            let gone: Vec<_> =
                peer.paths.read().unwrap().iter().filter(|p| p.route.local_wan == name).cloned().collect();
            for path in gone {
                path.up.store(false, Ordering::Relaxed);
                // The link went away just now: what it sent in the last RTT (plus margin) may be lost.
                let window = path.srtt_us.load(Ordering::Relaxed) + 50_000;
                peer.resend_from_failed(path.id, window, now);
                path.close(DownReason::WanRemoved, 3, b"WAN removed");
            }
        }
        if source.accept.is_some() {
            source.endpoint.close(3u32.into(), b"WAN removed");
        }
        true
    }

    /// Adds a peer while the node runs: its allowed IPs route to it, its key may handshake with us, and it
    /// is dialed at its endpoints from every source (WAN) there is.
    pub fn add_peer(&self, cfg: PeerConfig) -> Result<(), PeerError> {
        let runtime = self.runtime.as_ref().ok_or(PeerError::Stopped)?;
        let sources = self.sources.lock().unwrap();
        let mut tasks = self.tasks.lock().unwrap();
        let peer = Arc::new(Peer::new(&cfg, random_u64()));
        if !self.shared.table.write().unwrap().insert(peer.clone(), &cfg.allowed_ips) {
            return Err(PeerError::AlreadyExists);
        }
        // A member-only peer's key is not pinned: its handshakes to us pass by a valid membership or not at all.
        if !cfg.member_only {
            self.known_keys.write().unwrap().insert(cfg.key);
        }
        let mut dialers = HashMap::new();
        for (wan, source) in sources.iter() {
            // Building a client config only fails on a bad identity, which `start` already checked.
            dialers.insert(wan.clone(), self.spawn_dialers(&peer, wan, source).unwrap_or_default());
        }
        let reorder_timer = runtime.spawn(reorder_timer(self.shared.clone(), peer.clone()));
        tasks.insert(cfg.key, PeerTasks { reorder_timer: Some(reorder_timer), dialers });
        self.shared.emit(Event::PeerAdded { key: cfg.key });
        Ok(())
    }

    /// Changes a peer in place: modes and classes for the next packet, allowed IPs at once; its paths stay
    /// up. New endpoints restart only this peer's dialers (a path already up stays until it closes).
    pub fn update_peer(&self, cfg: PeerConfig) -> Result<(), PeerError> {
        let sources = self.sources.lock().unwrap();
        let mut tasks = self.tasks.lock().unwrap();
        let peer = self.shared.peer(&cfg.key).ok_or(PeerError::Unknown)?;
        *peer.policy.write().unwrap() = cfg.policy.clone();
        self.shared.table.write().unwrap().set_allowed_ips(&cfg.key, &cfg.allowed_ips);
        let changed = *peer.endpoints.read().unwrap() != cfg.endpoints;
        if changed {
            *peer.endpoints.write().unwrap() = cfg.endpoints.clone();
            // An admitted member has no tasks entry until it is given endpoints to dial.
            let t = tasks.entry(cfg.key).or_insert_with(|| PeerTasks { reorder_timer: None, dialers: HashMap::new() });
            t.abort_dialers(None);
            for (wan, source) in sources.iter() {
                t.dialers.insert(wan.clone(), self.spawn_dialers(&peer, wan, source).unwrap_or_default());
            }
        }
        Ok(())
    }

    /// Removes a peer: its dialers and timers end, its paths close, its routes go, and a new handshake
    /// with its key is refused. Other peers are untouched. False if there was no such peer.
    pub fn remove_peer(&self, key: &[u8; 32]) -> bool {
        let mut tasks = self.tasks.lock().unwrap();
        let Some(peer) = self.shared.table.write().unwrap().remove(key) else {
            return false;
        };
        // Unpinned before the paths close, so their redials are refused (and the first refusal reported).
        self.known_keys.write().unwrap().remove(key);
        self.verifier.forget_reported(key);
        if let Some(mut t) = tasks.remove(key) {
            t.abort_dialers(None);
            if let Some(timer) = t.reorder_timer {
                timer.abort();
            }
        }
        drop(tasks);
        // Their readers report each path down (reason peer_removed); no peer_disconnected follows.
        for path in peer.mark_removed() {
            path.close(DownReason::PeerRemoved, CLOSE_PEER_REMOVED, b"peer removed");
        }
        peer.reorder_wake.notify_one(); // a member's reorder timer sees `removed` and ends
        self.shared.emit(Event::PeerRemoved { key: *key });
        true
    }

    /// Makes this node a member of the network with key `network_key` (None: of none): peers showing a
    /// valid certificate of it are admitted without a configured key, scheduled by `member_policy`, and
    /// the members revoked by `revocations` (each signed by the network key) are refused. Admitted members
    /// that no longer qualify (revoked, expired, another network) are removed at once; their keys are
    /// returned. A revocation that does not verify changes nothing and is an error.
    pub fn set_network(
        &self,
        network_key: Option<[u8; 32]>,
        revocations: &[Vec<u8>],
        member_policy: PeerPolicy,
    ) -> Result<Vec<[u8; 32]>, String> {
        let mut revoked = HashSet::new();
        let trust = match network_key {
            None if !revocations.is_empty() => return Err("revocations given without a network".into()),
            None => None,
            Some(network_key) => {
                let mut set = quicether_proto::membership::RevocationSet::default();
                for (i, data) in revocations.iter().enumerate() {
                    let rev = quicether_proto::membership::read_revocation(data, &network_key)
                        .map_err(|e| format!("revocation {}: {e}", i + 1))?;
                    set.insert(rev);
                    revoked.insert(rev.node);
                }
                Some(tls::NetworkTrust { network_key, revocations: set })
            }
        };
        *self.shared.member_policy.write().unwrap() = member_policy.clone();
        *self.shared.trust.write().unwrap() = trust;
        let fresh = self.shared.news.lock().unwrap().set_revocations(revocations, revoked);
        if !fresh.is_empty() {
            if let Ok(runtime) = self.runtime() {
                let _guard = runtime.enter();
                crate::member_news::pass_on(&self.shared, None, fresh);
            }
        }
        for peer in self.shared.table.read().unwrap().peers().filter(|p| p.member.is_some()) {
            *peer.policy.write().unwrap() = member_policy.clone();
        }
        Ok(self.recheck_members())
    }

    /// Shows `membership` (this node's renewed certificate; the daemon checked it) in every handshake from
    /// now on and tells it to peers first; the paths that are up stay up (their peers learn the renewal
    /// as member news).
    pub fn set_membership(&self, membership: Vec<u8>) -> Result<(), String> {
        let identity = Identity::from_seed(&self.seed, Some(&membership))?;
        self.identity.replace(&identity)?;
        self.shared.news.lock().unwrap().own = Some(membership);
        Ok(())
    }

    /// Tells every peer `certificates` (renewals the admin node issued) as member news, after checking
    /// each like news from a peer; returns how many were new. A renewal of this node's own certificate
    /// comes back as `Event::MembershipRenewed`.
    pub fn tell_members(&self, certificates: Vec<Vec<u8>>) -> Result<usize, String> {
        let runtime = self.runtime().map_err(|e| e.to_string())?;
        let items = certificates.into_iter().map(quicether_proto::member_news::Item::Certificate).collect();
        let fresh = crate::member_news::learn(&self.shared, items);
        let told = fresh.len();
        if !fresh.is_empty() {
            let _guard = runtime.enter();
            crate::member_news::pass_on(&self.shared, None, fresh);
        }
        Ok(told)
    }

    /// Removes the admitted members whose certificate no longer qualifies now (expired, revoked, another
    /// network; not "not yet valid": that is our clock stepping back, `admitted_certificate_holds`);
    /// returns their keys. The daemon calls it now and then, as certificates expire.
    pub fn recheck_members(&self) -> Vec<[u8; 32]> {
        let now = crate::unix_time().as_secs();
        let members: Vec<Arc<Peer>> =
            self.shared.table.read().unwrap().peers().filter(|p| p.member.is_some()).cloned().collect();
        let mut removed = Vec::new();
        for peer in members {
            // The certificate it was admitted by, or a renewal of it learned since.
            let renewal = self.shared.news.lock().unwrap().certificate(&peer.key).map(<[u8]>::to_vec);
            let qualifies = [peer.member.as_deref(), renewal.as_deref()]
                .into_iter()
                .flatten()
                .any(|data| tls::membership_still_holds(&self.shared.trust, data, &peer.key, now).is_ok());
            if !qualifies && self.remove_peer(&peer.key) {
                removed.push(peer.key);
            }
        }
        removed
    }

    pub fn peer_stats(&self) -> Vec<PeerStats> {
        let peers: Vec<Arc<Peer>> = self.shared.table.read().unwrap().peers().cloned().collect();
        peers
            .iter()
            .map(|p| {
                let paths = p.paths.read().unwrap();
                // The path that ranks first (route, WAN role), the lowest RTT among equals.
                let best = paths.iter().filter(|x| x.up.load(Ordering::Relaxed)).min_by(|a, b| {
                    path_rank::compare(&a.view().rank, &b.view().rank).then(a.conn.rtt().cmp(&b.conn.rtt()))
                });
                let c = &p.counters;
                let (reorder, timeout_us, malformed) = {
                    let bond = p.bond.lock().unwrap();
                    (bond.reorder_stats(), bond.timeout_us(), bond.dropped())
                };
                PeerStats {
                    key: p.key,
                    endpoint: best.map(|x| x.conn.remote_address()).or(p.endpoints.read().unwrap().first().copied()),
                    connected: !paths.is_empty(),
                    rtt: best.map(|x| x.conn.rtt()),
                    last_handshake: *p.last_handshake.lock().unwrap(),
                    tx_packets: c.tx_packets.load(Ordering::Relaxed),
                    tx_bytes: c.tx_bytes.load(Ordering::Relaxed),
                    rx_packets: c.rx_packets.load(Ordering::Relaxed),
                    rx_bytes: c.rx_bytes.load(Ordering::Relaxed),
                    drops: p.drops(malformed),
                    retransmitted: c.retransmitted.load(Ordering::Relaxed),
                    punch_attempts: p.punch_attempts.load(Ordering::Relaxed),
                    paths: paths
                        .iter()
                        .map(|x| {
                            let health = x.health.lock().unwrap();
                            PathStats {
                                wan: x.route.label().to_string(),
                                local_wan: x.route.local_wan.clone(),
                                peer_wan: x.route.peer_wan.clone(),
                                kind: x.route.kind,
                                dialed: x.route.dialed,
                                local: x.local,
                                public: x.public,
                                remote: x.conn.remote_address(),
                                up: health.state() == PathState::Up,
                                backup: x.backup,
                                rtt: x.conn.rtt(),
                                loss: health.loss(),
                                tx_bytes: x.counters.tx_bytes.load(Ordering::Relaxed),
                                rx_bytes: x.counters.rx_bytes.load(Ordering::Relaxed),
                                tx_rate_bps: x.tx_rate_bps.load(Ordering::Relaxed),
                                rx_rate_bps: x.rx_rate_bps.load(Ordering::Relaxed),
                                cwnd: x.conn.stats().path.cwnd,
                                queued: x.view().queued_bytes,
                                delivery_rate_bps: x.rate_bps.load(Ordering::Relaxed),
                                min_rtt: Duration::from_micros(x.min_rtt_us.load(Ordering::Relaxed)),
                            }
                        })
                        .collect(),
                    reorder,
                    reorder_timeout: Duration::from_micros(timeout_us),
                }
            })
            .collect()
    }

    /// Handshakes refused by key pinning so far (reports of them are rate-limited; this counts all).
    /// The one-time keys of the invites pending on this admin node: a handshake with one is a join request.
    pub fn set_invites(&self, keys: impl IntoIterator<Item = [u8; 32]>) {
        *self.shared.joins.invites.write().unwrap() = keys.into_iter().collect();
    }

    /// The daemon's answer to join request `id` (`Event::JoinRequested`); false if it timed out meanwhile.
    pub fn answer_join(&self, id: u64, answer: quicether_proto::join::JoinAnswer) -> bool {
        self.shared.joins.answer(id, answer)
    }

    pub fn refused_handshakes(&self) -> u64 {
        self.verifier.refused()
    }

    /// Members learned from peers (not counting this node), and news items refused.
    pub fn member_news(&self) -> (usize, u64) {
        let book = self.shared.news.lock().unwrap();
        (book.members(), book.refused)
    }

    /// Hole punching so far: punches taken part in, punched paths up, requests relayed, messages refused.
    pub fn punch_stats(&self) -> quicether_proto::punch::PunchStats {
        *self.shared.punch.stats.lock().unwrap()
    }

    /// Relays for the members of our network (`relay.rs`), each at most `rate_bytes_per_s`, or stops.
    pub fn set_relay(&self, enabled: bool, rate_bytes_per_s: u64) {
        if let Ok(runtime) = self.runtime() {
            let _guard = runtime.enter();
            crate::relay::set_enabled(&self.shared, enabled, rate_bytes_per_s);
        }
    }

    /// Whether this node relays, each member's rate through it (bytes/s), and the relay counters.
    pub fn relay_stats(&self) -> (bool, u64, quicether_proto::relay::RelayStats) {
        let relay = &self.shared.relay;
        (relay.enabled.load(Ordering::Relaxed), relay.rate(), *relay.stats.lock().unwrap())
    }

    /// Incoming handshakes answered with a Retry (address validation under load), and dropped.
    pub fn handshake_load(&self) -> (u64, u64) {
        let s = &self.shared;
        (s.handshakes_retried.load(Ordering::Relaxed), s.handshakes_dropped.load(Ordering::Relaxed))
    }

    /// (UDP send calls, datagrams sent, receive calls, datagrams received) over every QUIC socket.
    pub fn udp_batching(&self) -> (u64, u64, u64, u64) {
        self.shared.batching.snapshot()
    }

    /// (the runtime's worker threads, which carry the packets, as it counts them; why that many). 0 once stopped.
    pub fn io_threads(&self) -> (usize, String) {
        (self.runtime.as_ref().map_or(0, |r| r.metrics().num_workers()), self.io_threads_why.clone())
    }

    pub fn no_route_drops(&self) -> u64 {
        self.shared.no_route.load(Ordering::Relaxed)
    }

    pub fn drain_events(&self) -> Vec<Event> {
        self.shared.events.lock().unwrap().drain(..).collect()
    }

    pub fn stop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            self.unmap_all(&runtime); // before the sockets close: the gateways delete our mappings
            self.listener.close(0u32.into(), b"node stopping");
            crate::relay::close_all(&self.shared);
            for peer in self.shared.table.read().unwrap().peers() {
                for path in peer.paths.read().unwrap().iter() {
                    path.close(DownReason::NodeStopping, 0, b"node stopping");
                }
            }
            runtime.shutdown_timeout(Duration::from_millis(500));
            self.shut_down_lanes();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}
