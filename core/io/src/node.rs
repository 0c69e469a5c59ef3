//! A QuicEther node: QUIC endpoints (one listening, one per WAN), peers, TUN device, and the tasks that
//! move packets between them. Wiring only; each mechanism has its own file:
//! `send.rs` (TUN → paths), `receive.rs` (paths → reorder → TUN), `connect.rs` (accept/dial/hello),
//! `timers.rs` (probes and health), `peer.rs` (peer and path state), `sockets.rs` (UDP sockets).

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use quicether_proto::allowed_ips::AllowedIps;
use quicether_proto::frame::DATA_HEADER_LEN;
use quicether_proto::health::PathState;
use quicether_proto::reorder::{timeout_for_rtts_us, ReorderBuffer, ReorderStats, RESYNC_DISTANCE};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::congestion::LossTolerantConfig;
use crate::connect::{accept_loop, dialer, DialTarget};
pub use crate::peer::{Event, PeerConfig};
use crate::peer::{Peer, Shared, DATAGRAM_SEND_BUFFER, REORDER_MAX_PACKETS};
use crate::receive::reorder_timer;
use crate::send::tun_reader;
use crate::sockets::{bind_listen, bind_wan};
use crate::tls::{self, Identity, KnownClientKeys, PinnedServerKey};
use crate::tun::open_tun;

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
/// IP + UDP headers around each QUIC packet.
const IPV4_UDP_OVERHEAD: usize = 28;
const IPV6_UDP_OVERHEAD: usize = 48;

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
    /// WANs to dial from (more can be added later); None: dial from the listening socket.
    pub wans: Option<Vec<WanConfig>>,
    /// Congestion control of every path.
    pub congestion: Congestion,
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

fn udp_payload(path_mtu: u16, v4: bool) -> usize {
    (path_mtu as usize).saturating_sub(if v4 { IPV4_UDP_OVERHEAD } else { IPV6_UDP_OVERHEAD })
}

/// Largest inner IP packet that fits one DATAGRAM frame with its bond header: the TUN MTU.
pub fn inner_mtu(path_mtu: u16, v4: bool) -> usize {
    udp_payload(path_mtu, v4).saturating_sub(QUIC_DATAGRAM_OVERHEAD + DATA_HEADER_LEN)
}

pub struct PathStats {
    pub wan: String,
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
    pub tx_dropped: u64,
    pub rx_dropped: u64,
    pub retransmitted: u64,
    pub paths: Vec<PathStats>,
    pub reorder: ReorderStats,
    pub reorder_timeout: Duration,
}

struct WanRuntime {
    dialers: Vec<JoinHandle<()>>,
}

/// A running node. Dropping it (or `stop`) closes every connection, socket and the TUN device.
pub struct Node {
    runtime: Option<tokio::runtime::Runtime>,
    shared: Arc<Shared>,
    listener: quinn::Endpoint,
    identity: Identity,
    transport: Arc<quinn::TransportConfig>,
    wans: Mutex<HashMap<String, WanRuntime>>,
    pub public_key: [u8; 32],
    pub local_addr: SocketAddr,
    pub inner_mtu: usize,
}

fn io_err(context: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{context}: {e}"))
}

fn transport_config(path_mtu: u16, v4: bool, congestion: Congestion) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("small duration")));
    t.keep_alive_interval(Some(KEEPALIVE_INTERVAL));
    t.datagram_send_buffer_size(DATAGRAM_SEND_BUFFER);
    t.datagram_receive_buffer_size(Some(DATAGRAM_RECV_BUFFER));
    // The TUN MTU is fixed from the path MTU, so QUIC packets are that size from the first one on.
    let payload = udp_payload(path_mtu, v4).max(1200) as u16;
    t.initial_mtu(payload);
    t.min_mtu(payload);
    t.mtu_discovery_config(None);
    t.congestion_controller_factory(match congestion {
        Congestion::Cubic => Arc::new(quinn::congestion::CubicConfig::default()),
        Congestion::Bbr => Arc::new(quinn::congestion::BbrConfig::default()),
        Congestion::LossTolerant => Arc::new(LossTolerantConfig::default()),
    });
    // Data travels in DATAGRAM frames; the only stream is the path hello.
    t.max_concurrent_uni_streams(0u8.into());
    t.max_concurrent_bidi_streams(2u8.into());
    t
}

fn endpoint_config() -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    config.cid_generator(|| Box::new(quinn_proto::RandomConnectionIdGenerator::new(CONNECTION_ID_LEN)));
    config
}

fn random_u64() -> u64 {
    let seed = tls::generate_seed();
    u64::from_le_bytes(seed[..8].try_into().expect("8 bytes"))
}

