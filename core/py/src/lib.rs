//! `quicether._core`: PyO3 bindings only. Logic lives in `quicether-io` (and later crates), which know
//! nothing of Python. Every call that waits on the OS releases the GIL.

use std::sync::Mutex;

mod discovery;
mod join;
mod lan_discovery;
mod membership;

use pyo3::exceptions::{PyKeyError, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use quicether_io::node::{
    Congestion, Event, Node as IoNode, NodeConfig, PathKind, PeerConfig, PeerError, PeerPolicy, PeerStats, WanConfig,
};
use quicether_io::peer::PathRoute;
use quicether_io::tls;
use quicether_proto::allowed_ips::Prefix;
use quicether_proto::classify::Rule;
use quicether_proto::join::JoinAnswer;
use quicether_proto::lane_policy::{AclRule, LanePolicy, Ports};
use quicether_proto::scheduler::Mode;
use quicether_proto::signing;

fn key32(name: &str, bytes: &[u8]) -> PyResult<[u8; 32]> {
    bytes.try_into().map_err(|_| PyValueError::new_err(format!("{name} must be 32 bytes, got {}", bytes.len())))
}

fn mode(text: &str) -> PyResult<Mode> {
    text.parse().map_err(PyValueError::new_err)
}

/// (key, endpoint, allowed_ips, bulk_mode, realtime_mode, rules: [(protocol, port, dscp, mode)])
type PeerArg = (Vec<u8>, Option<String>, Vec<String>, String, String, Vec<RuleArg>);
type RuleArg = (Option<u8>, Option<u16>, Option<u8>, String);
/// (name, device, local address, backup)
type WanArg = (String, Option<String>, String, bool, u32);

fn wan_config(arg: WanArg) -> PyResult<WanConfig> {
    let (name, device, local, backup, mark) = arg;
    let local = local.parse().map_err(|_| PyValueError::new_err(format!("WAN {name}: invalid address {local:?}")))?;
    Ok(WanConfig { name, device, local, backup, mark })
}

fn peer_config(arg: PeerArg) -> PyResult<PeerConfig> {
    let (key, endpoint, allowed, bulk, realtime, rules) = arg;
    new_peer_config(&key, endpoint.into_iter().collect(), allowed, &bulk, &realtime, rules, false)
}

fn new_peer_config(
    key: &[u8],
    endpoints: Vec<String>,
    allowed: Vec<String>,
    bulk: &str,
    realtime: &str,
    rules: Vec<RuleArg>,
    member_only: bool,
) -> PyResult<PeerConfig> {
    let endpoints = endpoints
        .iter()
        .map(|e| e.parse().map_err(|_| PyValueError::new_err(format!("invalid endpoint {e:?}"))))
        .collect::<PyResult<Vec<_>>>()?;
    let allowed_ips =
        allowed.iter().map(|a| a.parse::<Prefix>()).collect::<Result<Vec<_>, _>>().map_err(PyValueError::new_err)?;
    let policy = policy(bulk, realtime, rules)?;
    Ok(PeerConfig { key: key32("peer key", key)?, endpoints, allowed_ips, policy, member_only })
}

fn policy(bulk: &str, realtime: &str, rules: Vec<RuleArg>) -> PyResult<PeerPolicy> {
    let rules = rules
        .into_iter()
        .map(|(protocol, port, dscp, m)| Ok(Rule { protocol, port, dscp, mode: Some(mode(&m)?) }))
        .collect::<PyResult<Vec<_>>>()?;
    Ok(PeerPolicy { bulk_mode: mode(bulk)?, realtime_mode: mode(realtime)?, rules })
}

fn peer_error(e: PeerError) -> PyErr {
    match e {
        PeerError::Unknown => PyKeyError::new_err(e.to_string()),
        PeerError::AlreadyExists | PeerError::Stopped => PyValueError::new_err(e.to_string()),
    }
}

fn os_error(e: std::io::Error) -> PyErr {
    PyOSError::new_err((e.raw_os_error().unwrap_or(0), e.to_string()))
}

/// One `[[acl]]` rule from Python: (allow, sources, destinations, protocol, port).
type AclRuleArgs = (bool, Vec<String>, Vec<String>, Option<u8>, Option<u16>);

/// A running QuicEther node: QUIC endpoints, peers and their paths, TUN device, packet loops (Rust threads).
#[pyclass(module = "quicether._core")]
struct Node {
    inner: Mutex<Option<IoNode>>,
}

#[pymethods]
impl Node {
    #[new]
    #[pyo3(signature = (listen, tun_name, path_mtu, seed, peers, notify_fd=None, wans=None, congestion="loss-tolerant",
                        membership=None, io_threads=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        listen: &str,
        tun_name: &str,
        path_mtu: u16,
        seed: &[u8],
        peers: Vec<PeerArg>,
        notify_fd: Option<i32>,
        wans: Option<Vec<WanArg>>,
        congestion: &str,
        membership: Option<Vec<u8>>,
        io_threads: Option<usize>,
    ) -> PyResult<Self> {
        let congestion = match congestion {
            "cubic" => Congestion::Cubic,
            "bbr" => Congestion::Bbr,
            "loss-tolerant" => Congestion::LossTolerant,
            other => {
                return Err(PyValueError::new_err(format!(
                    "unknown congestion control {other:?} (loss-tolerant, cubic, bbr)"
                )))
            }
        };
        let listen = listen.parse().map_err(|_| PyValueError::new_err(format!("invalid listen address {listen:?}")))?;
        let peers = peers.into_iter().map(peer_config).collect::<PyResult<Vec<_>>>()?;
        let wans = wans.map(|w| w.into_iter().map(wan_config).collect::<PyResult<Vec<_>>>()).transpose()?;
        let config = NodeConfig {
            listen,
            tun_name: tun_name.to_string(),
            path_mtu,
            seed: key32("seed", seed)?,
            membership,
            wans,
            congestion,
            io_threads,
        };
        let node = py.detach(move || IoNode::start(config, peers, notify_fd)).map_err(os_error)?;
        Ok(Self { inner: Mutex::new(Some(node)) })
    }

    /// Starts dialing all peers from a new WAN: (name, device, local address, backup).
    fn add_wan(&self, py: Python<'_>, wan: WanArg) -> PyResult<()> {
        let wan = wan_config(wan)?;
        py.detach(|| self.with(|node| node.add_wan(wan)))?.map_err(os_error)
    }

    /// Closes the WAN's paths at once and stops dialing from it; False if there was no such WAN.
    fn remove_wan(&self, name: &str) -> PyResult<bool> {
        self.with(|n| n.remove_wan(name))
    }

    /// Adds a peer at run time (ValueError if its key is already there or an argument is bad): dials it at
    /// `endpoints` from every WAN, routes `allowed_ips` to it, lets its key handshake with us.
    /// `member_only`: a path to it counts only if it shows a valid membership of our network (its key came
    /// from a LAN announcement); fixed for the peer's life.
    #[pyo3(signature = (key, endpoints, allowed_ips, mode, realtime_mode, classes, member_only=false))]
    #[allow(clippy::too_many_arguments)]
    fn add_peer(
        &self,
        py: Python<'_>,
        key: &[u8],
        endpoints: Vec<String>,
        allowed_ips: Vec<String>,
        mode: &str,
        realtime_mode: &str,
        classes: Vec<RuleArg>,
        member_only: bool,
    ) -> PyResult<()> {
        let cfg = new_peer_config(key, endpoints, allowed_ips, mode, realtime_mode, classes, member_only)?;
        py.detach(|| self.with(|node| node.add_peer(cfg)))?.map_err(peer_error)
    }

    /// Changes a peer in place (its paths stay up); KeyError if there is no such peer.
    #[pyo3(signature = (key, endpoints, allowed_ips, mode, realtime_mode, classes))]
    #[allow(clippy::too_many_arguments)]
    fn update_peer(
        &self,
        py: Python<'_>,
        key: &[u8],
        endpoints: Vec<String>,
        allowed_ips: Vec<String>,
        mode: &str,
        realtime_mode: &str,
        classes: Vec<RuleArg>,
    ) -> PyResult<()> {
        let cfg = new_peer_config(key, endpoints, allowed_ips, mode, realtime_mode, classes, false)?;
        py.detach(|| self.with(|node| node.update_peer(cfg)))?.map_err(peer_error)
    }

    /// Removes a peer: closes its paths, drops its routes, refuses its key from now on. False if unknown.
    fn remove_peer(&self, py: Python<'_>, key: &[u8]) -> PyResult<bool> {
        let key = key32("peer key", key)?;
        py.detach(|| self.with(|node| node.remove_peer(&key)))
    }

    /// Makes the node a member of the network with key `network_key` (None: of none): a peer showing a
    /// valid certificate of it is admitted (scheduled by `mode`, `realtime_mode`, `classes`) and the members
    /// in `revocations` are refused. Returns the keys of admitted members removed because they no longer
    /// qualify; ValueError (nothing changed) if a revocation does not verify.
    #[pyo3(signature = (network_key, revocations, mode, realtime_mode, classes))]
    fn set_network<'py>(
        &self,
        py: Python<'py>,
        network_key: Option<Vec<u8>>,
        revocations: Vec<Vec<u8>>,
        mode: &str,
        realtime_mode: &str,
        classes: Vec<RuleArg>,
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let network_key = network_key.map(|k| key32("network key", &k)).transpose()?;
        let member_policy = policy(mode, realtime_mode, classes)?;
        let removed = py.detach(|| self.with(|node| node.set_network(network_key, &revocations, member_policy)))?;
        Ok(removed.map_err(PyValueError::new_err)?.iter().map(|k| PyBytes::new(py, k)).collect())
    }

    /// Removes admitted members whose certificate expired (or was revoked) since; returns their keys.
    fn recheck_members<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        self.with(|n| n.recheck_members().iter().map(|k| PyBytes::new(py, k)).collect())
    }

    /// Tells every peer these certificates (renewals this admin node issued) as member news, each checked
    /// first; returns how many were new. A renewal of this node's own comes back as `membership_renewed`.
    fn tell_members(&self, certificates: Vec<Vec<u8>>) -> PyResult<usize> {
        self.with(|n| n.tell_members(certificates))?.map_err(PyValueError::new_err)
    }

    /// Shows `certificate` (this node's renewed membership certificate, checked by the caller) in every
    /// handshake from now on; the paths that are up stay up.
    fn set_membership(&self, certificate: Vec<u8>) -> PyResult<()> {
        self.with(|n| n.set_membership(certificate))?.map_err(PyValueError::new_err)
    }

    /// The one-time keys (32 bytes each) of the invites pending on this admin node: a handshake showing one
    /// is a join request (`join_requested` event), never a path. Replaces the previous set.
    fn set_invites(&self, keys: Vec<Vec<u8>>) -> PyResult<()> {
        let keys = keys.iter().map(|k| key32("invite key", k)).collect::<PyResult<Vec<_>>>()?;
        self.with(|n| n.set_invites(keys))
    }

    /// Answers join request `id`: `certified` with the bytes the joining node gets, or refused with
    /// `body` the reason (UTF-8). False if the request is gone (it waited more than 10 s).
    fn answer_join(&self, id: u64, certified: bool, body: &[u8]) -> PyResult<bool> {
        let answer = if certified {
            JoinAnswer::Certified(body.to_vec())
        } else {
            JoinAnswer::Refused(String::from_utf8_lossy(body).into_owned())
        };
        self.with(|n| n.answer_join(id, answer))
    }

    /// This node's Ed25519 public key (32 bytes).
    fn public_key<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        self.with(|n| PyBytes::new(py, &n.public_key))
    }

    /// The bound UDP address, "ip:port".
    fn local_addr(&self) -> PyResult<String> {
        self.with(|n| n.local_addr.to_string())
    }

    /// Largest inner IP packet one DATAGRAM frame carries: the TUN MTU.
    fn inner_mtu(&self) -> PyResult<usize> {
        self.with(|n| n.inner_mtu)
    }

    /// (threads carrying packets, why that many).
    fn io_threads(&self) -> PyResult<(usize, String)> {
        self.with(|n| n.io_threads())
    }

    /// (TUN offloads in use, e.g. "tso+uso+csum" or "none"; packets read that could not be split).
    fn tun_offloads(&self) -> PyResult<(String, u64)> {
        self.with(|n| n.tun_offloads())
    }

    /// Handshakes refused by key pinning so far, reported as events or not (reports are rate-limited).
    fn refused_handshakes(&self) -> PyResult<u64> {
        self.with(|n| n.refused_handshakes())
    }

    /// (members learned from peers, news items refused: bad signature, foreign, expired or malformed).
    fn member_news(&self) -> PyResult<(usize, u64)> {
        self.with(|n| n.member_news())
    }

    /// {WAN: the NAT it is behind, in words}, per local socket that dials (`quicether_proto::nat`).
    fn nat_types(&self) -> PyResult<std::collections::BTreeMap<String, String>> {
        self.with(|n| n.nat_mappings().into_iter().map(|(wan, m)| (wan, m.describe())).collect())
    }

    /// Maps the UDP port of WAN `wan`'s socket ("default": the listening socket on a node without WANs)
    /// on the WAN's gateway (an IPv4 address) with PCP or NAT-PMP, renewed until the WAN is removed or the node
    /// stops (then deleted). OSError if there is no such WAN or its request socket cannot be made.
    fn map_port(&self, py: Python<'_>, wan: &str, gateway: &str) -> PyResult<()> {
        let gateway: std::net::Ipv4Addr = gateway
            .parse()
            .map_err(|_| PyValueError::new_err(format!("WAN {wan}: gateway {gateway:?} is not IPv4")))?;
        py.detach(|| self.with(|node| node.map_port(wan, gateway)))?.map_err(os_error)
    }

    /// Per WAN with port mapping on: {wan, protocol, gateway, internal_port, external ("ip:port" or None),
    /// expires_in_s (None when unmapped), problem (why there is no mapping, or None)}.
    fn port_mappings<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let mappings = self.with(|n| n.port_mappings())?;
        mappings
            .into_iter()
            .map(|m| {
                let d = PyDict::new(py);
                d.set_item("wan", m.wan)?;
                d.set_item("protocol", m.protocol)?;
                d.set_item("gateway", m.gateway.to_string())?;
                d.set_item("internal_port", m.internal_port)?;
                d.set_item("external", m.external.map(|a| a.to_string()))?;
                d.set_item("expires_in_s", m.expires_in_s)?;
                d.set_item("problem", m.problem)?;
                Ok(d)
            })
            .collect()
    }

    /// Hole punching: {attempts, successes, forwarded, refused, skipped, probes_sent, probe_sockets, probe_hits,
    /// probe_misses} (`quicether_proto::punch::PunchStats`).
    fn punch_stats(&self) -> PyResult<std::collections::BTreeMap<&'static str, u64>> {
        self.with(|n| {
            let s = n.punch_stats();
            [
                ("attempts", s.attempts),
                ("successes", s.successes),
                ("forwarded", s.forwarded),
                ("refused", s.refused),
                ("skipped", s.skipped),
                ("probes_sent", s.probes_sent),
                ("probe_sockets", s.probe_sockets),
                ("probe_hits", s.probe_hits),
                ("probe_misses", s.probe_misses),
            ]
            .into_iter()
            .collect()
        })
    }

    /// Relays for the members of our network (or stops): forwards their QUIC packets to each other, each
    /// member at most `rate_mbit` (Mbit/s).
    #[pyo3(signature = (enabled, rate_mbit=50.0))]
    fn set_relay(&self, enabled: bool, rate_mbit: f64) -> PyResult<()> {
        if !(rate_mbit.is_finite() && rate_mbit >= 0.0) {
            return Err(PyValueError::new_err(format!("relay rate {rate_mbit} Mbit/s is not a rate")));
        }
        self.with(|n| n.set_relay(enabled, (rate_mbit * 1e6 / 8.0) as u64))
    }

    /// Relaying: {enabled (0/1), rate_bytes_per_s (each member's), forwarded_packets, forwarded_bytes, dropped_* by cause, and the member
    /// side's sent_packets, received_packets, received_dropped, dials} (`quicether_proto::relay::RelayStats`).
    fn relay_stats(&self) -> PyResult<std::collections::BTreeMap<&'static str, u64>> {
        self.with(|n| {
            let (enabled, rate, stats) = n.relay_stats();
            [("enabled", enabled as u64), ("rate_bytes_per_s", rate)].into_iter().chain(stats.fields()).collect()
        })
    }

    /// The relays to name in our DHT record (node keys): members that offered to relay for us and that we
    /// have a path to, the fastest 4.
    fn record_relays<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        Ok(self.with(|n| n.record_relays())?.iter().map(|k| PyBytes::new(py, k)).collect())
    }

    /// The relays member `key`'s DHT record names: a relayed dial to it goes through one of them when we
    /// have a path to one (else through any relay, as without a record).
    fn set_named_relays(&self, key: &[u8], relays: Vec<Vec<u8>>) -> PyResult<()> {
        let key = key32("node key", key)?;
        let relays = relays.iter().map(|r| key32("relay key", r)).collect::<PyResult<Vec<_>>>()?;
        self.with(|n| n.set_named_relays(&key, &relays))
    }

    /// TCP lane, gateway end: accepts lane connections on `listen` ("addr:port") from pinned peers and
    /// members, at most `max_connections` at once.
    fn start_lane_gateway(&self, py: Python<'_>, listen: &str, max_connections: usize) -> PyResult<()> {
        let listen = listen.parse().map_err(|e| PyValueError::new_err(format!("lane listen {listen:?}: {e}")))?;
        py.detach(|| self.with(|n| n.start_lane_gateway(listen, max_connections)))?.map_err(os_error)
    }

    /// TCP lane, site end for peer `key`: connections TPROXY'd to `listen` go to its lane at `peer_lane`.
    fn start_lane_site(
        &self,
        py: Python<'_>,
        key: &[u8],
        listen: &str,
        peer_lane: &str,
        max_connections: usize,
    ) -> PyResult<()> {
        let key = key32("key", key)?;
        let listen = listen.parse().map_err(|e| PyValueError::new_err(format!("lane listen {listen:?}: {e}")))?;
        let peer_lane =
            peer_lane.parse().map_err(|e| PyValueError::new_err(format!("peer lane {peer_lane:?}: {e}")))?;
        py.detach(|| self.with(|n| n.start_lane_site(key, listen, peer_lane, max_connections)))?.map_err(os_error)
    }

    /// The ACLs the lane's gateway end judges each connection by: `rules` in order (allow, sources,
    /// destinations, protocol number or None, port or None; an empty prefix list is any address),
    /// `default_deny` (acl_default = "deny") for a destination in `sites` (the peers' allowed_ips, the LAN);
    /// and the ports as the firewall has them (`tun`, a router's `lan`, `outside`), which decide where a
    /// connection keeps the LAN host's address.
    fn set_lane_policy(
        &self,
        rules: Vec<AclRuleArgs>,
        default_deny: bool,
        sites: Vec<String>,
        tun: String,
        lan: Option<String>,
        outside: Vec<String>,
    ) -> PyResult<()> {
        let prefixes = |list: &[String]| {
            list.iter().map(|p| p.parse::<Prefix>()).collect::<Result<Vec<_>, _>>().map_err(PyValueError::new_err)
        };
        let rules = rules
            .iter()
            .map(|(allow, sources, destinations, protocol, port)| {
                Ok(AclRule {
                    allow: *allow,
                    sources: prefixes(sources)?,
                    destinations: prefixes(destinations)?,
                    protocol: *protocol,
                    port: *port,
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        let policy = LanePolicy { rules, default_deny, sites: prefixes(&sites)?, ports: Ports { tun, lan, outside } };
        self.with(|n| n.set_lane_policy(policy))
    }

    fn stop_lanes(&self) -> PyResult<()> {
        self.with(|n| n.stop_lanes())
    }

    /// The lane's counters: {site_|gateway_}{connections, active, bytes_out, bytes_in, refused, failed, at_cap,
    /// fallback, missed_wakeups, stuck_resets}.
    fn lane_stats(&self) -> PyResult<std::collections::BTreeMap<String, u64>> {
        self.with(|n| n.lane_stats())
    }

    /// (incoming handshakes answered with a Retry under load, dropped beyond the limit in flight).
    fn handshake_load(&self) -> PyResult<(u64, u64)> {
        self.with(|n| n.handshake_load())
    }

    /// (UDP send calls, datagrams sent, receive calls, datagrams received) over every QUIC socket: how many
    /// datagrams each system call moves (GSO/GRO batching).
    fn udp_batching(&self) -> PyResult<(u64, u64, u64, u64)> {
        self.with(|n| n.udp_batching())
    }

    /// Outbound packets dropped because no peer owns their destination.
    fn no_route_drops(&self) -> PyResult<u64> {
        self.with(|n| n.no_route_drops())
    }

    /// One dict per peer: key, endpoint, connected, rtt_ms, last_handshake (unix s), counters, reorder
    /// counters, and "paths": one dict per path (wan, local_wan, peer_wan, kind, via, origin, local, remote,
    /// up, backup, rtt_ms, loss, bytes, rates, window, queue); fields documented in quicether/_core.pyi.
    fn peers<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let stats = self.with(|n| n.peer_stats())?;
        stats.into_iter().map(|s| peer_dict(py, s)).collect()
    }

    /// Drains queued events: dicts with "kind", "key" (bytes or None), "wan" (or None), "detail" and, per
    /// kind, more fields (documented in quicether/_core.pyi).
    fn events<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let events = self.with(|n| n.drain_events())?;
        events.into_iter().map(|e| event_dict(py, e)).collect()
    }

    /// Closes connections, sockets and TUN device. Idempotent.
    fn close(&self, py: Python<'_>) {
        let node = self.inner.lock().unwrap().take();
        py.detach(move || drop(node));
    }
}

impl Node {
    /// `f` on the node, under its lock. A method that lets go of the GIL (`py.detach`) takes the lock inside
    /// the detached closure, never around it: holding the lock while waiting to get the GIL back deadlocks
    /// with a thread that holds the GIL and waits for the lock (the daemon's main thread adding a peer, a
    /// worker thread asking for `local_addr`: seen as a daemon that never answered its API).
    fn with<T>(&self, f: impl FnOnce(&IoNode) -> T) -> PyResult<T> {
        match self.inner.lock().unwrap().as_ref() {
            Some(n) => Ok(f(n)),
            None => Err(PyValueError::new_err("node is closed")),
        }
    }
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn peer_dict(py: Python<'_>, s: PeerStats) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("key", PyBytes::new(py, &s.key))?;
    d.set_item("endpoint", s.endpoint.map(|e| e.to_string()))?;
    d.set_item("connected", s.connected)?;
    d.set_item("rtt_ms", s.rtt.map(ms))?;
    d.set_item(
        "last_handshake",
        s.last_handshake.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_secs_f64()),
    )?;
    d.set_item("tx_packets", s.tx_packets)?;
    d.set_item("tx_bytes", s.tx_bytes)?;
    d.set_item("rx_packets", s.rx_packets)?;
    d.set_item("rx_bytes", s.rx_bytes)?;
    d.set_item("tx_dropped", s.drops.tx)?;
    d.set_item("tx_dropped_no_path", s.drops.tx_no_path)?;
    d.set_item("tx_dropped_queue_full", s.drops.tx_queue_full)?;
    d.set_item("tx_dropped_refused", s.drops.tx_refused)?;
    d.set_item("rx_dropped", s.drops.rx)?;
    d.set_item("resend_evicted", s.drops.resend_evicted)?;
    d.set_item("retransmitted", s.retransmitted)?;
    d.set_item("punch_attempts", s.punch_attempts)?;
    let r = PyDict::new(py);
    r.set_item("in_order", s.reorder.in_order)?;
    r.set_item("reordered", s.reorder.reordered)?;
    r.set_item("late", s.reorder.late)?;
    r.set_item("duplicates", s.reorder.duplicates)?;
    r.set_item("skipped", s.reorder.skipped)?;
    r.set_item("overflowed", s.reorder.overflowed)?;
    r.set_item("resyncs", s.reorder.resyncs)?;
    r.set_item("repaired", s.reorder.repaired)?;
    r.set_item("timeout_ms", ms(s.reorder_timeout))?;
    d.set_item("reorder", r)?;
    let paths = s
        .paths
        .into_iter()
        .map(|p| {
            let pd = PyDict::new(py);
            pd.set_item("wan", p.wan)?;
            pd.set_item("local_wan", p.local_wan)?;
            pd.set_item("peer_wan", p.peer_wan)?;
            pd.set_item("kind", p.kind.name())?;
            pd.set_item(
                "via",
                match p.kind {
                    PathKind::Relayed { via } => Some(PyBytes::new(py, &via)),
                    _ => None,
                },
            )?;
            pd.set_item("origin", if p.dialed { "dialed" } else { "accepted" })?;
            pd.set_item("local", p.local.map(|a| a.to_string()))?;
            pd.set_item("public", p.public.map(|a| a.to_string()))?;
            pd.set_item("remote", p.remote.to_string())?;
            pd.set_item("up", p.up)?;
            pd.set_item("backup", p.backup)?;
            pd.set_item("rtt_ms", ms(p.rtt))?;
            pd.set_item("loss", p.loss)?;
            pd.set_item("tx_bytes", p.tx_bytes)?;
            pd.set_item("rx_bytes", p.rx_bytes)?;
            pd.set_item("tx_rate_bps", p.tx_rate_bps)?;
            pd.set_item("rx_rate_bps", p.rx_rate_bps)?;
            pd.set_item("cwnd_bytes", p.cwnd)?;
            pd.set_item("queued_bytes", p.queued)?;
            pd.set_item("delivery_rate_bps", p.delivery_rate_bps)?;
            pd.set_item("min_rtt_ms", ms(p.min_rtt))?;
            Ok(pd)
        })
        .collect::<PyResult<Vec<_>>>()?;
    d.set_item("paths", paths)?;
    Ok(d)
}

/// The route fields of path events: local_wan, peer_wan, path_kind, via, origin, remote.
fn set_route(d: &Bound<'_, PyDict>, route: &PathRoute, remote: String) -> PyResult<()> {
    let py = d.py();
    d.set_item("local_wan", &route.local_wan)?;
    d.set_item("peer_wan", route.peer_wan.as_deref())?;
    d.set_item("path_kind", route.kind.name())?;
    d.set_item("via", via(py, route.kind))?;
    d.set_item("origin", if route.dialed { "dialed" } else { "accepted" })?;
    d.set_item("remote", remote)
}

fn via(py: Python<'_>, kind: PathKind) -> Option<Bound<'_, PyBytes>> {
    match kind {
        PathKind::Relayed { via } => Some(PyBytes::new(py, &via)),
        _ => None,
    }
}

fn event_dict(py: Python<'_>, e: Event) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    let (kind, key, wan, detail) = match e {
        Event::PeerAdded { key } => ("peer_added", Some(key), None, String::new()),
        Event::PeerRemoved { key } => ("peer_removed", Some(key), None, String::new()),
        Event::MemberAdmitted { key, certificate } => {
            d.set_item("certificate", PyBytes::new(py, &certificate))?;
            ("member_admitted", Some(key), None, String::new())
        }
        Event::MemberLearned { key, certificate } => {
            d.set_item("certificate", PyBytes::new(py, &certificate))?;
            ("member_learned", Some(key), None, String::new())
        }
        Event::MembershipRenewed { certificate } => {
            d.set_item("certificate", PyBytes::new(py, &certificate))?;
            ("membership_renewed", None, None, String::new())
        }
        Event::RevocationLearned { key, revocation } => {
            d.set_item("revocation", PyBytes::new(py, &revocation))?;
            ("revocation_learned", Some(key), None, String::new())
        }
        Event::PeerConnected { key } => ("peer_connected", Some(key), None, String::new()),
        Event::PeerDisconnected { key, reason } => ("peer_disconnected", Some(key), None, reason),
        Event::PathUp { key, route, remote, reason } => {
            set_route(&d, &route, remote.to_string())?;
            d.set_item("reason", reason.name())?;
            ("path_up", Some(key), Some(route.label().to_string()), remote.to_string())
        }
        Event::PathDown { key, route, reason, detail } => {
            set_route(&d, &route, route.remote.to_string())?;
            d.set_item("reason", reason.name())?;
            ("path_down", Some(key), Some(route.label().to_string()), detail)
        }
        Event::HandshakeRefused { key, reason } => ("handshake_refused", key, None, reason),
        Event::DialFailed { key, wan, reason } => ("dial_failed", Some(key), Some(wan), reason),
        Event::PortMapping { wan, detail } => ("port_mapping", None, Some(wan), detail),
        Event::TunFailed { error } => ("tun_failed", None, None, error),
        Event::Lane { detail } => ("lane", None, None, detail),
        Event::LaneFallback { key, detail } => ("lane_fallback", Some(key), None, detail),
        Event::JoinRequested { id, invite, node, name, lan_prefixes } => {
            d.set_item("id", id)?;
            d.set_item("node", PyBytes::new(py, &node))?;
            d.set_item("lan_prefixes", lan_prefixes.iter().map(membership::prefix_text).collect::<Vec<_>>())?;
            ("join_requested", Some(invite), None, name)
        }
    };
    d.set_item("kind", kind)?;
    d.set_item("key", key.map(|k| PyBytes::new(py, &k)))?;
    d.set_item("wan", wan)?;
    d.set_item("detail", detail)?;
    Ok(d)
}

/// 32 random bytes from the OS: a new Ed25519 private key seed.
/// The AEAD this process prefers for its paths and lane ("aes-gcm" or "chacha20-poly1305") and why.
#[pyfunction]
fn cipher() -> (&'static str, String) {
    let (cipher, why) = tls::cipher();
    (cipher.name(), why)
}

#[pyfunction]
fn generate_seed<'py>(py: Python<'py>) -> Bound<'py, PyBytes> {
    PyBytes::new(py, &tls::generate_seed())
}

