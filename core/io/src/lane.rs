//! The TCP lane (issue 16): a site router terminates its LAN's TCP connections (nft TPROXY hands them to a
//! transparent listener here) and carries each one's bytes to the peer over its own MPTCP connection (the
//! kernel spreads it over one subflow per WAN and moves data off a dead one), inside TLS 1.3 authenticated by
//! the same pinned node keys as the QUIC paths (`tls.rs`). The first bytes inside TLS are the original
//! destination (`quicether_proto::lane`); the peer connects there and copies bytes both ways.
//!
//! Bounds: at most `max_connections` connections on each side at once (beyond, a connection is closed and
//! counted, with a log line the first time and then every 1000th); each connection copies through two
//! buffers of `COPY_BUFFER` bytes, and rustls buffers at most `TLS_BUFFER` of plaintext each way, so a LAN
//! reader that stops reading stalls its own connection (TCP flow control back to the sender) and cannot
//! grow memory: in all about `max_connections * 4 * 64 KiB` plus the kernel's socket buffers.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use quicether_proto::certkey::ed25519_key_of_cert;
use quicether_proto::lane::{LaneHeader, MAX_HEADER_LEN};
use quicether_proto::lane_policy::LanePolicy;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::lane_copy;
use crate::lane_nudge::{writes_pass_through, NudgedStream};
use crate::routes::route_device;
use crate::sockets::{set_int, set_option};
use crate::tls::{self, CurrentIdentity, KnownClientKeys, SharedTrust};

/// The lane's ALPN: a lane TLS connection can never be taken for a QUIC path's, or the other way round.
pub const ALPN: &[u8] = b"quicether-lane/1";
/// Linux's IPPROTO_MPTCP and TCP_IS_MPTCP (linux/in.h, linux/tcp.h; the libc crate has no constants for them).
const IPPROTO_MPTCP: i32 = 262;
const TCP_IS_MPTCP: i32 = 43;
pub const COPY_BUFFER: usize = 64 * 1024;
pub const TLS_BUFFER: usize = 64 * 1024;
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// A lane connection must be authenticated and name its destination within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a failed connection's ends may take to hand over the bytes they hold before the reset.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What status shows of a lane end, counted as it happens.
#[derive(Debug, Default)]
pub struct LaneCounters {
    pub connections: AtomicU64,
    pub active: AtomicU64,
    /// Bytes towards the far end (site: LAN → peer; gateway: peer → destination), and back.
    pub bytes_out: AtomicU64,
    pub bytes_in: AtomicU64,
    /// Gateway: TLS handshakes refused (unknown key) or headers refused. Site: dials that failed.
    pub refused: AtomicU64,
    pub failed: AtomicU64,
    /// Connections closed at once because `max_connections` were open.
    pub at_cap: AtomicU64,
    /// Site: lane connections that fell back to plain TCP (MPTCP stripped on the way, or a peer without it).
    pub fallback: AtomicU64,
    /// Reads of lane sockets that found data the kernel had not woken the reader for (`lane_nudge.rs`).
    pub missed_wakeups: Arc<AtomicU64>,
    /// Connections reset because their lane socket held received bytes it did not deliver (`lane_nudge.rs`).
    pub stuck_resets: Arc<AtomicU64>,
}

pub type LogSink = Arc<dyn Fn(String) + Send + Sync>;

/// An MPTCP stream socket for `addr`'s family (the kernel falls back to plain TCP on the wire when the
/// other end or a middlebox does not speak MPTCP).
fn mptcp_socket(addr: &SocketAddr) -> io::Result<TcpSocket> {
    let family = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket(2); the fd is owned by the TcpSocket below from here on.
    let fd =
        unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, IPPROTO_MPTCP) };
    if fd < 0 {
        return Err(io::Error::other(format!(
            "MPTCP socket: {} (is net.mptcp.enabled 1?)",
            io::Error::last_os_error()
        )));
    }
    // SAFETY: `fd` is a fresh, valid socket nobody else owns.
    let std = unsafe { <std::net::TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    Ok(TcpSocket::from_std_stream(std))
}

