//! Discovery through the BitTorrent mainline DHT (the `mainline` crate): a member publishes its record
//! (`quicether_proto::record`) as a BEP 44 mutable item signed with its node key, salted per network, and
//! looks up other members' records by their node key.
//!
//! A lookup returns a record only after every check, in this order:
//! 1. the BEP 44 signature and target (checked by `mainline`; its refusals are counted as bad signatures);
//! 2. the sequence is not older than the last one accepted for that key (else: replay);
//! 3. the value opens with the network's record key (else: non-member, nothing of it was parsed);
//! 4. the plaintext decodes within the record's bounds (else: malformed);
//! 5. it has not expired (give or take the clock tolerance).
//!
//! Traffic is bounded: at most `MAX_LOOKUPS_IN_FLIGHT` lookups at once, publishes at most one per
//! `MIN_PUBLISH_INTERVAL`; in server mode, requests from others are answered within per-source and total
//! rates (`quicether_proto::dht_server`, one limiter for all of this node's DHT sockets: a flood from one
//! address does not silence the node for others).
//!
//! What `mainline` does with the rest, before any of our code sees it: datagrams that are not bencoded
//! KRPC are dropped by its parser (not counted: it logs them at trace level); responses it did not ask for
//! are dropped; its one actor thread reads one datagram per turn, so a flood costs at most that thread,
//! and what the socket's receive buffer cannot hold is dropped by the kernel. A private DHT's first node
//! (no bootstrap) adds the sender of a find_node to its routing table, at most one node per IP address.
//!
//! Serving on a node with several addresses (a multi-homed gateway): `mainline` answers from the one UDP
//! socket it has, and a socket bound to no address answers from whatever address the route back picks,
//! which the asker drops (it only takes an answer from the address it asked). So a server gets one DHT
//! node bound to each of its addresses (`serve_on`, all on the configured port), each answering from the
//! address it was asked at; they bootstrap from each other, so what is stored at one is found through any.
//! This node's own publishes and lookups go through one more node, a read-only client on a free port and
//! no address (it never answers anyone), bootstrapped from those: its record is stored at its own
//! servers too, which matters when they are the only DHT there is.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mainline::async_dht::AsyncDht;
use mainline::errors::{ConcurrencyError, PutMutableError};
use mainline::{Dht, MutableItem, RequestFilter, RequestSpecific, ServerSettings, SigningKey};
use quicether_proto::dht_server::{ServerLimiter, Verdict};
use quicether_proto::membership::CLOCK_TOLERANCE_S;
use quicether_proto::record::{NetworkKeys, OpenError, Record};
use tokio::sync::Semaphore;

use futures_lite::StreamExt;

pub const MAX_LOOKUPS_IN_FLIGHT: usize = 8;
/// Endpoint changes can come in bursts (a WAN flapping); each publish costs a DHT PUT to ~20 nodes.
pub const MIN_PUBLISH_INTERVAL: Duration = Duration::from_secs(1);
/// Server mode's stores (`mainline`'s LRU caches: beyond the bound the least recently used entry goes).
/// Members' records are mutable items of at most 1000 bytes: 1000 of them (~1 MB). Peers (announce_peer)
/// and immutable items are the public DHT's, unused by QuicEther: kept small, as `mainline`'s defaults
/// (2000 info-hashes of 500 peers each: a million peer entries) would let a flood of announces with one
/// valid token grow the node by tens of MB.
pub const SERVER_MAX_MUTABLE_ITEMS: usize = 1000;
pub const SERVER_MAX_IMMUTABLE_ITEMS: usize = 128;
pub const SERVER_MAX_INFO_HASHES: usize = 128;
pub const SERVER_MAX_PEERS_PER_INFO_HASH: usize = 32;
/// How long a start waits for its fixed port to be let go by this process's previous DHT node. The old
/// actor normally lets go within 50 ms; a clean-clone CI run with the image build beside it once took
/// longer than 1 s, so the wait is generous (it only ever delays a restart that would fail otherwise).
pub const REBIND_WAIT: Duration = Duration::from_secs(5);
/// Last accepted sequence per node key, for replay refusal; beyond this the oldest entry is forgotten.
pub const MAX_TRACKED_KEYS: usize = 4096;

