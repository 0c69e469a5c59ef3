//! Making paths: `accept_loop` on every local socket (the listening one and each WAN's, so a path punched
//! through a NAT is answered by the socket that owns the mapping), one `dialer` per (peer, WAN, endpoint).
//!
//! After the QUIC handshake the dialer opens one bidirectional stream and sends the path hello
//! (`quicether_proto::hello`: its WAN and whether it is a backup); the acceptor's answer is also the
//! dialer's proof that it was accepted.
//!
//! Both nodes may dial each other over the same pair of WANs (each has the other's endpoint); the second
//! such path would only double-count one link, so `Shared::add_path` keeps one (see `duplicate_loser`)
//! and the losing dialer stands by while the winner lives.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use quicether_proto::admission::{admit, Admission};
use quicether_proto::certkey::ed25519_key_of_cert;
use quicether_proto::hello;
use quicether_proto::path_rank::PathKind;
use quicether_proto::peer_text::escape_text;

use crate::node::CONNECTION_ID_LEN;
use crate::peer::{Event, Path, PathRoute, Peer, Shared, CLOSE_DUPLICATE};
use crate::receive::path_reader;
use crate::timers::path_timer;
use crate::tls;

/// How long either side waits for the other's half of the hello.
pub(crate) const HELLO_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause after the first failed dial; it doubles with each failure in a row up to `REDIAL_MAX`, so an
/// endpoint that is gone for good costs a packet every few seconds, not every second.
const REDIAL_INTERVAL: Duration = Duration::from_secs(1);
const REDIAL_MAX: Duration = Duration::from_secs(8);

/// Why a dial attempt made no path.
enum DialError {
    /// The peer closed it as the duplicate of its own dial to us: not a failure.
    LostAsDuplicate,
    Failed(String),
}

impl From<String> for DialError {
    fn from(reason: String) -> Self {
        DialError::Failed(reason)
    }
}

/// Text from the network (errors carrying a peer's close reason) as it may reach events and logs.
pub fn net_text(e: impl std::fmt::Display) -> String {
    escape_text(e.to_string().as_bytes())
}

fn peer_key_of(conn: &quinn::Connection) -> Option<[u8; 32]> {
    ed25519_key_of_cert(&tls::peer_certificate(conn)?)
}

/// The endpoint's bound address, unless it is the wildcard (then the kernel picks per packet).
fn endpoint_ip(endpoint: &quinn::Endpoint) -> Option<IpAddr> {
    endpoint.local_addr().ok().map(|a| a.ip()).filter(|ip| !ip.is_unspecified())
}

/// How `start_path` ended.
pub(crate) enum Started {
    Path(Arc<Path>),
    /// Another path over the same pair of WANs won (see `duplicate_loser`).
    Duplicate,
    Refused,
}

pub(crate) fn start_path(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    conn: quinn::Connection,
    route: PathRoute,
    backup: bool,
    local: Option<IpAddr>,
    public: Option<SocketAddr>,
) -> Started {
    // A full-size inner packet must fit one DATAGRAM; else every one would be dropped, silently.
    let fits = conn.max_datagram_size().unwrap_or(0);
    if fits < shared.datagram_len {
        let reason = format!(
            "path on WAN {} refused: its QUIC datagrams hold {fits} bytes, the tunnel needs {} (the peer \
             issues connection IDs longer than {CONNECTION_ID_LEN} bytes, or does not support DATAGRAM frames)",
            route.local_wan, shared.datagram_len
        );
        conn.close(3u32.into(), b"datagrams too small for the tunnel MTU");
        shared.emit(Event::HandshakeRefused { key: Some(peer.key), reason });
        return Started::Refused;
    }
    let punched = route.kind == PathKind::Punched;
    match shared.add_path(peer, conn, route, backup, local, public) {
        Ok(path) => {
            if punched {
                shared.punch.stats.lock().unwrap().successes += 1;
            }
            tokio::spawn(path_reader(shared.clone(), peer.clone(), path.clone()));
            tokio::spawn(path_timer(shared.clone(), peer.clone(), path.clone()));
            tokio::spawn(crate::member_news::exchange(shared.clone(), peer.clone(), path.clone()));
            crate::relay::offer(shared, peer, &path);
            Started::Path(path)
        }
        Err(crate::peer::NotAdded::Duplicate) => Started::Duplicate,
        Err(crate::peer::NotAdded::PeerRemoved) => Started::Refused,
    }
}

