//! Making paths: `accept_loop` for peers that dial us, one `dialer` per (peer, WAN) for peers we dial.
//!
//! After the QUIC handshake the dialer opens one bidirectional stream and sends the path hello: which
//! WAN this path leaves from and whether it is a backup. The acceptor answers `ok`. In TLS 1.3 a client
//! finishes its handshake before the server has checked the client's certificate, so that answer is also
//! the dialer's proof that it was accepted.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use quicether_proto::certkey::ed25519_key_of_cert;

use crate::node::CONNECTION_ID_LEN;
use crate::peer::{Event, Peer, Shared};
use crate::receive::path_reader;
use crate::timers::path_timer;
use crate::tls;

const HELLO_MAGIC: &[u8; 4] = b"QEH1";
/// The acceptor's answer: "ok", then a space and the address it sees the dialer at (the WAN's public
/// address after any NAT), which the dialer shows as the path's public address.
const HELLO_OK: &[u8] = b"ok";
const MAX_HELLO_ANSWER: usize = 64;
/// WAN names are short labels; anything longer is not a hello.
const MAX_HELLO: usize = 4 + 1 + 64;
/// How long either side waits for the other's half of the hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause between failed dial attempts.
const REDIAL_INTERVAL: Duration = Duration::from_secs(1);

fn peer_key_of(conn: &quinn::Connection) -> Option<[u8; 32]> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast_ref::<Vec<rustls::pki_types::CertificateDer<'static>>>()?;
    ed25519_key_of_cert(certs.first()?)
}

/// The endpoint's bound address, unless it is the wildcard (then the kernel picks per packet).
fn endpoint_ip(endpoint: &quinn::Endpoint) -> Option<IpAddr> {
    endpoint.local_addr().ok().map(|a| a.ip()).filter(|ip| !ip.is_unspecified())
}

fn start_path(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    conn: quinn::Connection,
    wan: String,
    backup: bool,
    local: Option<IpAddr>,
    public: Option<SocketAddr>,
) {
    // A full-size inner packet must fit one DATAGRAM; else every one would be dropped, silently.
    let fits = conn.max_datagram_size().unwrap_or(0);
    if fits < shared.datagram_len {
        let reason = format!(
            "path from WAN {wan} refused: its QUIC datagrams hold {fits} bytes, the tunnel needs {} (the peer \
             issues connection IDs longer than {CONNECTION_ID_LEN} bytes, or does not support DATAGRAM frames)",
            shared.datagram_len
        );
        conn.close(3u32.into(), b"datagrams too small for the tunnel MTU");
        shared.emit(Event::HandshakeRefused { key: Some(peer.key), reason });
        return;
    }
    let Some(path) = shared.add_path(peer, conn, wan, backup, local, public) else {
        return; // the peer was removed while this path was being set up
    };
    tokio::spawn(path_reader(shared.clone(), peer.clone(), path.clone()));
    tokio::spawn(path_timer(shared.clone(), peer.clone(), path));
}

pub async fn accept_loop(shared: Arc<Shared>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let shared = shared.clone();
        let local = endpoint_ip(&endpoint);
        tokio::spawn(async move {
            // Refusals by our certificate verifier are reported there (once per key); other failures
            // (timeouts, resets) are transient and come back as the peer retries.
            let Ok(conn) = incoming.await else { return };
            // The verifier let the key in, but the peer may have been removed since.
            let key = peer_key_of(&conn);
            let Some(peer) = key.and_then(|k| shared.peer(&k)) else {
                conn.close(1u32.into(), b"unknown peer");
                shared.emit(Event::HandshakeRefused { key, reason: "peer removed during the handshake".into() });
                return;
            };
            match tokio::time::timeout(HELLO_TIMEOUT, answer_hello(&conn)).await {
                Ok(Ok((wan, backup))) => start_path(&shared, &peer, conn, wan, backup, local, None),
                _ => conn.close(2u32.into(), b"no path hello"),
            }
        });
    }
}

async fn answer_hello(conn: &quinn::Connection) -> Result<(String, bool), String> {
    let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
    let hello = recv.read_to_end(MAX_HELLO).await.map_err(|e| e.to_string())?;
    if hello.len() < 5 || &hello[..4] != HELLO_MAGIC {
        return Err("not a path hello".into());
    }
    let wan = String::from_utf8_lossy(&hello[5..]).into_owned();
    let answer = format!("{} {}", String::from_utf8_lossy(HELLO_OK), conn.remote_address());
    send.write_all(answer.as_bytes()).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    Ok((wan, hello[4] == 1))
}

/// Sends the path hello; returns the address the peer sees us at, if it said.
async fn send_hello(conn: &quinn::Connection, wan: &str, backup: bool) -> Result<Option<SocketAddr>, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let mut hello = HELLO_MAGIC.to_vec();
    hello.push(backup as u8);
    hello.extend_from_slice(&wan.as_bytes()[..wan.len().min(MAX_HELLO - 5)]);
    send.write_all(&hello).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    match recv.read_to_end(MAX_HELLO_ANSWER).await {
        Ok(answer) if answer.starts_with(HELLO_OK) => {
            let observed = String::from_utf8_lossy(&answer[HELLO_OK.len()..]).trim().parse().ok();
            Ok(observed)
        }
        Ok(_) => Err("peer answered the path hello wrongly".into()),
        Err(e) => Err(format!("peer refused us: {e}")),
    }
}

pub struct DialTarget {
    pub peer: Arc<Peer>,
    pub addr: SocketAddr,
    pub wan: String,
    pub backup: bool,
    pub config: quinn::ClientConfig,
}

/// Keeps one path to a peer from one WAN: dials, waits for the path to close, dials again.
pub async fn dialer(shared: Arc<Shared>, endpoint: quinn::Endpoint, target: DialTarget) {
    let key = target.peer.key;
    let mut last_error = String::new();
    loop {
        let attempt = async {
            let conn = endpoint
                .connect_with(target.config.clone(), target.addr, tls::SERVER_NAME)
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())?;
            match tokio::time::timeout(HELLO_TIMEOUT, send_hello(&conn, &target.wan, target.backup)).await {
                Ok(Ok(observed)) => Ok((conn, observed)),
                Ok(Err(e)) => Err(e),
                Err(_) => Err("peer completed the handshake but did not answer the path hello".into()),
            }
        };
        match attempt.await {
            Ok((conn, observed)) => {
                last_error.clear();
                start_path(
                    &shared,
                    &target.peer,
                    conn.clone(),
                    target.wan.clone(),
                    target.backup,
                    endpoint_ip(&endpoint),
                    observed,
                );
                conn.closed().await;
            }
            Err(reason) => {
                // Report a failure when its reason changes, not on every retry.
                if reason != last_error {
                    shared.emit(Event::DialFailed { key, wan: target.wan.clone(), reason: reason.clone() });
                    last_error = reason;
                }
            }
        }
        tokio::time::sleep(REDIAL_INTERVAL).await;
    }
}