/// Refusals by cause, and what was done.
#[derive(Debug, Default)]
pub struct Counters {
    pub published: AtomicU64,
    pub publish_failed: AtomicU64,
    pub lookups: AtomicU64,
    pub found: AtomicU64,
    pub not_found: AtomicU64,
    /// Lookups refused because `MAX_LOOKUPS_IN_FLIGHT` were running until the timeout.
    pub busy: AtomicU64,
    pub bad_signature: AtomicU64,
    pub replay: AtomicU64,
    pub expired: AtomicU64,
    pub non_member: AtomicU64,
    pub malformed: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let c = |a: &AtomicU64| a.load(Relaxed);
        vec![
            ("published", c(&self.published)),
            ("publish_failed", c(&self.publish_failed)),
            ("lookups", c(&self.lookups)),
            ("found", c(&self.found)),
            ("not_found", c(&self.not_found)),
            ("busy", c(&self.busy)),
            ("bad_signature", c(&self.bad_signature)),
            ("replay", c(&self.replay)),
            ("expired", c(&self.expired)),
            ("non_member", c(&self.non_member)),
            ("malformed", c(&self.malformed)),
        ]
    }
}

pub struct DiscoveryConfig {
    /// UDP port of the DHT node (0: any free port); with `serve_on`, of each serving node.
    pub port: u16,
    /// The one node's address (none: every address); ignored with `serve_on`.
    pub bind: Option<Ipv4Addr>,
    /// With `server`: this node's addresses, one serving DHT node bound to each (see the module comment).
    /// Empty: one node, serving from `bind`.
    pub serve_on: Vec<Ipv4Addr>,
    /// `None`: the public mainline bootstrap nodes; `Some(empty)`: none (the first node of a private DHT).
    pub bootstrap: Option<Vec<SocketAddrV4>>,
    /// Answer other nodes' requests (store and route). Off, the node only asks: a router behind NAT or
    /// on a metered link should not serve the DHT, so `mainline`'s adaptive switch is disabled too.
    pub server: bool,
    pub seed: [u8; 32],
    pub network_key: [u8; 32],
}

/// A record found and accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub node_key: [u8; 32],
    pub seq: i64,
    pub record: Record,
}

#[derive(Debug)]
pub enum LookupError {
    /// Too many lookups in flight for the whole timeout.
    Busy,
}

/// The server's request limits (`quicether_proto::dht_server`), shared by every clone of the filter
/// (`mainline` clones it into its actor) and read by `Discovery::counters`.
#[derive(Debug, Clone)]
struct ServerFilter {
    serve: bool,
    limiter: Arc<Mutex<ServerLimiter>>,
    epoch: Instant,
}

impl RequestFilter for ServerFilter {
    fn allow_request(&self, _request: &RequestSpecific, from: SocketAddrV4) -> bool {
        if !self.serve {
            return false;
        }
        let now_us = self.epoch.elapsed().as_micros() as u64;
        self.limiter.lock().unwrap().handle_request(*from.ip(), now_us) == Verdict::Answer
    }
}

fn random_nonce() -> [u8; 12] {
    use ring::rand::SecureRandom;
    let mut n = [0u8; 12];
    ring::rand::SystemRandom::new().fill(&mut n).expect("the OS random source failed");
    n
}

struct Shared {
    keys: NetworkKeys,
    seed: [u8; 32],
    node_key: [u8; 32],
    counters: Counters,
    lookups: Arc<Semaphore>,
    last_seq: Mutex<HashMap<[u8; 32], i64>>,
    /// Last sequence published and when; publishes are serialized by this lock.
    publish: tokio::sync::Mutex<(i64, Option<Instant>)>,
}

pub struct Discovery {
    dht: AsyncDht,
    /// The nodes serving on each of `serve_on`'s addresses (empty: `dht` serves, if `server`).
    servers: Vec<AsyncDht>,
    shared: Arc<Shared>,
    pub local_addr: SocketAddrV4,
    /// Where this node answers other DHT nodes ("ip:port"; empty when it does not serve).
    pub serving: Vec<SocketAddrV4>,
    runtime: tokio::runtime::Runtime,
    /// Server mode: what was answered and refused (by cause).
    limiter: Arc<Mutex<ServerLimiter>>,
}