impl Node {
    pub fn start(cfg: NodeConfig, peers: Vec<PeerConfig>, notify_fd: Option<RawFd>) -> io::Result<Node> {
        let identity = Identity::from_seed(&cfg.seed).map_err(|e| io_err("identity", e))?;
        // The TUN MTU: a full-size inner packet plus its bond header must fit one DATAGRAM on every path.
        let tun_mtu = inner_mtu(cfg.path_mtu, cfg.listen.is_ipv4());
        let tun = open_tun(&cfg.tun_name)?;
        // SAFETY: setting O_NONBLOCK on an fd we own.
        unsafe {
            let flags = libc::fcntl(tun.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(tun.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        let socket = bind_listen(cfg.listen)?;
        let local_addr = socket.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("quicether-io")
            .enable_all()
            .build()?;
        let _guard = runtime.enter();

        let mut by_key = HashMap::new();
        let mut allowed = AllowedIps::default();
        let mut peer_states = Vec::new();
        for (i, p) in peers.into_iter().enumerate() {
            if by_key.insert(p.key, i).is_some() {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "the same peer key is configured twice"));
            }
            for prefix in &p.allowed_ips {
                allowed.insert(*prefix, i);
            }
            peer_states.push(Peer {
                cfg: p,
                paths: RwLock::new(Vec::new()),
                next_seq: AtomicU64::new(random_u64() % (u64::MAX / 2) + RESYNC_DISTANCE),
                reorder: Mutex::new(ReorderBuffer::new(timeout_for_rtts_us(&[]), REORDER_MAX_PACKETS)),
                reorder_wake: Notify::new(),
                delivery: Mutex::new(()),
                last_handshake: Mutex::new(None),
                counters: Default::default(),
            });
        }
        let known_keys = Arc::new(RwLock::new(by_key.keys().copied().collect::<HashSet<_>>()));
        let shared = Arc::new(Shared {
            peers: peer_states,
            by_key,
            allowed,
            // SAFETY: `File` owns its fd, which stays open and unchanged for the AsyncFd's life.
            tun: unsafe { AsyncFd::register(tun) }.map_err(|e| io_err("tun", e))?,
            events: Mutex::new(VecDeque::new()),
            notify_fd,
            no_route: AtomicU64::new(0),
            next_path_id: AtomicU64::new(0),
            epoch: Instant::now(),
            datagram_len: tun_mtu + DATA_HEADER_LEN,
        });

        let provider = tls::provider();
        let refused_sink = Arc::downgrade(&shared);
        let verifier = KnownClientKeys::new(
            known_keys,
            provider.clone(),
            Box::new(move |key, reason| {
                if let Some(shared) = refused_sink.upgrade() {
                    shared.emit(Event::HandshakeRefused { key, reason: reason.to_string() });
                }
            }),
        );
        let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| io_err("tls", e))?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_single_cert(vec![identity.cert.clone()], identity.private_key())
            .map_err(|e| io_err("tls", e))?;
        server_tls.alpn_protocols = vec![tls::ALPN.to_vec()];
        let quic_server = QuicServerConfig::try_from(server_tls).map_err(|e| io_err("quic", e))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(quic_server));
        let transport = Arc::new(transport_config(cfg.path_mtu, cfg.listen.is_ipv4(), cfg.congestion));
        server_config.transport_config(transport.clone());
        let listener =
            quinn::Endpoint::new(endpoint_config(), Some(server_config), socket, Arc::new(quinn::TokioRuntime))?;