/// Accepts paths on one local socket: `socket` is its name (a WAN's, or `DEFAULT_SOURCE` for the
/// listening socket, or a relay's virtual socket, whose paths are all of kind `relayed`). Ends when the
/// endpoint is closed.
pub async fn accept_loop(shared: Arc<Shared>, endpoint: quinn::Endpoint, socket: String, relayed: Option<PathKind>) {
    while let Some(incoming) = endpoint.accept().await {
        let in_flight = shared.handshakes_in_flight.load(Ordering::Relaxed);
        match admit(in_flight, incoming.remote_address_validated(), incoming.may_retry()) {
            Admission::Accept => {}
            Admission::Retry => {
                shared.handshakes_retried.fetch_add(1, Ordering::Relaxed);
                let _ = incoming.retry();
                continue;
            }
            Admission::Drop => {
                shared.handshakes_dropped.fetch_add(1, Ordering::Relaxed);
                incoming.ignore();
                continue;
            }
        }
        let shared = shared.clone();
        let local = endpoint_ip(&endpoint);
        let socket = socket.clone();
        let handshake = InFlight::new(&shared);
        tokio::spawn(async move {
            // Refusals by our certificate verifier are reported there (rate-limited); other failures
            // (timeouts, resets) are transient and come back as the peer retries.
            let connecting = incoming.await;
            drop(handshake);
            let Ok(conn) = connecting else { return };
            if let Some(invite) = peer_key_of(&conn).filter(|k| shared.joins.is_invite(k)) {
                return crate::join::answer(shared, conn, invite).await;
            }
            // The verifier let the key in (pinned, or a member), but the peer may have been removed since.
            let peer = match shared.peer_of_accepted(&conn) {
                Ok(peer) => peer,
                Err(reason) => {
                    conn.close(1u32.into(), b"unknown peer");
                    shared.emit(Event::HandshakeRefused { key: peer_key_of(&conn), reason });
                    return;
                }
            };
            // A path that reached the listening socket at a WAN's address runs over that WAN.
            let local_wan = conn.local_ip().or(local).and_then(|ip| shared.wan_at(ip)).unwrap_or(socket);
            match tokio::time::timeout(HELLO_TIMEOUT, answer_hello(&conn, &local_wan)).await {
                Ok(Ok((peer_wan, backup))) => {
                    // A peer we punched towards just now came through the mapping the punch opened.
                    let punched = shared.punch.punched_recently(&peer.key, shared.now_us());
                    let kind = relayed.unwrap_or(if punched { PathKind::Punched } else { PathKind::Direct });
                    let route = PathRoute {
                        kind,
                        local_wan,
                        peer_wan: Some(peer_wan),
                        remote: conn.remote_address(),
                        dialed: false,
                    };
                    start_path(&shared, &peer, conn, route, backup, local, None);
                }
                _ => conn.close(2u32.into(), b"no path hello"),
            }
        });
    }
}

/// One incoming handshake counted in flight until it ends (however it ends).
struct InFlight(Arc<Shared>);

