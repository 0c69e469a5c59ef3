//! Drives the birthday probe between a random symmetric NAT and an open one (issue 14; the logic is in
//! `quicether_proto::birthday` and `symmetric::BirthdayProbe`): `listen` on the random side (extra
//! sockets, the winner dials the handshake), `probe` on the open side (paced probes from its WAN socket).
//! Both start at the punch's agreed moment; `punch.rs` decides who runs which.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use quicether_proto::birthday::{probe_packet, BirthdayListen, Outcome, TOKEN_LEN};
use quicether_proto::symmetric::{BirthdayProbe, BIRTHDAY_SOCKETS};
use tokio::sync::mpsc;

use crate::peer::Shared;
use crate::punch::{direct_routes, punch_dial, PunchSocket};
use crate::sockets::{bind_listen, bind_wan};

/// How often the probing side looks at the clock (and at the peer's paths): at the rate cap, a few
/// probes per tick.
const PROBE_TICK: Duration = Duration::from_millis(10);
/// Datagrams the extra sockets may queue for the listener before their readers wait.
const DATAGRAM_QUEUE: usize = 64;

/// Marks a birthday probe with `key` as running while it lives: one at a time per peer (a new offer
/// within the probe's seconds must not open another set of sockets).
struct Running {
    shared: Arc<Shared>,
    key: [u8; 32],
}

impl Running {
    fn start(shared: &Arc<Shared>, key: [u8; 32]) -> Option<Running> {
        shared.punch.probing.lock().unwrap().insert(key).then(|| Running { shared: shared.clone(), key })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shared.punch.probing.lock().unwrap().remove(&self.key);
    }
}

/// A fresh nonce for a birthday probe's token (`birthday::token`).
pub(crate) fn random_nonce() -> [u8; 16] {
    let seed = crate::tls::generate_seed();
    seed[..16].try_into().expect("16 bytes")
}

/// Whether a birthday probe with `key` is under way.
pub(crate) fn running(shared: &Shared, key: &[u8; 32]) -> bool {
    shared.punch.probing.lock().unwrap().contains(key)
}

fn record(shared: &Shared, outcome: Outcome) {
    let mut stats = shared.punch.stats.lock().unwrap();
    match outcome {
        Outcome::Hit => stats.probe_hits += 1,
        Outcome::Missed => stats.probe_misses += 1,
    }
}

async fn sleep_until_us(shared: &Shared, at_us: u64) {
    tokio::time::sleep(Duration::from_micros(at_us.saturating_sub(shared.now_us()))).await;
}

/// An extra socket bound like `socket`'s: the same device, address and mark (so its packets leave
/// through the same WAN and its NAT), on a port of the kernel's choice.
fn bind_like(socket: &PunchSocket) -> std::io::Result<UdpSocket> {
    let bound = socket.endpoint.local_addr()?;
    let local = SocketAddr::new(socket.local.unwrap_or(bound.ip()), 0);
    let std_socket = match socket.local {
        Some(_) => bind_wan(socket.device.as_deref(), local, socket.mark)?,
        None => bind_listen(local)?,
    };
    std_socket.set_nonblocking(true)?;
    Ok(std_socket)
}