/// Whether an MPTCP connection fell back to plain TCP: the other end or a middlebox on the way did not let
/// MP_CAPABLE through, so the connection has one path and no failover. TCP_IS_MPTCP (Linux 5.16) answers 1 on
/// an MPTCP connection and 0 once it is plain TCP (the option then goes to its one TCP subflow). A kernel
/// that does not know the option is taken to mean no fallback: the lane is kept, as before this check.
pub fn fell_back_to_tcp(stream: &TcpStream) -> bool {
    let mut value: libc::c_int = 1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into a live c_int with its size.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            TCP_IS_MPTCP,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    rc == 0 && value == 0
}

/// The gateway's lane listener: MPTCP on `addr` (plain TCP clients are accepted too, as MPTCP does).
pub fn mptcp_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = mptcp_socket(&addr)?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// A TCP socket with IP_TRANSPARENT: it may accept connections to any address, or connect from one this
/// host does not have.
fn transparent_socket(addr: &SocketAddr) -> io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    let (level, name) =
        if addr.is_ipv4() { (libc::SOL_IP, libc::IP_TRANSPARENT) } else { (libc::SOL_IPV6, libc::IPV6_TRANSPARENT) };
    set_int(&socket, level, name, 1).map_err(|e| io::Error::other(format!("IP_TRANSPARENT: {e}")))?;
    Ok(socket)
}

/// The site's listener for TPROXY'd LAN connections: IP_TRANSPARENT, so it accepts connections addressed to
/// any destination, whose local address is then the original destination.
pub fn transparent_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = transparent_socket(&addr)?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// One end's limits and counters.
pub struct LaneLimits {
    slots: Arc<Semaphore>,
    max: usize,
    pub counters: Arc<LaneCounters>,
    log: LogSink,
}

impl LaneLimits {
    pub fn new(max_connections: usize, log: LogSink) -> Self {
        let slots = Arc::new(Semaphore::new(max_connections));
        Self { slots, max: max_connections, counters: Arc::default(), log }
    }

    /// A slot for one more connection, or None (counted, logged the first time and every 1000th).
    fn admit(&self, side: &str) -> Option<tokio::sync::OwnedSemaphorePermit> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                let n = self.counters.at_cap.fetch_add(1, Ordering::Relaxed);
                if n.is_multiple_of(1000) {
                    (self.log)(format!(
                        "tcp lane ({side}): {} connections open, the cap; closing new ones ({} so far)",
                        self.max,
                        n + 1
                    ));
                }
                None
            }
        }
    }
}

/// Keepalive on a lane connection's plain TCP end (the LAN host's, or the destination's): once it is idle for
/// `KEEPALIVE_IDLE_S`, the kernel probes the host, and a host whose socket is gone answers with a reset, which
/// `relay_until_failed` sees. Without both a connection whose other direction is stuck outlives its host for
/// good: seen in the lab (about 1 in 1000 lane connections under load), a lane socket stopped delivering
/// (its data held in the kernel's MPTCP receive queue, no byte readable), and its LAN end stayed open after
/// the LAN client had closed it and died, as nothing read or wrote that end any more.
const KEEPALIVE_IDLE_S: libc::c_int = 10;
const KEEPALIVE_INTERVAL_S: libc::c_int = 5;
const KEEPALIVE_PROBES: libc::c_int = 3;