impl InFlight {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.handshakes_in_flight.fetch_add(1, Ordering::Relaxed);
        Self(shared.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.handshakes_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Reads the dialer's hello and answers it; returns the dialer's WAN (made safe) and its backup flag.
async fn answer_hello(conn: &quinn::Connection, our_wan: &str) -> Result<(String, bool), String> {
    let (mut send, mut recv) = conn.accept_bi().await.map_err(net_text)?;
    let data = recv.read_to_end(hello::MAX_HELLO).await.map_err(net_text)?;
    let hello = hello::decode_hello(&data)?;
    send.write_all(&hello::encode_answer(conn.remote_address(), our_wan)).await.map_err(net_text)?;
    send.finish().map_err(net_text)?;
    Ok((hello.wan, hello.backup))
}

/// Sends the path hello and reads the answer.
pub(crate) async fn send_hello(conn: &quinn::Connection, wan: &str, backup: bool) -> Result<hello::Answer, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(net_text)?;
    send.write_all(&hello::encode_hello(wan, backup)).await.map_err(net_text)?;
    send.finish().map_err(net_text)?;
    match recv.read_to_end(hello::MAX_ANSWER).await {
        Ok(answer) => Ok(hello::decode_answer(&answer)?),
        Err(e) => Err(format!("peer refused us: {}", net_text(e))),
    }
}

pub struct DialTarget {
    pub peer: Arc<Peer>,
    pub addr: SocketAddr,
    pub wan: String,
    pub backup: bool,
    pub config: quinn::ClientConfig,
}

/// True if the connection ended because the peer kept another path over the same WANs instead.
fn closed_as_duplicate(conn: &quinn::Connection) -> bool {
    matches!(conn.close_reason(), Some(quinn::ConnectionError::ApplicationClosed(c))
        if c.error_code == quinn::VarInt::from_u32(CLOSE_DUPLICATE))
}

/// Keeps one path to a peer from one WAN to one endpoint: dials, waits for the path to close, dials again.
pub async fn dialer(shared: Arc<Shared>, endpoint: quinn::Endpoint, target: DialTarget) {
    let key = target.peer.key;
    let mut last_error = String::new();
    let mut pause = REDIAL_INTERVAL;
    loop {
        // A path from our WAN to this very address is up already (the peer's dial from there, or a punched
        // one): a dial would only make its duplicate, and one replacing a working path mid-flow restarts its
        // counters and sends its recent packets again. Dial once it is gone.
        while target.peer.has_path_to(&target.wan, target.addr) {
            tokio::select! {
                () = tokio::time::sleep(REDIAL_INTERVAL) => {}
                () = target.peer.redial.notified() => {}
            }
        }
        let handshake = async {
            endpoint
                .connect_with(target.config.clone(), target.addr, tls::SERVER_NAME)
                .map_err(net_text)?
                .await
                .map_err(net_text)
        };
        // A path of the peer going down restarts a handshake in progress: its retransmission timer may be
        // seconds out while the WAN is back (see `Peer::redial`). Not the hello after it: the peer may have
        // made its path already, and dropping the connection would close that.
        let handshake = tokio::select! {
            handshake = handshake => handshake,
            () = target.peer.redial.notified() => {
                pause = REDIAL_INTERVAL;
                continue;
            }
        };
        let outcome = match handshake {
            Ok(conn) => {
                match tokio::time::timeout(HELLO_TIMEOUT, send_hello(&conn, &target.wan, target.backup)).await {
                    Ok(Ok(answer)) => Ok((conn, answer)),
                    // Both nodes dialed each other over the same WANs and the peer kept its own dial.
                    Ok(Err(_)) if closed_as_duplicate(&conn) => Err(DialError::LostAsDuplicate),
                    Ok(Err(e)) => Err(DialError::Failed(e)),
                    Err(_) => {
                        Err(DialError::Failed("peer completed the handshake but did not answer the path hello".into()))
                    }
                }
            }
            Err(e) => Err(DialError::Failed(e)),
        };
        match outcome {
            Ok((conn, answer)) => {
                last_error.clear();
                pause = REDIAL_INTERVAL;
                let peer_wan = answer.peer_wan.clone();
                let route = PathRoute {
                    kind: PathKind::Direct,
                    local_wan: target.wan.clone(),
                    peer_wan: answer.peer_wan,
                    remote: target.addr,
                    dialed: true,
                };
                let local = endpoint_ip(&endpoint);
                let duplicate =
                    match start_path(&shared, &target.peer, conn.clone(), route, target.backup, local, answer.observed)
                    {
                        Started::Path(path) => {
                            conn.closed().await;
                            path.closed_as_duplicate.load(Ordering::Relaxed) || closed_as_duplicate(&conn)
                        }
                        Started::Duplicate => true,
                        Started::Refused => false,
                    };
                if duplicate {
                    // The other path over these WANs carries the traffic: dial again only once it is gone.
                    while target.peer.has_path_between(&target.wan, peer_wan.as_deref()) {
                        tokio::time::sleep(REDIAL_INTERVAL).await;
                    }
                    continue;
                }
            }
            Err(DialError::LostAsDuplicate) => {
                // Not a failure: the peer's path over this WAN carries the traffic. Dial again once it is gone.
                while target.peer.has_path_on(&target.wan) {
                    tokio::time::sleep(REDIAL_INTERVAL).await;
                }
                continue;
            }
            Err(DialError::Failed(reason)) => {
                // Report a failure when its reason changes, not on every retry.
                if reason != last_error {
                    shared.emit(Event::DialFailed { key, wan: target.wan.clone(), reason: reason.clone() });
                    last_error = reason;
                }
                tokio::select! {
                    () = tokio::time::sleep(pause) => pause = (pause * 2).min(REDIAL_MAX),
                    () = target.peer.redial.notified() => pause = REDIAL_INTERVAL,
                }
                continue;
            }
        }
        tokio::time::sleep(REDIAL_INTERVAL).await;
    }
}
