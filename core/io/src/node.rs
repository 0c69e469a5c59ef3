//! A QuicEther node: one QUIC endpoint, its peers, and the packet loops between the TUN device and them.
//!
//! Packet path, in the order of this file:
//!   outbound: `tun_reader` (TUN read → destination → peer by allowed IPs) → `send_datagram` on the peer's
//!             newest connection (one IP packet per QUIC DATAGRAM frame, never a stream)
//!   inbound:  `connection_reader` (`read_datagram` → source must be in the peer's allowed IPs) → TUN write
//! Connections: `accept_loop` (peers dialing us) and one `dialer` per peer with a configured endpoint.
//! A peer may briefly have several connections (both sides dialed, or a peer restarted): we receive on all
//! and send on the newest; dead ones time out and are dropped.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{self, Read};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use quicether_proto::allowed_ips::{packet_addrs, AllowedIps, Prefix};
use quicether_proto::certkey::ed25519_key_of_cert;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use tokio::io::unix::AsyncFd;

use crate::tls::{self, Identity, KnownClientKeys, PinnedServerKey};
use crate::tun::open_tun;

/// A silent peer is declared gone after this long; keepalives make silence mean failure. Short, so a
/// restarted peer is re-dialed within a few seconds.
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
/// Keepalive well under the idle timeout and under typical NAT UDP mapping life times (≥ 30 s).
const KEEPALIVE_INTERVAL: Duration = Duration::from_millis(500);
/// Control datagram the accepting side sends once it has accepted a connection. In TLS 1.3 the client
/// finishes its handshake before the server has checked the client's certificate, so a dialer only
/// trusts a connection once a datagram arrives from the peer. IP packets never start with a 0 nibble.
const HELLO: &[u8] = &[0x00];
/// Sent twice: datagrams are unreliable, and a lost hello costs a redial.
const HELLO_COPIES: usize = 2;
/// How long a dialer waits for the first datagram after its handshake.
const ACCEPT_PROOF_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between failed dial attempts.
const REDIAL_INTERVAL: Duration = Duration::from_secs(1);
/// Bounded queues: datagrams beyond these are dropped (oldest first by quinn), never buffered without end.
const DATAGRAM_SEND_BUFFER: usize = 2 << 20;
const DATAGRAM_RECV_BUFFER: usize = 4 << 20;
/// UDP socket buffers sized for a few hundred Mbit/s with bursts (set with the *FORCE variants as root).
const SOCKET_BUFFER: libc::c_int = 8 << 20;
/// QUIC per-packet overhead above the UDP payload that a DATAGRAM frame must leave room for:
/// short header (1) + connection id (≤ 20) + packet number (≤ 4) + AEAD tag (16) + frame type and length (3).
pub const QUIC_DATAGRAM_OVERHEAD: usize = 1 + 20 + 4 + 16 + 3;
/// IPv4 (20) + UDP (8) headers around each QUIC packet; IPv6 would be 48, we size for it when binding v6.
const IPV4_UDP_OVERHEAD: usize = 28;
const IPV6_UDP_OVERHEAD: usize = 48;

pub struct NodeConfig {
    pub listen: SocketAddr,
    pub tun_name: String,
    /// MTU of the underlying network path (1500 on Ethernet): QUIC packets are sized to fit it unfragmented.
    pub path_mtu: u16,
    pub seed: [u8; 32],
}

/// Largest inner IP packet that fits one DATAGRAM frame on a path with `path_mtu`, for a socket of `listen`'s family.
pub fn inner_mtu(path_mtu: u16, listen: &SocketAddr) -> usize {
    let ip_udp = if listen.is_ipv4() { IPV4_UDP_OVERHEAD } else { IPV6_UDP_OVERHEAD };
    (path_mtu as usize).saturating_sub(ip_udp + QUIC_DATAGRAM_OVERHEAD)
}

pub struct PeerConfig {
    pub key: [u8; 32],
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<Prefix>,
}

/// Something that happened which the daemon should log or act on.
#[derive(Clone, Debug)]
pub enum Event {
    PeerConnected { key: [u8; 32], remote: SocketAddr },
    PeerDisconnected { key: [u8; 32], reason: String },
    HandshakeRefused { key: Option<[u8; 32]>, remote: Option<SocketAddr>, reason: String },
    DialFailed { key: [u8; 32], reason: String },
}