fn keep_alive(stream: &TcpStream) -> io::Result<()> {
    set_int(stream, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    set_int(stream, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, KEEPALIVE_IDLE_S)?;
    set_int(stream, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S)?;
    set_int(stream, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, KEEPALIVE_PROBES)
}

/// Carries a lane connection's bytes both ways between its plain TCP end (`plain`: the LAN host's on the
/// site, the destination's on the far end) and its lane end (`lane`, TLS over the MPTCP socket) until
/// both directions are closed or one side fails. `counts` grow with the bytes read from `plain` and from
/// `lane`, as they are read.
///
/// A failure ends the connection as a reset would end a direct one: what was sent before it arrives, then
/// the host sees its connection broken, not a stream that ends as if complete. So the lane's held bytes
/// go out, then its FIN without TLS's close_notify (the far end reads them, fails on the missing
/// close_notify and does the same with its own host); the plain end's send queue drains (for at most
/// `DRAIN_TIMEOUT`), then it is reset. A failure is an error on either side, or, once the plain end's
/// host half-closed the connection and nothing reads that socket any more, the socket failing (its
/// keepalive finding the host gone).
async fn carry_both_ways<L>(mut plain: TcpStream, mut lane: L, counts: [&AtomicU64; 2]) -> io::Result<()>
where
    L: AsyncRead + AsyncWrite + AsRawFd + Unpin,
{
    // A second descriptor of the plain end's socket, whose readiness is tokio's own, apart from the
    // relay's. A descriptor short (EMFILE) fails the connection.
    let watch = plain.as_fd().try_clone_to_owned().and_then(|fd| TcpStream::from_std(fd.into()));
    let plain_ended = Notify::new();
    let result = match watch {
        Ok(watch) => relay_until_failed(&watch, &plain_ended, relay(&mut plain, &mut lane, &plain_ended, counts)).await,
        Err(e) => Err(e),
    };
    if result.is_err() {
        let handed_over = async {
            let _ = lane.flush().await;
            // SAFETY: shutdown(2) of the lane's socket, which `lane` owns and keeps open here.
            unsafe { libc::shutdown(lane.as_raw_fd(), libc::SHUT_WR) };
            drained(&plain).await;
        };
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, handed_over).await;
        let _ = reset_on_close(plain.as_raw_fd());
    }
    result
}

/// `relay`, ended when the socket `watch` is a descriptor of fails after `plain_ended`: the relay would
/// not see that, as it no longer reads a socket whose host half-closed it. Before, an error is the relay's
/// to find, after the bytes that came before it.
async fn relay_until_failed(
    watch: &TcpStream,
    plain_ended: &Notify,
    relay: impl Future<Output = io::Result<()>>,
) -> io::Result<()> {
    let failed = async {
        plain_ended.notified().await;
        // ERROR readiness is only ever reported with the error bit set.
        match watch.ready(Interest::ERROR).await {
            Ok(_) => watch.take_error().ok().flatten().unwrap_or_else(|| io::Error::other("socket error")),
            Err(e) => e,
        }
    };
    tokio::select! {
        done = relay => done,
        e = failed => Err(e),
    }
}

/// Waits until `socket` has sent everything and had it acknowledged, or is closed (a reset empties it).
async fn drained(socket: &TcpStream) {
    loop {
        let mut unacked: libc::c_int = 0;
        // SAFETY: ioctl(SIOCOUTQ) writes one int, which lives across the call.
        let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::TIOCOUTQ, &mut unacked) };
        if rc != 0 || unacked == 0 || matches!(socket.take_error(), Ok(Some(_))) || tcp_state(socket) == TCP_CLOSE {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// linux/tcp_states.h
const TCP_CLOSE: u8 = 7;

/// The TCP state of `socket` (`tcpi_state`, TCP_INFO's first byte); TCP_CLOSE where it cannot be read.
fn tcp_state(socket: &TcpStream) -> u8 {
    let mut info = [0u8; 8];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which lives across the call.
    let rc = unsafe {
        libc::getsockopt(socket.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, info.as_mut_ptr().cast(), &mut len)
    };
    if rc == 0 {
        info[0]
    } else {
        TCP_CLOSE
    }
}

/// SO_LINGER with a zero timeout: closing the socket sends a reset (MPTCP: a fast close) instead of a FIN.
fn reset_on_close(socket: RawFd) -> io::Result<()> {
    // `socket` is open: the stream that owns it is the caller's until after this call.
    set_option(&socket, libc::SOL_SOCKET, libc::SO_LINGER, libc::linger { l_onoff: 1, l_linger: 0 })
}

/// Copies both ways through bounded buffers (`lane_copy`); `plain_ended` is told when `plain`'s host
/// half-closed.
async fn relay<A, B>(plain: &mut A, lane: &mut B, plain_ended: &Notify, counts: [&AtomicU64; 2]) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut plain = CountedReads { inner: plain, count: counts[0], ended: Some(plain_ended) };
    let mut lane = CountedReads { inner: lane, count: counts[1], ended: None };
    lane_copy::both_ways(&mut plain, &mut lane, COPY_BUFFER).await
}

