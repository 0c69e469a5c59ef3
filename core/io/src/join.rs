//! Joining a network with an invite, on the sockets (the exchange and its rules are
//! `quicether_proto::join`).
//!
//! Admin side: the TLS verifier accepts a handshake with a pending invite key (`JoinDesk::invites`, set by
//! the daemon from its ledger); such a connection is no peer and gets no path: `answer` reads the one join
//! request, hands it to the daemon as `Event::JoinRequested`, waits for the daemon's answer
//! (`JoinDesk::answer`, from `Node::answer_join`), writes it and lets the joining node close.
//!
//! Joining side: `request` dials the admin's endpoints with the invite's key as its TLS identity and the
//! admin's key pinned, sends the request and returns the answer.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use quicether_proto::allowed_ips::Prefix;
use quicether_proto::join::{decode_answer, decode_request, encode_answer, encode_request, JoinAnswer, JoinRequest};
use quicether_proto::join::{MAX_ANSWER_LEN, MAX_REQUEST_LEN};
use tokio::sync::oneshot;

use crate::connect::net_text;
use crate::peer::{Event, Shared};
use crate::tls::{self, Identity};

/// How long the joining node has to send its request once the handshake is done.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the daemon has to answer a request (it signs one certificate and writes its ledger).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests waiting for the daemon at once; more are refused (each is a pending invite's holder, but a
/// leaked code must not let anyone pile up connections).
const MAX_WAITING: usize = 16;

/// The admin side's state: which invite keys may shake hands, and the requests waiting for the daemon.
#[derive(Default)]
pub struct JoinDesk {
    /// Shared with the TLS verifier.
    pub invites: Arc<RwLock<HashSet<[u8; 32]>>>,
    waiting: Mutex<HashMap<u64, oneshot::Sender<JoinAnswer>>>,
    next_id: AtomicU64,
}

impl JoinDesk {
    pub fn is_invite(&self, key: &[u8; 32]) -> bool {
        self.invites.read().unwrap().contains(key)
    }

    /// The daemon's answer to request `id`; false if that request is gone (timed out, or never was).
    pub fn answer(&self, id: u64, answer: JoinAnswer) -> bool {
        match self.waiting.lock().unwrap().remove(&id) {
            Some(sender) => sender.send(answer).is_ok(),
            None => false,
        }
    }
}

/// Serves one join connection (its handshake showed invite key `invite`); never a path.
pub async fn answer(shared: Arc<Shared>, conn: quinn::Connection, invite: [u8; 32]) {
    let request = async {
        let (send, mut recv) = conn.accept_bi().await.map_err(net_text)?;
        let data = recv.read_to_end(MAX_REQUEST_LEN).await.map_err(net_text)?;
        Ok::<_, String>((send, decode_request(&data, &invite)?))
    };
    let (mut send, request) = match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(Ok(got)) => got,
        Ok(Err(reason)) => {
            shared.emit(Event::HandshakeRefused { key: Some(invite), reason: format!("join request: {reason}") });
            conn.close(3u32.into(), b"bad join request");
            return;
        }
        Err(_) => {
            conn.close(3u32.into(), b"no join request");
            return;
        }
    };
    let desk = &shared.joins;
    let (sender, receiver) = oneshot::channel();
    let id = desk.next_id.fetch_add(1, Ordering::Relaxed);
    let queued = {
        let mut waiting = desk.waiting.lock().unwrap();
        let room = waiting.len() < MAX_WAITING;
        if room {
            waiting.insert(id, sender);
        }
        room
    };
    let answer = if queued {
        let JoinRequest { node, name, lan_prefixes, .. } = request;
        shared.emit(Event::JoinRequested { id, invite, node, name, lan_prefixes });
        match tokio::time::timeout(ANSWER_TIMEOUT, receiver).await {
            Ok(Ok(answer)) => answer,
            _ => {
                desk.waiting.lock().unwrap().remove(&id);
                JoinAnswer::Refused("the admin node did not answer in time; try again".into())
            }
        }
    } else {
        JoinAnswer::Refused("the admin node is busy with other joins; try again in a minute".into())
    };
    if send.write_all(&encode_answer(&answer)).await.is_ok() && send.finish().is_ok() {
        // The joining node closes once it has read the answer.
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, conn.closed()).await;
    }
    conn.close(0u32.into(), b"joined");
}

