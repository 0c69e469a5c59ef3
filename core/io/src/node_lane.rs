//! A node's TCP lane ends (`lane.rs`), with its identity, pinning set and trust: the gateway end (one MPTCP
//! listener) and site ends (one transparent listener per peer whose lane is on).
//!
//! They run on a runtime of their own, whose threads yield to the data plane's (nice +5): a burst of lane
//! connections is a burst of TLS handshakes, CPU work that on the node's runtime queued the QUIC paths'
//! readers and probe replies behind it (500 connections at once held them long enough for two WANs' paths
//! to be declared silent on both ends).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use quicether_proto::lane_policy::LanePolicy;

use tokio::task::JoinHandle;

use super::{io_err, Event, Node};
use crate::lane::{self, LaneCounters, LaneDialer, LaneGate, LaneLimits, LogSink};
use crate::tls::{self, KnownClientKeys};

struct LaneEnd {
    limits: Arc<LaneLimits>,
    task: JoinHandle<()>,
}

impl Drop for LaneEnd {
    fn drop(&mut self) {
        // Stops accepting; connections already carried run on until either side closes.
        self.task.abort();
    }
}

/// Threads of the lanes' runtime, and how far below the data plane's they run.
const LANE_THREADS: usize = 2;
const LANE_NICE: libc::c_int = 5;

#[derive(Default)]
pub(super) struct Lanes {
    gateway: Option<LaneEnd>,
    /// By peer key.
    sites: HashMap<[u8; 32], LaneEnd>,
    /// The ACLs the gateway end judges each connection by (`set_lane_policy`).
    policy: Arc<RwLock<LanePolicy>>,
    /// Made when the first lane end starts; last, so the ends go before it.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Lanes {
    fn runtime(&mut self) -> io::Result<&tokio::runtime::Runtime> {
        if self.runtime.is_none() {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(LANE_THREADS)
                .thread_name("quicether-lane")
                .on_thread_start(|| {
                    // SAFETY: setpriority on this thread's own id; failing (no permission) only keeps nice 0.
                    unsafe {
                        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, LANE_NICE);
                    }
                })
                .enable_all()
                .build()?;
            self.runtime = Some(runtime);
        }
        Ok(self.runtime.as_ref().expect("made above"))
    }
}

impl Node {
    fn lane_log(&self) -> LogSink {
        let shared = Arc::downgrade(&self.shared);
        Arc::new(move |detail: String| {
            if let Some(shared) = shared.upgrade() {
                shared.emit(Event::Lane { detail });
            }
        })
    }

    /// Gateway end: accepts lane connections on `listen` from pinned peers and members (not invite keys),
    /// at most `max_connections` at once. Replaces a running one.
    pub fn start_lane_gateway(&self, listen: SocketAddr, max_connections: usize) -> io::Result<()> {
        self.runtime()?; // not stopped
        let mut lanes = self.lanes.lock().unwrap();
        lanes.gateway = None; // the old listener's port is free before the new one binds it
        let policy = lanes.policy.clone();
        let runtime = lanes.runtime()?;
        let _guard = runtime.enter();
        let refused_sink = Arc::downgrade(&self.shared);
        let verifier = Arc::new(KnownClientKeys::new(
            self.known_keys.clone(),
            self.shared.trust.clone(),
            tls::provider(),
            Box::new(move |key, reason| {
                if let Some(shared) = refused_sink.upgrade() {
                    shared.emit(Event::HandshakeRefused { key, reason: format!("tcp lane: {reason}") });
                }
            }),
        ));
        let acceptor = lane::acceptor(verifier, self.identity.clone()).map_err(|e| io_err("lane tls", e))?;
        let listener = lane::mptcp_listener(listen).map_err(|e| io_err(&format!("lane listen {listen}"), e))?;
        let limits = Arc::new(LaneLimits::new(max_connections, self.lane_log()));
        let table = Arc::downgrade(&self.shared);
        let speaks_for = Box::new(move |key: &[u8; 32], source: IpAddr| {
            table.upgrade().is_some_and(|shared| {
                shared.table.read().unwrap().allowed_ips_of(key).iter().any(|prefix| prefix.contains(source))
            })
        });
        let gate = Arc::new(LaneGate { destinations: lane::exit_destination, speaks_for, acl: policy });
        let task = runtime.spawn(lane::serve_gateway(listener, acceptor, limits.clone(), gate));
        drop(_guard);
        lanes.gateway = Some(LaneEnd { limits, task });
        Ok(())
    }