/// A stream whose reads add the bytes they return to `count`, and tell `ended` of the end of the stream;
/// writes pass through.
struct CountedReads<'a, S> {
    inner: S,
    count: &'a AtomicU64,
    ended: Option<&'a Notify>,
}

impl<S: AsyncRead + Unpin> AsyncRead for CountedReads<'_, S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        this.count.fetch_add(read as u64, Ordering::Relaxed);
        if let (Poll::Ready(Ok(())), 0, Some(ended)) = (&polled, read, this.ended) {
            if buf.remaining() > 0 {
                ended.notify_one();
            }
        }
        polled
    }
}

writes_pass_through!([S: AsyncWrite + Unpin] CountedReads<'_, S>);

/// Called when lane connections to the peer keep falling back to plain TCP (see `fell_back_to_tcp`).
pub type FallbackNotice = Box<dyn Fn() + Send + Sync>;
/// How many lane connections in a row must fall back before the daemon is told: a middlebox that strips
/// MPTCP strips it from every connection, while a lone fallback can come from the far end's load (a SYN
/// answered with a cookie) and says nothing about the way.
pub const FALLBACKS_IN_A_ROW: u32 = 3;

/// The site side: dials one peer's lane for each LAN connection.
pub struct LaneDialer {
    connector: TlsConnector,
    peer: SocketAddr,
    on_fallback: Option<FallbackNotice>,
    /// Lane connections in a row that fell back (reset by one that did not, and when the daemon is told).
    fallbacks_in_a_row: AtomicU64,
}

impl LaneDialer {
    /// `peer_key` is pinned (and with `members_of`, its membership required), as for the peer's QUIC paths.
    pub fn new(
        identity: Arc<CurrentIdentity>,
        peer_key: [u8; 32],
        members_of: Option<SharedTrust>,
        peer: SocketAddr,
    ) -> Result<Self, String> {
        let mut config = tls::client_tls(identity, peer_key, members_of, ALPN)?;
        config.enable_early_data = false;
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            peer,
            on_fallback: None,
            fallbacks_in_a_row: AtomicU64::new(0),
        })
    }

    /// `notice` is called when `FALLBACKS_IN_A_ROW` lane connections in a row fell back to plain TCP. They
    /// are still carried (they work, on one path): the daemon sends the peer's next ones through the QUIC bond.
    pub fn on_fallback(mut self, notice: FallbackNotice) -> Self {
        self.on_fallback = Some(notice);
        self
    }

    /// Carries `lan` (a connection to `destination`) over a new MPTCP + TLS connection to the peer.
    pub async fn carry(&self, lan: TcpStream, destination: SocketAddr, counters: &LaneCounters) -> io::Result<()> {
        // The far end judges its ACLs on the LAN host's address, and checks that this peer speaks for it.
        let source = lan.peer_addr()?.ip().to_canonical();
        let header =
            LaneHeader { source, destination: SocketAddr::new(destination.ip().to_canonical(), destination.port()) }
                .encode()
                .map_err(io::Error::other)?;
        let dial = async {
            let stream = mptcp_socket(&self.peer)?.connect(self.peer).await?;
            // Known once the handshake is done: the SYN-ACK came back without MP_CAPABLE.
            if fell_back_to_tcp(&stream) {
                counters.fallback.fetch_add(1, Ordering::Relaxed);
                let in_a_row = self.fallbacks_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
                if in_a_row >= u64::from(FALLBACKS_IN_A_ROW) {
                    self.fallbacks_in_a_row.store(0, Ordering::Relaxed);
                    if let Some(notice) = &self.on_fallback {
                        notice();
                    }
                }
            } else {
                self.fallbacks_in_a_row.store(0, Ordering::Relaxed);
            }
            stream.set_nodelay(true)?;
            let name = rustls::pki_types::ServerName::try_from(tls::SERVER_NAME).expect("a valid name");
            let stream = NudgedStream::new(stream, counters.missed_wakeups.clone(), counters.stuck_resets.clone());
            let mut tls = self.connector.connect(name, stream).await?;
            tls.get_mut().1.set_buffer_limit(Some(TLS_BUFFER));
            tls.write_all(&header).await?;
            Ok::<_, io::Error>(tls)
        };
        let dialed = match tokio::time::timeout(HANDSHAKE_TIMEOUT, dial).await {
            Ok(dialed) => dialed,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "lane dial timed out")),
        };
        let tls = match dialed {
            Ok(tls) => tls,
            Err(e) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                // The LAN host sees its connection reset, as if the destination had refused it.
                let _ = reset_on_close(lan.as_raw_fd());
                return Err(e);
            }
        };
        carry_both_ways(lan, tls, [&counters.bytes_out, &counters.bytes_in]).await
    }
}