#[derive(Default)]
struct Counters {
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    /// Outbound packets dropped: no connection yet, or the bounded send queue was full.
    tx_dropped: AtomicU64,
    /// Inbound packets dropped: source outside the peer's allowed IPs, or TUN write failed.
    rx_dropped: AtomicU64,
}

struct Peer {
    cfg: PeerConfig,
    connections: Mutex<Vec<quinn::Connection>>,
    last_handshake: Mutex<Option<SystemTime>>,
    counters: Counters,
}

impl Peer {
    fn newest(&self) -> Option<quinn::Connection> {
        self.connections.lock().unwrap().last().cloned()
    }
}

/// Per-peer numbers for `quicether status`.
pub struct PeerStats {
    pub key: [u8; 32],
    pub endpoint: Option<SocketAddr>,
    pub connected: bool,
    pub connections: usize,
    pub rtt: Option<Duration>,
    pub last_handshake: Option<SystemTime>,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_dropped: u64,
    pub rx_dropped: u64,
}

struct Shared {
    peers: Vec<Peer>,
    by_key: HashMap<[u8; 32], usize>,
    allowed: AllowedIps,
    tun: AsyncFd<File>,
    events: Mutex<VecDeque<Event>>,
    notify_fd: Option<RawFd>,
    /// Outbound packets with no peer for their destination.
    no_route: AtomicU64,
}

impl Shared {
    fn emit(&self, event: Event) {
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
}

/// A running node. Dropping it (or `stop`) closes every connection, the socket and the TUN device.
pub struct Node {
    runtime: Option<tokio::runtime::Runtime>,
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    pub public_key: [u8; 32],
    pub local_addr: SocketAddr,
    pub inner_mtu: usize,
}

fn io_err(context: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{context}: {e}"))
}

fn set_socket_buffers(sock: &UdpSocket) {
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE, libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: plain setsockopt with an int; failure (not root) just keeps the default size.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&SOCKET_BUFFER as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

fn transport_config(cfg: &NodeConfig) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("small duration")));
    t.keep_alive_interval(Some(KEEPALIVE_INTERVAL));
    t.datagram_send_buffer_size(DATAGRAM_SEND_BUFFER);
    t.datagram_receive_buffer_size(Some(DATAGRAM_RECV_BUFFER));
    // The TUN MTU is fixed from the path MTU, so QUIC packets are that size from the first one on.
    let udp_payload = (cfg.path_mtu as usize).saturating_sub(if cfg.listen.is_ipv4() {
        IPV4_UDP_OVERHEAD
    } else {
        IPV6_UDP_OVERHEAD
    }) as u16;
    t.initial_mtu(udp_payload.max(1200));
    t.min_mtu(udp_payload.max(1200));
    t.mtu_discovery_config(None);
    // Data travels in DATAGRAM frames only; no application streams are opened.
    t.max_concurrent_uni_streams(0u8.into());
    t.max_concurrent_bidi_streams(0u8.into());
    t
}