/// A join to ask for: the admin node (key `admin`, at `endpoints`, tried in order) is to certify the node
/// with seed `node_seed` as `name`, routing `lan_prefixes` if the admin grants them, shown the invite's
/// key (seed `invite_seed`); each endpoint gets `timeout`.
pub struct Joining<'a> {
    pub invite_seed: [u8; 32],
    pub admin: [u8; 32],
    pub endpoints: &'a [SocketAddr],
    pub node_seed: [u8; 32],
    pub name: &'a str,
    pub lan_prefixes: &'a [Prefix],
    pub timeout: Duration,
}

/// Asks for `join`. Err: no endpoint could be reached (or the admin refused the invite key in the
/// handshake: unknown to it); a refusal for a reason the admin gives (used, expired, name taken) is
/// `Ok(JoinAnswer::Refused)`.
pub async fn request(join: &Joining<'_>) -> Result<JoinAnswer, String> {
    let Joining { invite_seed, admin, endpoints, node_seed, name, lan_prefixes, timeout } = *join;
    let identity = Identity::from_seed(&invite_seed, None)?;
    let body = encode_request(&identity.public_key, &node_seed, name, lan_prefixes)?;
    let config = quinn::ClientConfig::new(Arc::new(tls::quic_client_config(
        tls::CurrentIdentity::new(&identity)?,
        admin,
        None,
    )?));
    let mut errors = Vec::new();
    for &addr in endpoints {
        let bind: SocketAddr =
            if addr.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
        let endpoint = quinn::Endpoint::client(bind).map_err(|e| format!("local socket: {e}"))?;
        let attempt = async {
            let conn = endpoint.connect_with(config.clone(), addr, tls::SERVER_NAME).map_err(net_text)?.await;
            let conn = conn.map_err(|e| refusal_or(&e, net_text(&e)))?;
            let exchange = async {
                let (mut send, mut recv) = conn.open_bi().await?;
                send.write_all(&body).await?;
                send.finish()?;
                let data = recv.read_to_end(4 + 1 + 2 + MAX_ANSWER_LEN).await?;
                Ok::<_, Box<dyn std::error::Error>>(data)
            };
            // TLS 1.3: the client's certificate is checked after the client considers the handshake done, so
            // a refused invite key shows as the connection closing under the request.
            let data = exchange.await.map_err(|e| match conn.close_reason() {
                Some(reason) => refusal_or(&reason, net_text(&reason)),
                None => net_text(e),
            })?;
            conn.close(0u32.into(), b"done");
            decode_answer(&data).map_err(|e| format!("the admin node's answer is malformed: {e}"))
        };
        let outcome = tokio::time::timeout(timeout, attempt).await;
        endpoint.wait_idle().await;
        match outcome {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) => errors.push(format!("{addr}: {e}")),
            Err(_) => errors.push(format!("{addr}: no answer within {} s", timeout.as_secs())),
        }
    }
    Err(errors.join("; "))
}

/// A connection closed by a TLS alert (the admin's verifier refused the invite key) as words; else `other`.
fn refusal_or(e: &quinn::ConnectionError, other: String) -> String {
    match e {
        quinn::ConnectionError::ConnectionClosed(c) if (0x100..0x200).contains(&u64::from(c.error_code)) => {
            "the admin node refused the invite in the handshake: it does not know it (made for another node, \
             long expired, or not a real code)"
                .into()
        }
        _ => other,
    }
}

/// `request` on a runtime of its own, for a caller with none (the CLI, the daemon's worker thread).
pub fn request_blocking(join: &Joining<'_>) -> Result<JoinAnswer, String> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("runtime: {e}"))?;
    runtime.block_on(request(join))
}