        runtime.spawn(accept_loop(shared.clone(), listener.clone()));
        runtime.spawn(tun_reader(shared.clone()));
        for i in 0..shared.peers.len() {
            runtime.spawn(reorder_timer(shared.clone(), i));
        }
        let node = Node {
            shared,
            listener,
            public_key: identity.public_key,
            identity,
            transport,
            wans: Mutex::new(HashMap::new()),
            local_addr,
            inner_mtu: tun_mtu,
            runtime: Some(runtime),
        };
        match cfg.wans {
            None => node.start_dialers("default", false, node.listener.clone())?,
            Some(wans) => {
                for wan in wans {
                    node.add_wan(wan)?;
                }
            }
        }
        Ok(node)
    }

    fn client_config(&self, server_key: [u8; 32]) -> io::Result<quinn::ClientConfig> {
        let provider = tls::provider();
        let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| io_err("tls", e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedServerKey::new(server_key, provider)))
            .with_client_auth_cert(vec![self.identity.cert.clone()], self.identity.private_key())
            .map_err(|e| io_err("tls", e))?;
        tls.alpn_protocols = vec![tls::ALPN.to_vec()];
        let quic = QuicClientConfig::try_from(tls).map_err(|e| io_err("quic", e))?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        config.transport_config(self.transport.clone());
        Ok(config)
    }

    fn start_dialers(&self, wan: &str, backup: bool, endpoint: quinn::Endpoint) -> io::Result<()> {
        let runtime = self.runtime.as_ref().ok_or_else(|| io_err("node", "stopped"))?;
        let mut dialers = Vec::new();
        for (index, peer) in self.shared.peers.iter().enumerate() {
            if let Some(addr) = peer.cfg.endpoint {
                let target =
                    DialTarget { index, addr, wan: wan.to_string(), backup, config: self.client_config(peer.cfg.key)? };
                dialers.push(runtime.spawn(dialer(self.shared.clone(), endpoint.clone(), target)));
            }
        }
        self.wans.lock().unwrap().insert(wan.to_string(), WanRuntime { dialers });
        Ok(())
    }

    /// Starts dialing every peer with an endpoint from this WAN (one path per peer).
    pub fn add_wan(&self, wan: WanConfig) -> io::Result<()> {
        if self.wans.lock().unwrap().contains_key(&wan.name) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("WAN {} already added", wan.name)));
        }
        let runtime = self.runtime.as_ref().ok_or_else(|| io_err("node", "stopped"))?;
        let _guard = runtime.enter();
        let socket = bind_wan(wan.device.as_deref(), SocketAddr::new(wan.local, 0), wan.mark)?;
        let endpoint = quinn::Endpoint::new(endpoint_config(), None, socket, Arc::new(quinn::TokioRuntime))?;
        self.start_dialers(&wan.name, wan.backup, endpoint)
    }

    /// Stops dialing from this WAN and closes its paths at once (the WAN lost its link or address).
    pub fn remove_wan(&self, name: &str) -> bool {
        let Some(runtime) = self.wans.lock().unwrap().remove(name) else {
            return false;
        };
        for d in runtime.dialers {
            d.abort();
        }
        for (index, peer) in self.shared.peers.iter().enumerate() {
            let gone: Vec<_> = peer.paths.read().unwrap().iter().filter(|p| p.wan == name).cloned().collect();
            for path in gone {
                path.up.store(false, Ordering::Relaxed);
                // The link went away just now: what it sent in the last RTT (plus margin) may be lost.
                let window = path.srtt_us.load(Ordering::Relaxed) + 50_000;
                self.shared.resend_from_failed(index, &path, window);
                path.conn.close(3u32.into(), b"WAN removed");
            }
        }
        true
    }

    pub fn peer_stats(&self) -> Vec<PeerStats> {
        self.shared
            .peers
            .iter()
            .map(|p| {
                let paths = p.paths.read().unwrap();
                let best = paths.iter().filter(|x| x.up.load(Ordering::Relaxed)).min_by_key(|x| x.conn.rtt());
                let c = &p.counters;
                let (reorder, timeout_us) = {
                    let buffer = p.reorder.lock().unwrap();
                    (buffer.stats, buffer.timeout_us())
                };
                PeerStats {
                    key: p.cfg.key,
                    endpoint: best.map(|x| x.conn.remote_address()).or(p.cfg.endpoint),
                    connected: !paths.is_empty(),
                    rtt: best.map(|x| x.conn.rtt()),
                    last_handshake: *p.last_handshake.lock().unwrap(),
                    tx_packets: c.tx_packets.load(Ordering::Relaxed),
                    tx_bytes: c.tx_bytes.load(Ordering::Relaxed),
                    rx_packets: c.rx_packets.load(Ordering::Relaxed),
                    rx_bytes: c.rx_bytes.load(Ordering::Relaxed),
                    tx_dropped: c.tx_dropped.load(Ordering::Relaxed),
                    rx_dropped: c.rx_dropped.load(Ordering::Relaxed),
                    retransmitted: c.retransmitted.load(Ordering::Relaxed),
                    paths: paths
                        .iter()
                        .map(|x| {
                            let health = x.health.lock().unwrap();
                            PathStats {
                                wan: x.wan.clone(),
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
                            }
                        })
                        .collect(),
                    reorder,
                    reorder_timeout: Duration::from_micros(timeout_us),
                }
            })
            .collect()
    }

    pub fn no_route_drops(&self) -> u64 {
        self.shared.no_route.load(Ordering::Relaxed)
    }

    pub fn drain_events(&self) -> Vec<Event> {
        self.shared.events.lock().unwrap().drain(..).collect()
    }

    pub fn stop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            self.listener.close(0u32.into(), b"node stopping");
            for peer in &self.shared.peers {
                for path in peer.paths.read().unwrap().iter() {
                    path.conn.close(0u32.into(), b"node stopping");
                }
            }
            runtime.shutdown_timeout(Duration::from_millis(500));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}