    /// Site end for peer `key`: LAN connections TPROXY'd to `listen` go to the peer's lane at `peer_lane`.
    pub fn start_lane_site(
        &self,
        key: [u8; 32],
        listen: SocketAddr,
        peer_lane: SocketAddr,
        max_connections: usize,
    ) -> io::Result<()> {
        self.runtime()?; // not stopped
        let mut lanes = self.lanes.lock().unwrap();
        lanes.sites.remove(&key);
        let runtime = lanes.runtime()?;
        let _guard = runtime.enter();
        let sink = Arc::downgrade(&self.shared);
        let fell_back = Box::new(move || {
            if let Some(shared) = sink.upgrade() {
                let detail = format!(
                    "{} lane connections in a row to {peer_lane} fell back to plain TCP (MPTCP stripped on the way)",
                    lane::FALLBACKS_IN_A_ROW
                );
                shared.emit(Event::LaneFallback { key, detail });
            }
        });
        let dialer = LaneDialer::new(self.identity.clone(), key, None, peer_lane)
            .map_err(|e| io_err("lane tls", e))?
            .on_fallback(fell_back);
        let listener = lane::transparent_listener(listen).map_err(|e| io_err(&format!("lane listen {listen}"), e))?;
        let limits = Arc::new(LaneLimits::new(max_connections, self.lane_log()));
        let task = runtime.spawn(lane::serve_site(listener, Arc::new(dialer), limits.clone()));
        drop(_guard);
        lanes.sites.insert(key, LaneEnd { limits, task });
        Ok(())
    }

    /// The ACLs the gateway end judges each new lane connection by (the firewall's, for traffic from the
    /// tunnel); in force at once, also for a gateway end started before.
    pub fn set_lane_policy(&self, policy: LanePolicy) {
        *self.lanes.lock().unwrap().policy.write().unwrap() = policy;
    }

    /// Stops every lane end of this node.
    pub fn stop_lanes(&self) {
        let mut lanes = self.lanes.lock().unwrap();
        lanes.gateway = None;
        lanes.sites.clear();
    }

    /// Stops the lane ends and their runtime, with the connections they carry (the node is stopping).
    pub(super) fn shut_down_lanes(&self) {
        self.stop_lanes();
        let runtime = self.lanes.lock().unwrap().runtime.take();
        if let Some(runtime) = runtime {
            runtime.shutdown_timeout(std::time::Duration::from_millis(500));
        }
    }

    /// The lane's counters, both ends summed: (role, name) → value, role "site" or "gateway".
    pub fn lane_stats(&self) -> BTreeMap<String, u64> {
        let lanes = self.lanes.lock().unwrap();
        let mut out = BTreeMap::new();
        let ends =
            lanes.gateway.iter().map(|end| ("gateway", end)).chain(lanes.sites.values().map(|end| ("site", end)));
        for (role, end) in ends {
            for (name, value) in fields(&end.limits.counters) {
                *out.entry(format!("{role}_{name}")).or_default() += value;
            }
        }
        out
    }
}

fn fields(c: &LaneCounters) -> [(&'static str, u64); 10] {
    let get = |x: &std::sync::atomic::AtomicU64| x.load(Ordering::Relaxed);
    [
        ("connections", get(&c.connections)),
        ("active", get(&c.active)),
        ("bytes_out", get(&c.bytes_out)),
        ("bytes_in", get(&c.bytes_in)),
        ("refused", get(&c.refused)),
        ("failed", get(&c.failed)),
        ("at_cap", get(&c.at_cap)),
        ("fallback", get(&c.fallback)),
        ("missed_wakeups", get(&c.missed_wakeups)),
        ("stuck_resets", get(&c.stuck_resets)),
    ]
}