/// The Ed25519 public key of a 32-byte seed.
#[pyfunction]
fn public_key_of_seed<'py>(py: Python<'py>, seed: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    Ok(PyBytes::new(py, &tls::public_key_of_seed(&key32("seed", seed)?)))
}

/// Ed25519 signature (64 bytes) of `message` with a 32-byte node or network key seed.
#[pyfunction]
fn sign<'py>(py: Python<'py>, seed: &[u8], message: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    Ok(PyBytes::new(py, &signing::sign(&key32("seed", seed)?, message)))
}

/// True if `signature` is the Ed25519 signature of `message` by `public_key`; False for anything else,
/// wrong lengths included.
#[pyfunction]
fn verify(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    signing::verify(public_key, message, signature)
}

/// Version of the compiled core; Python checks it matches the package.
#[pyfunction]
fn core_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Node>()?;
    m.add_function(wrap_pyfunction!(generate_seed, m)?)?;
    m.add_function(wrap_pyfunction!(cipher, m)?)?;
    m.add_function(wrap_pyfunction!(public_key_of_seed, m)?)?;
    m.add_function(wrap_pyfunction!(core_version, m)?)?;
    m.add_function(wrap_pyfunction!(sign, m)?)?;
    m.add_function(wrap_pyfunction!(verify, m)?)?;
    membership::register(m)?;
    m.add_function(wrap_pyfunction!(join::request_join, m)?)?;
    m.add_class::<discovery::Discovery>()?;
    m.add_class::<lan_discovery::LanDiscovery>()?;
    Ok(())
}