/// Random side: opens up to `BIRTHDAY_SOCKETS` extra sockets like `socket` at `start_us`, sends the
/// opening packet from each to `targets` (the open side's addresses), and waits for the first valid
/// probe; the socket it reached becomes a QUIC endpoint that dials the probe's sender. Every other
/// extra socket is closed as soon as there is a winner, and all of them when the time is up.
pub(crate) async fn listen(
    shared: Arc<Shared>,
    key: [u8; 32],
    socket: PunchSocket,
    targets: Vec<SocketAddr>,
    token: [u8; TOKEN_LEN],
    start_us: u64,
) {
    let Some(_running) = Running::start(&shared, key) else { return };
    sleep_until_us(&shared, start_us).await;
    let mut listen = BirthdayListen::new(token, targets, start_us);
    let packet = probe_packet(&token);
    let mut sockets: Vec<Arc<tokio::net::UdpSocket>> = Vec::new();
    for _ in 0..BIRTHDAY_SOCKETS {
        let Ok(extra) = bind_like(&socket) else { break };
        // From the std socket: a tokio one just registered is not known writable yet and would drop it.
        for target in listen.targets() {
            let _ = extra.send_to(&packet, *target);
        }
        let Ok(extra) = tokio::net::UdpSocket::from_std(extra) else { break };
        sockets.push(Arc::new(extra));
    }
    shared.punch.stats.lock().unwrap().probe_sockets += sockets.len() as u64;
    let (tx, mut rx) = mpsc::channel::<(usize, Vec<u8>, SocketAddr)>(DATAGRAM_QUEUE);
    let readers: Vec<_> = sockets
        .iter()
        .enumerate()
        .map(|(index, extra)| {
            let (extra, tx) = (extra.clone(), tx.clone());
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok((len, from)) = extra.recv_from(&mut buf).await {
                    if tx.send((index, buf[..len].to_vec(), from)).await.is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
    drop(tx);
    let deadline = Duration::from_micros(listen.deadline_us().saturating_sub(shared.now_us()));
    let winner = tokio::time::timeout(deadline, async {
        while let Some((index, data, from)) = rx.recv().await {
            if let Some(winner) = listen.handle_datagram(index, &data, from, shared.now_us()) {
                return Some(winner);
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    // Close the extra sockets: the readers hold them, so they end first.
    for reader in &readers {
        reader.abort();
    }
    for reader in readers {
        let _ = reader.await;
    }
    drop(rx);
    let won = winner.and_then(|w| Some((Arc::try_unwrap(sockets.swap_remove(w.socket)).ok()?, w.from)));
    drop(sockets);
    let Some((won, from)) = won else {
        return record(&shared, Outcome::Missed);
    };
    record(&shared, Outcome::Hit);
    let Ok(std_socket) = won.into_std() else { return };
    // Only a client: the winner's mapping lets in the one address it dials, so nothing else could reach a
    // server on it. The endpoint lives as long as the path's connection does.
    let Ok(endpoint) = crate::batching::endpoint(
        crate::node::endpoint_config(),
        None,
        std_socket,
        shared.batching.clone(),
        shared.udp_payload,
    ) else {
        return;
    };
    let dialer = PunchSocket { endpoint, raw: None, ..socket };
    punch_dial(shared, dialer, from, key).await;
}

/// Open side: from `socket`'s WAN socket (`raw`, the same socket as its QUIC endpoint's) sends probes
/// paced by `BirthdayProbe` to random ports of `ip` (the random side's public address) from
/// `start_us`, until a direct path to `key` is up on that WAN (the winner's handshake came in), or the
/// probe's caps are reached.
pub(crate) async fn probe(
    shared: Arc<Shared>,
    key: [u8; 32],
    socket: PunchSocket,
    raw: Arc<UdpSocket>,
    ip: IpAddr,
    token: [u8; TOKEN_LEN],
    start_us: u64,
) {
    let Some(_running) = Running::start(&shared, key) else { return };
    sleep_until_us(&shared, start_us).await;
    let mut probe = BirthdayProbe::new(crate::node::random_u64(), start_us);
    let packet = probe_packet(&token);
    let outcome = loop {
        let now = shared.now_us();
        let connected = shared.peer(&key).is_some_and(|p| direct_routes(&p).iter().any(|(wan, _)| *wan == socket.wan));
        if connected {
            break Outcome::Hit;
        }
        if probe.done(now) {
            break Outcome::Missed;
        }
        let ports = probe.poll(now);
        for port in &ports {
            // Non-blocking (quinn made the socket so): a full send buffer drops a probe, never waits.
            let _ = raw.send_to(&packet, SocketAddr::new(ip, *port));
        }
        shared.punch.stats.lock().unwrap().probes_sent += ports.len() as u64;
        tokio::time::sleep(PROBE_TICK).await;
    };
    record(&shared, outcome);
}