/// One `mainline` node: `bootstrap` as `DiscoveryConfig::bootstrap`, plus `extra` (this node's own servers).
fn build_node(
    port: u16,
    bind: Option<Ipv4Addr>,
    bootstrap: &Option<Vec<SocketAddrV4>>,
    extra: &[SocketAddrV4],
    filter: &ServerFilter,
) -> std::io::Result<AsyncDht> {
    let mut b = Dht::builder();
    b.port(port);
    if let Some(ip) = bind {
        b.bind_address(ip);
    }
    match bootstrap {
        Some(list) if list.is_empty() && extra.is_empty() => b.no_bootstrap(),
        Some(list) => b.bootstrap(&[&list[..], extra].concat()),
        None => b.extra_bootstrap(extra),
    };
    b.server_settings(ServerSettings {
        filter: Box::new(filter.clone()),
        max_mutable_values: SERVER_MAX_MUTABLE_ITEMS,
        max_immutable_values: SERVER_MAX_IMMUTABLE_ITEMS,
        max_info_hashes: SERVER_MAX_INFO_HASHES,
        max_peers_per_info_hash: SERVER_MAX_PEERS_PER_INFO_HASH,
    });
    if filter.serve {
        b.server_mode();
    }
    // A node of this process that was just dropped (restarted on an address change) closes its socket
    // only when its actor thread next looks at its channel, within `mainline`'s 50 ms read timeout:
    // a fixed port may still be taken for that long. Whether it is free is tried here with a socket of our
    // own, not by `build`: `mainline` 8 panics ("actor thread unexpectedly shutdown") instead of returning
    // the bind error when its actor thread fails to bind before the start has sent it its first message,
    // which a loaded machine made happen (the restart unit test failed in loaded CI runs).
    let deadline = Instant::now() + REBIND_WAIT;
    while port != 0
        && std::net::UdpSocket::bind((bind.unwrap_or(Ipv4Addr::UNSPECIFIED), port)).is_err()
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    // The port can still be taken between that socket's close and the node's bind (by another program):
    // that panic is this start's bind error, not a crash of the daemon.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| b.build())) {
        Ok(built) => Ok(built?.as_async()),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("the DHT node could not bind port {port}: taken"),
        )),
    }
}

impl Discovery {
    pub fn start(cfg: DiscoveryConfig) -> std::io::Result<Self> {
        let limiter = Arc::new(Mutex::new(ServerLimiter::new(0)));
        let filter = ServerFilter { serve: cfg.server, limiter: limiter.clone(), epoch: Instant::now() };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("qe-discovery")
            .enable_time()
            .build()?;
        let mut servers: Vec<AsyncDht> = Vec::new();
        let mut serving: Vec<SocketAddrV4> = Vec::new();
        let dht = if cfg.server && !cfg.serve_on.is_empty() {
            if cfg.port == 0 {
                return Err(std::io::Error::other("serving the DHT on several addresses needs a fixed port"));
            }
            for ip in &cfg.serve_on {
                let node = build_node(cfg.port, Some(*ip), &cfg.bootstrap, &serving, &filter)?;
                serving.push(runtime.block_on(node.info()).local_addr());
                servers.push(node);
            }
            let client = ServerFilter { serve: false, ..filter };
            build_node(0, None, &cfg.bootstrap, &serving, &client)?
        } else {
            let node = build_node(cfg.port, cfg.bind, &cfg.bootstrap, &[], &filter)?;
            if cfg.server {
                serving.push(runtime.block_on(node.info()).local_addr());
            }
            node
        };
        let local_addr = runtime.block_on(dht.info()).local_addr();
        let shared = Arc::new(Shared::new(cfg.seed, &cfg.network_key));
        Ok(Self { dht, servers, shared, local_addr, serving, runtime, limiter })
    }

    pub fn node_key(&self) -> [u8; 32] {
        self.shared.node_key
    }

    pub fn salt(&self) -> [u8; quicether_proto::record::SALT_LEN] {
        self.shared.keys.salt
    }

