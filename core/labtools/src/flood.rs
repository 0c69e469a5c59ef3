//! Unauthenticated traffic at a node's QUIC port, as an attacker on the internet sends it (issue
//! "Reliability, security and operability"): garbage datagrams, real QUIC handshakes with fresh unknown
//! keys (each costs the node a key exchange and a certificate check before it can refuse), and one
//! captured Initial replayed over and over; and at its DHT port (`dht_flood`): garbage too, bogus KRPC
//! requests, and valid items and announces that fill its stores. Run as `qe-flood` by scripts/bench-flood
//! and the lab tests.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quicether_io::tls::{self, CurrentIdentity, Identity};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Garbage,
    Handshakes,
    Replay,
    DhtQueries,
    DhtStore,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "garbage" => Ok(Mode::Garbage),
            "handshakes" => Ok(Mode::Handshakes),
            "replay" => Ok(Mode::Replay),
            "dht-queries" => Ok(Mode::DhtQueries),
            "dht-store" => Ok(Mode::DhtStore),
            _ => Err(format!("mode {s:?}: one of garbage, handshakes, replay, dht-queries, dht-store")),
        }
    }
}

/// What a flood sent.
#[derive(Debug, Default)]
pub struct Sent {
    pub datagrams: AtomicU64,
    pub handshakes: AtomicU64,
    /// dht-store: the node's answers to what was sent: accepted ("r"), refused with an error ("e").
    pub accepted: AtomicU64,
    pub errors: AtomicU64,
}

/// xorshift64*: cheap bytes that look random to a parser (not for anything secret).
pub(crate) struct Noise(pub(crate) u64);

impl Noise {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let n = self.next().to_le_bytes();
            chunk.copy_from_slice(&n[..chunk.len()]);
        }
    }
}

/// A UDP socket on any port of `bind` (None: of any address of `target`'s family).
pub(crate) fn bind_socket(target: SocketAddr, bind: Option<std::net::IpAddr>) -> std::io::Result<UdpSocket> {
    let any: std::net::IpAddr = if target.is_ipv4() { [0u8; 4].into() } else { [0u16; 8].into() };
    UdpSocket::bind((bind.unwrap_or(any), 0))
}

/// Sends `packet()` to `target` at `rate` datagrams per second until `until`, from `socket` (None: a new
/// one on any port).
pub(crate) fn pace(
    target: SocketAddr,
    rate: u64,
    until: Instant,
    sent: &Sent,
    socket: Option<UdpSocket>,
    mut packet: impl FnMut() -> Vec<u8>,
) {
    let socket = socket.unwrap_or_else(|| bind_socket(target, None).expect("a UDP socket"));
    let start = Instant::now();
    let mut count = 0u64;
    while Instant::now() < until {
        let due = start + Duration::from_secs_f64(count as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let _ = socket.send_to(&packet(), target);
        count += 1;
        sent.datagrams.fetch_add(1, Ordering::Relaxed);
    }
}

/// One QUIC Initial as quinn sends it to `target` (captured on a local socket, never sent to it).
fn capture_initial(runtime: &tokio::runtime::Runtime, server_key: [u8; 32]) -> Vec<u8> {
    let trap = UdpSocket::bind("127.0.0.1:0").expect("a local socket");
    let trap_addr = trap.local_addr().expect("its address");
    runtime.block_on(async {
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("a client endpoint");
        let identity = Identity::from_seed(&tls::generate_seed(), None).expect("an identity");
        let crypto = tls::quic_client_config(CurrentIdentity::new(&identity).unwrap(), server_key, None).unwrap();
        let connecting =
            endpoint.connect_with(quinn::ClientConfig::new(Arc::new(crypto)), trap_addr, tls::SERVER_NAME).unwrap();
        let mut buf = vec![0u8; 2048];
        let (len, _) = tokio::task::block_in_place(|| trap.recv_from(&mut buf)).expect("the Initial");
        drop(connecting);
        buf.truncate(len);
        buf
    })
}

/// Handshakes with fresh keys, `concurrency` at a time, until `until`. Each is refused by the node
/// (its key is unknown), after the node has done its half of the key exchange.
async fn handshakes(target: SocketAddr, server_key: [u8; 32], concurrency: usize, until: Instant, sent: Arc<Sent>) {
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let sent = sent.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let Ok(endpoint) = quinn::Endpoint::client("0.0.0.0:0".parse().unwrap()) else { return };
                let identity = Identity::from_seed(&tls::generate_seed(), None).expect("an identity");
                let crypto =
                    tls::quic_client_config(CurrentIdentity::new(&identity).unwrap(), server_key, None).unwrap();
                if let Ok(connecting) =
                    endpoint.connect_with(quinn::ClientConfig::new(Arc::new(crypto)), target, tls::SERVER_NAME)
                {
                    sent.handshakes.fetch_add(1, Ordering::Relaxed);
                    let _ = tokio::time::timeout(Duration::from_secs(2), connecting).await;
                }
                endpoint.close(0u32.into(), b"");
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

pub struct Flood {
    pub mode: Mode,
    pub target: SocketAddr,
    pub seconds: f64,
    /// Datagrams per second (garbage, replay).
    pub rate: u64,
    /// Handshakes at a time (handshakes).
    pub concurrency: usize,
    /// The node's key (handshakes, replay: a real client pins it).
    pub server_key: [u8; 32],
    /// Source address of the datagram floods (None: any); several flooders on one host each take one.
    pub bind: Option<std::net::IpAddr>,
}

pub fn run(flood: &Flood) -> Result<Arc<Sent>, String> {
    let sent = Arc::new(Sent::default());
    let until = Instant::now() + Duration::from_secs_f64(flood.seconds);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let mut noise = Noise(u64::from_le_bytes(tls::generate_seed()[..8].try_into().unwrap()) | 1);
    match flood.mode {
        Mode::Garbage => {
            let socket = bind_socket(flood.target, flood.bind).map_err(|e| format!("bind: {e}"))?;
            pace(flood.target, flood.rate, until, &sent, Some(socket), || {
                let len = 20 + (noise.next() % 1180) as usize;
                let mut buf = vec![0u8; len];
                noise.fill(&mut buf);
                buf
            });
        }
        Mode::Replay => {
            let initial = capture_initial(&runtime, flood.server_key);
            pace(flood.target, flood.rate, until, &sent, None, || initial.clone());
        }
        Mode::Handshakes => {
            runtime.block_on(handshakes(flood.target, flood.server_key, flood.concurrency, until, sent.clone()))
        }
        Mode::DhtQueries => crate::dht_flood::queries(flood, until, &sent, &mut noise)?,
        Mode::DhtStore => crate::dht_flood::store(flood, until, &sent, &mut noise)?,
    }
    Ok(sent)
}