/// Site side: accepts TPROXY'd LAN connections on `listener` and carries each through `dialer`.
pub async fn serve_site(listener: TcpListener, dialer: Arc<LaneDialer>, limits: Arc<LaneLimits>) {
    loop {
        let Ok((lan, _)) = listener.accept().await else { continue };
        let Some(permit) = limits.admit("site") else { continue };
        // TPROXY leaves the original destination as the accepted socket's local address.
        let Ok(destination) = lan.local_addr() else { continue };
        let (dialer, limits) = (dialer.clone(), limits.clone());
        tokio::spawn(async move {
            let counters = &limits.counters;
            counters.connections.fetch_add(1, Ordering::Relaxed);
            counters.active.fetch_add(1, Ordering::Relaxed);
            let _ = lan.set_nodelay(true);
            let _ = keep_alive(&lan);
            let _ = dialer.carry(lan, destination, counters).await;
            counters.active.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}

/// The gateway's TLS for the lane: clients are checked by `verifier` (pinned peers and members; no invite
/// keys: an invite joins, it never carries traffic).
pub fn acceptor(verifier: Arc<KnownClientKeys>, identity: Arc<CurrentIdentity>) -> Result<TlsAcceptor, String> {
    Ok(TlsAcceptor::from(Arc::new(tls::server_tls(verifier, identity, ALPN)?)))
}

/// Whether the peer with a key speaks for a source address.
pub type SpeaksFor = Box<dyn Fn(&[u8; 32], IpAddr) -> bool + Send + Sync>;

/// What a gateway's lane lets through, judged on each connection's header before it connects anywhere.
pub struct LaneGate {
    /// The destinations it ever connects to (`exit_destination`).
    pub destinations: DestinationPolicy,
    /// Whether the peer with this key speaks for this source address (it is among its allowed_ips): a peer
    /// cannot borrow another's address to pass an ACL, as with the QUIC paths' packets.
    pub speaks_for: SpeaksFor,
    /// The node's `[[acl]]` rules and default, as its firewall applies them to traffic from the tunnel.
    pub acl: Arc<RwLock<LanePolicy>>,
}

impl LaneGate {
    fn judge(&self, key: &[u8; 32], header: &LaneHeader) -> Result<(), String> {
        let destination = header.destination;
        if !(self.speaks_for)(key, header.source) {
            return Err(format!("source {} is not among the peer's allowed_ips", header.source));
        }
        if !(self.destinations)(&destination) {
            return Err(format!("destination {destination} is not one the lane connects to"));
        }
        self.acl
            .read()
            .unwrap()
            .judge(header.source, destination)
            .map_err(|why| format!("{} to {destination}: {why}", header.source))
    }
}

/// Gateway side: accepts lane connections, authenticates them, reads the header and connects to the
/// destination (from this host's own address: exit traffic leaves as the QUIC bond's NAT would have it).
pub async fn serve_gateway(listener: TcpListener, acceptor: TlsAcceptor, limits: Arc<LaneLimits>, gate: Arc<LaneGate>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let Some(permit) = limits.admit("gateway") else { continue };
        let (acceptor, limits, gate) = (acceptor.clone(), limits.clone(), gate.clone());
        tokio::spawn(async move {
            let counters = &limits.counters;
            if let Err(reason) = take_lane_connection(stream, &acceptor, counters, &gate).await {
                (limits.log)(format!("tcp lane (gateway): {reason}"));
            }
            drop(permit);
        });
    }
}

async fn take_lane_connection(
    stream: TcpStream,
    acceptor: &TlsAcceptor,
    counters: &LaneCounters,
    gate: &LaneGate,
) -> Result<(), String> {
    let _ = stream.set_nodelay(true);
    let opened = async {
        let stream = NudgedStream::new(stream, counters.missed_wakeups.clone(), counters.stuck_resets.clone());
        let mut tls = acceptor.accept(stream).await.map_err(|e| format!("refused: {e}"))?;
        tls.get_mut().1.set_buffer_limit(Some(TLS_BUFFER));
        let mut head = [0u8; MAX_HEADER_LEN];
        let mut filled = 0;
        let (header, used) = loop {
            if let Some(found) = LaneHeader::decode(&head[..filled]).map_err(|e| format!("refused: {e}"))? {
                break found;
            }
            let n = tls.read(&mut head[filled..]).await.map_err(|e| format!("refused: {e}"))?;
            if n == 0 {
                return Err("refused: closed before its header".to_string());
            }
            filled += n;
        };
        // The TLS verifier let only pinned keys and members in: the certificate is there and names its key.
        let key = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| ed25519_key_of_cert(c));
        let key = key.ok_or_else(|| "refused: no node key in the client's certificate".to_string())?;
        Ok((tls, key, header, head, used, filled))
    };
    let (tls, key, header, head, used, filled) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, opened).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        Err(_) => {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            return Err("refused: no header in time".to_string());
        }
    };
    let destination = header.destination;
    if let Err(why) = gate.judge(&key, &header) {
        counters.refused.fetch_add(1, Ordering::Relaxed);
        // The site resets the LAN host's connection in turn, as for a destination that refused it.
        let _ = reset_on_close(tls.get_ref().0.as_raw_fd());
        return Err(format!("refused: {why}"));
    }
    counters.connections.fetch_add(1, Ordering::Relaxed);
    let connect = async {
        let mut out = connect_out(&header, gate).await?;
        out.set_nodelay(true)?;
        keep_alive(&out)?;
        // Bytes that came in the header's read belong to the connection.
        out.write_all(&head[used..filled]).await?;
        Ok::<_, io::Error>(out)
    };
    let connected = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(connected) => connected,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")),
    };
    let out = match connected {
        Ok(out) => out,
        Err(e) => {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            // The site resets the LAN host's connection in turn: it sees the refusal as a reset.
            let _ = reset_on_close(tls.get_ref().0.as_raw_fd());
            return Err(format!("connect to {destination}: {e}"));
        }
    };
    counters.bytes_out.fetch_add((filled - used) as u64, Ordering::Relaxed);
    counters.active.fetch_add(1, Ordering::Relaxed);
    let _ = carry_both_ways(out, tls, [&counters.bytes_in, &counters.bytes_out]).await;
    counters.active.fetch_sub(1, Ordering::Relaxed);
    Ok(())
}