    /// The record counters, then the server's: requests answered, refused for their source's rate and for
    /// the total rate, source addresses tracked.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let mut all = self.shared.counters.snapshot();
        let limiter = self.limiter.lock().unwrap();
        let c = limiter.counts();
        all.extend([
            ("server_answered", c.answered),
            ("server_refused_source_rate", c.refused_source),
            ("server_refused_total_rate", c.refused_total),
            ("server_sources", limiter.sources() as u64),
        ]);
        all
    }

    /// Publishes our record; returns its sequence number (Unix milliseconds, or one more than the last
    /// if the clock has not moved on) and how many DHT nodes stored it.
    pub fn publish(&self, record: &Record) -> Result<(i64, u32), String> {
        let result = self.runtime.block_on(self.publish_async(record));
        let c = if result.is_ok() { &self.shared.counters.published } else { &self.shared.counters.publish_failed };
        c.fetch_add(1, Relaxed);
        result
    }

    async fn publish_async(&self, record: &Record) -> Result<(i64, u32), String> {
        let s = &self.shared;
        let mut last = s.publish.lock().await;
        if let Some(at) = last.1 {
            tokio::time::sleep(MIN_PUBLISH_INTERVAL.saturating_sub(at.elapsed())).await;
        }
        let salt = s.keys.salt;
        let mut seq = (crate::unix_time().as_millis() as i64).max(last.0 + 1);
        for attempt in 0..2 {
            let value = s.keys.seal(&s.node_key, seq, record, random_nonce()).map_err(|e| format!("record: {e}"))?;
            let item = MutableItem::new(SigningKey::from_bytes(&s.seed), &value, seq, Some(&salt));
            last.1 = Some(Instant::now());
            match self.dht.put_mutable(item, None).await {
                Ok(outcome) => {
                    last.0 = seq;
                    return Ok((seq, outcome.stored_at));
                }
                // The DHT holds a newer item of ours (our clock was stepped back, or another process
                // published with our key): go one past it, once.
                Err(PutMutableError::Concurrency(ConcurrencyError::NotMostRecent)) if attempt == 0 => {
                    if let Some(newest) = self.dht.get_mutable_most_recent(&s.node_key, Some(&salt)).await {
                        seq = seq.max(newest.seq() + 1);
                    } else {
                        seq += 1;
                    }
                }
                Err(e) => return Err(format!("DHT put failed: {e}")),
            }
        }
        Err("DHT put failed: a newer item of this key keeps winning".into())
    }

    /// Looks up `node_key`'s record within `timeout`: the newest one that passes every check, or None.
    ///
    /// It waits for the whole DHT query (about 2 s: until its slowest node has answered or timed out), as
    /// the first answers may come from nodes holding an older item. If `timeout` cuts the query short,
    /// what arrives later is still checked and counted in the background (a newer valid item raises the
    /// last sequence accepted).
    pub fn lookup(&self, node_key: &[u8; 32], timeout: Duration) -> Result<Option<Found>, LookupError> {
        let deadline = tokio::time::Instant::now() + timeout;
        self.runtime.block_on(async {
            let Ok(Ok(permit)) = tokio::time::timeout_at(deadline, self.shared.lookups.clone().acquire_owned()).await
            else {
                self.shared.counters.busy.fetch_add(1, Relaxed);
                return Err(LookupError::Busy);
            };
            self.shared.counters.lookups.fetch_add(1, Relaxed);
            let query = self.dht.get_mutable_detailed(node_key, Some(&self.shared.keys.salt), None);
            // `mainline` reports refused (badly signed) values only when the query completes, which may be
            // after our timeout: count them whenever that is.
            let shared = self.shared.clone();
            let outcome = query.outcome;
            self.runtime.spawn(async move {
                let o = outcome.recv().await;
                shared.counters.bad_signature.fetch_add(o.invalid_values as u64, Relaxed);
            });
            let previous = self.shared.last_seq.lock().unwrap().get(node_key).copied();
            let now = crate::unix_time().as_secs();
            let mut items: Vec<MutableItem> = Vec::new();
            let mut stream = query.items;
            let mut ended = false;
            loop {
                match tokio::time::timeout_at(deadline, stream.next()).await {
                    // Each DHT node returns its copy; keep one of each (bounded by the nodes asked).
                    Ok(Some(item)) if items.iter().any(|i| i.signature() == item.signature()) => {}
                    Ok(Some(item)) => items.push(item),
                    Ok(None) => {
                        ended = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            let seen: Vec<[u8; 64]> = items.iter().map(|i| *i.signature()).collect();
            let found = self.shared.accept_items(node_key, items, now, previous, None);
            let c = if found.is_some() { &self.shared.counters.found } else { &self.shared.counters.not_found };
            c.fetch_add(1, Relaxed);
            if !ended {
                let shared = self.shared.clone();
                let (key, floor) = (*node_key, found.as_ref().map(|f| f.seq));
                self.runtime.spawn(async move {
                    // Still one of the lookups in flight until the query is done.
                    let _permit = permit;
                    let mut rest = Vec::new();
                    while let Some(item) = stream.next().await {
                        if !seen.contains(item.signature())
                            && !rest.iter().any(|i: &MutableItem| i.signature() == item.signature())
                        {
                            rest.push(item);
                        }
                    }
                    shared.accept_items(&key, rest, now, previous, floor);
                });
            }
            Ok(found)
        })
    }
}

impl Shared {
    fn new(seed: [u8; 32], network_key: &[u8; 32]) -> Self {
        Self {
            keys: NetworkKeys::new(network_key),
            seed,
            node_key: quicether_proto::signing::public_key(&seed),
            counters: Counters::default(),
            lookups: Arc::new(Semaphore::new(MAX_LOOKUPS_IN_FLIGHT)),
            last_seq: Mutex::new(HashMap::new()),
            publish: tokio::sync::Mutex::new((0, None)),
        }
    }

    /// A fresh lookup's items: the newest acceptable one, refusals counted.
    #[cfg(test)]
    fn accept(&self, node_key: &[u8; 32], items: Vec<MutableItem>, now: u64) -> Option<Found> {
        let previous = self.last_seq.lock().unwrap().get(node_key).copied();
        self.accept_items(node_key, items, now, previous, None)
    }

    /// Picks the newest acceptable item, counting refusals (see the module comment for the order).
    /// `previous`: the last sequence accepted before this lookup (older ones are replays); `floor`: the
    /// sequence the lookup already returned (items up to it are stale copies, not refusals).
    fn accept_items(
        &self,
        node_key: &[u8; 32],
        mut items: Vec<MutableItem>,
        now: u64,
        previous: Option<i64>,
        floor: Option<i64>,
    ) -> Option<Found> {
        items.sort_by_key(|i| std::cmp::Reverse(i.seq()));
        let mut best: Option<Found> = None;
        for item in items {
            if previous.is_some_and(|p| item.seq() < p) {
                self.counters.replay.fetch_add(1, Relaxed);
                continue;
            }
            if best.is_some() || floor.is_some_and(|f| item.seq() <= f) {
                // Superseded by a newer accepted one in this lookup: a stale copy, not an attack.
                continue;
            }
            match self.keys.open(node_key, item.seq(), item.value()) {
                Err(OpenError::NotMember) => self.counters.non_member.fetch_add(1, Relaxed),
                Err(OpenError::Malformed(_)) => self.counters.malformed.fetch_add(1, Relaxed),
                Ok(r) if now > r.expires_at.saturating_add(CLOCK_TOLERANCE_S) => {
                    self.counters.expired.fetch_add(1, Relaxed)
                }
                Ok(record) => {
                    best = Some(Found { node_key: *node_key, seq: item.seq(), record });
                    continue;
                }
            };
        }
        if let Some(f) = &best {
            let mut seen = self.last_seq.lock().unwrap();
            if seen.len() >= MAX_TRACKED_KEYS && !seen.contains_key(node_key) {
                if let Some(oldest) = seen.iter().min_by_key(|(_, s)| **s).map(|(k, _)| *k) {
                    seen.remove(&oldest);
                }
            }
            let last = seen.entry(*node_key).or_insert(f.seq);
            *last = (*last).max(f.seq);
        }
        best
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        // Tasks still waiting on a query's outcome go first, then the DHT actors (dropping a handle ends
        // its thread and closes its socket).
        let runtime = std::mem::replace(
            &mut self.runtime,
            tokio::runtime::Builder::new_current_thread().build().expect("an empty runtime"),
        );
        runtime.shutdown_background();
        self.servers.clear();
    }
}

#[cfg(test)]
#[path = "discovery_tests.rs"]
mod tests;