impl Node {
    pub fn start(cfg: NodeConfig, peers: Vec<PeerConfig>, notify_fd: Option<RawFd>) -> io::Result<Node> {
        let identity = Identity::from_seed(&cfg.seed).map_err(|e| io_err("identity", e))?;
        let tun = open_tun(&cfg.tun_name)?;
        // SAFETY: setting O_NONBLOCK on an fd we own.
        unsafe {
            let flags = libc::fcntl(tun.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(tun.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        let socket = UdpSocket::bind(cfg.listen).map_err(|e| io::Error::new(e.kind(), format!("listen {}: {e}", cfg.listen)))?;
        set_socket_buffers(&socket);
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
                connections: Mutex::new(Vec::new()),
                last_handshake: Mutex::new(None),
                counters: Counters::default(),
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
        });

        let provider = tls::provider();
        let refused_sink = Arc::downgrade(&shared);
        let verifier = KnownClientKeys::new(
            known_keys,
            provider.clone(),
            Box::new(move |key, reason| {
                if let Some(shared) = refused_sink.upgrade() {
                    shared.emit(Event::HandshakeRefused { key, remote: None, reason: reason.to_string() });
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
        let transport = Arc::new(transport_config(&cfg));
        server_config.transport_config(transport.clone());

        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server_config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;

        runtime.spawn(accept_loop(shared.clone(), endpoint.clone()));
        runtime.spawn(tun_reader(shared.clone()));
        for (i, peer) in shared.peers.iter().enumerate() {
            if let Some(addr) = peer.cfg.endpoint {
                let client = client_config(&identity, peer.cfg.key, provider.clone(), transport.clone())?;
                runtime.spawn(dialer(shared.clone(), endpoint.clone(), i, addr, client));
            }
        }
        let mtu = inner_mtu(cfg.path_mtu, &cfg.listen);
        Ok(Node { runtime: Some(runtime), shared, endpoint, public_key: identity.public_key, local_addr, inner_mtu: mtu })
    }

    pub fn peer_stats(&self) -> Vec<PeerStats> {
        self.shared
            .peers
            .iter()
            .map(|p| {
                let conns = p.connections.lock().unwrap();
                let newest = conns.last();
                let c = &p.counters;
                PeerStats {
                    key: p.cfg.key,
                    endpoint: newest.map(|c| c.remote_address()).or(p.cfg.endpoint),
                    connected: newest.is_some(),
                    connections: conns.len(),
                    rtt: newest.map(|c| c.rtt()),
                    last_handshake: *p.last_handshake.lock().unwrap(),
                    tx_packets: c.tx_packets.load(Ordering::Relaxed),
                    tx_bytes: c.tx_bytes.load(Ordering::Relaxed),
                    rx_packets: c.rx_packets.load(Ordering::Relaxed),
                    rx_bytes: c.rx_bytes.load(Ordering::Relaxed),
                    tx_dropped: c.tx_dropped.load(Ordering::Relaxed),
                    rx_dropped: c.rx_dropped.load(Ordering::Relaxed),
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
            self.endpoint.close(0u32.into(), b"node stopping");
            runtime.shutdown_timeout(Duration::from_millis(500));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

fn client_config(
    identity: &Identity,
    server_key: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
    transport: Arc<quinn::TransportConfig>,
) -> io::Result<quinn::ClientConfig> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| io_err("tls", e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServerKey::new(server_key, provider)))
        .with_client_auth_cert(vec![identity.cert.clone()], identity.private_key())
        .map_err(|e| io_err("tls", e))?;
    tls.alpn_protocols = vec![tls::ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| io_err("quic", e))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport);
    Ok(config)
}

// ---- outbound: TUN → peer ----

async fn tun_reader(shared: Arc<Shared>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let n = match shared.tun.readable().await {
            Ok(mut guard) => match guard.try_io(|fd| fd.get_ref().read(&mut buf)) {
                Ok(Ok(n)) => n,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(_)) => return, // the device is gone: the node is stopping
                Err(_would_block) => continue,
            },
            Err(_) => return,
        };
        let packet = &buf[..n];
        let Some((_, dst)) = packet_addrs(packet) else { continue };
        let Some(index) = shared.allowed.lookup(dst) else {
            shared.no_route.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let peer = &shared.peers[index];
        let sent = match peer.newest() {
            Some(conn) => conn.send_datagram(Bytes::copy_from_slice(packet)).is_ok(),
            None => false,
        };
        let c = &peer.counters;
        if sent {
            c.tx_packets.fetch_add(1, Ordering::Relaxed);
            c.tx_bytes.fetch_add(n as u64, Ordering::Relaxed);
        } else {
            c.tx_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

// ---- inbound: peer → TUN ----

async fn connection_reader(shared: Arc<Shared>, index: usize, conn: quinn::Connection) {
    let peer = &shared.peers[index];
    let reason = loop {
        match conn.read_datagram().await {
            Ok(packet) if packet[..] == *HELLO => continue,
            Ok(packet) => deliver(&shared, index, &packet),
            Err(e) => break e.to_string(),
        }
    };
    let remaining = {
        let mut conns = peer.connections.lock().unwrap();
        conns.retain(|c| c.stable_id() != conn.stable_id());
        conns.len()
    };
    if remaining == 0 {
        shared.emit(Event::PeerDisconnected { key: peer.cfg.key, reason });
    }
}

/// Writes one inner packet from peer `index` to the TUN device if its source is the peer's to use.
fn deliver(shared: &Shared, index: usize, packet: &[u8]) {
    let allowed = packet_addrs(packet).is_some_and(|(src, _)| shared.allowed.allows(index, src));
    // SAFETY: writing a valid buffer to the TUN fd; EAGAIN/failure drops this packet only.
    let written = allowed
        && unsafe { libc::write(shared.tun.as_raw_fd(), packet.as_ptr().cast(), packet.len()) } == packet.len() as isize;
    let c = &shared.peers[index].counters;
    if written {
        c.rx_packets.fetch_add(1, Ordering::Relaxed);
        c.rx_bytes.fetch_add(packet.len() as u64, Ordering::Relaxed);
    } else {
        c.rx_dropped.fetch_add(1, Ordering::Relaxed);
    }
}

fn register(shared: &Arc<Shared>, index: usize, conn: quinn::Connection, first: Option<Bytes>) {
    let peer = &shared.peers[index];
    if let Some(packet) = first.filter(|p| p[..] != *HELLO) {
        deliver(shared, index, &packet);
    }
    peer.connections.lock().unwrap().push(conn.clone());
    *peer.last_handshake.lock().unwrap() = Some(SystemTime::now());
    shared.emit(Event::PeerConnected { key: peer.cfg.key, remote: conn.remote_address() });
    tokio::spawn(connection_reader(shared.clone(), index, conn));
}

// ---- connections ----

fn peer_key_of(conn: &quinn::Connection) -> Option<[u8; 32]> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast_ref::<Vec<rustls::pki_types::CertificateDer<'static>>>()?;
    ed25519_key_of_cert(certs.first()?)
}

async fn accept_loop(shared: Arc<Shared>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => match peer_key_of(&conn).and_then(|k| shared.by_key.get(&k).copied()) {
                    Some(index) => {
                        for _ in 0..HELLO_COPIES {
                            let _ = conn.send_datagram(Bytes::from_static(HELLO));
                        }
                        register(&shared, index, conn, None);
                    }
                    None => conn.close(1u32.into(), b"unknown peer"),
                },
                Err(e) => {
                    // Refusals by our verifier are reported there (once per key); other failures are
                    // transient (timeouts, resets) and come back as the peer retries.
                    let _ = (remote, e);
                }
            }
        });
    }
}

/// Waits for the peer's first datagram: proof that it accepted our certificate too.
async fn accepted(conn: quinn::Connection) -> Result<(quinn::Connection, Bytes), String> {
    match tokio::time::timeout(ACCEPT_PROOF_TIMEOUT, conn.read_datagram()).await {
        Ok(Ok(first)) => Ok((conn, first)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => {
            conn.close(2u32.into(), b"no hello");
            Err("peer completed the handshake but sent nothing".into())
        }
    }
}

async fn dialer(shared: Arc<Shared>, endpoint: quinn::Endpoint, index: usize, addr: SocketAddr, config: quinn::ClientConfig) {
    let mut last_error = String::new();
    loop {
        let existing = shared.peers[index].newest();
        if let Some(conn) = existing {
            conn.closed().await;
            continue;
        }
        let attempt = match endpoint.connect_with(config.clone(), addr, tls::SERVER_NAME) {
            Ok(connecting) => match connecting.await {
                Ok(conn) => accepted(conn).await,
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        match attempt {
            Ok((conn, first)) => {
                last_error.clear();
                register(&shared, index, conn, Some(first));
                continue;
            }
            Err(reason) => {
                // Report a failure when its reason changes, not on every retry.
                if reason != last_error {
                    shared.emit(Event::DialFailed { key: shared.peers[index].cfg.key, reason: reason.clone() });
                    last_error = reason;
                }
            }
        }
        tokio::time::sleep(REDIAL_INTERVAL).await;
    }
}