/// The connection to the header's destination. Where the tunnel's packets would keep the LAN host's address
/// (`Ports::keeps_source`: a port the firewall does not masquerade out of, such as this node's LAN), it comes
/// from that address, so the host there sees who connects, as through the QUIC bond; its replies are this
/// host's by the lane's `socket transparent` mark (quicether/daemon/lane.py). Elsewhere (the exit), it comes
/// from this host's own address.
async fn connect_out(header: &LaneHeader, gate: &LaneGate) -> io::Result<TcpStream> {
    let destination = header.destination;
    let keeps_source = header.source.is_ipv4() == destination.is_ipv4()
        && route_device(destination.ip()).is_some_and(|device| gate.acl.read().unwrap().ports.keeps_source(&device));
    if !keeps_source {
        return TcpStream::connect(destination).await;
    }
    let socket = transparent_socket(&destination)?;
    socket.bind(SocketAddr::new(header.source, 0))?;
    socket.connect(destination).await
}

/// Which destinations a gateway's lane connects to: anywhere a packet from the site could have gone
/// through the bond, but never this host's loopback (a service listening only there is not the site's to
/// reach), an unspecified or a multicast address.
pub type DestinationPolicy = fn(&SocketAddr) -> bool;

pub fn exit_destination(addr: &SocketAddr) -> bool {
    let ip = addr.ip();
    !(ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::from([255, 255, 255, 255]))
}

#[cfg(test)]
#[path = "lane_tests.rs"]
pub(crate) mod tests;
