//! QuicEther I/O: everything that touches file descriptors, sockets and threads but knows nothing of Python.
//! Decisions (scheduling, reordering, health) come from `quicether-proto`; this crate feeds them and acts.
//!
//! - `node`: wiring of a running node (endpoints, peers, WANs).  `stats`: what it reports of peers and paths.
//!   `events`: what it reports as it happens.
//! - `send` / `receive`: the packet path out of and into the TUN device.
//! - `connect`: accepting and dialing paths, the path hello.  `timers`: probes and health per path.
//! - `peer`: peer and path state.  `peers`: the peer table (by node key) and allowed IPs.  `sockets`: per-WAN UDP sockets.  `tls`: node identity and key pinning.
//! - `congestion`: CUBIC that tells random loss from congestion.
//! - `discovery`: members' records in the mainline DHT (publish, look up, refuse and count).
//! - `member_news`: members' certificates and revocations told from peer to peer on every path.
//! - `portmap`: port mappings on the WANs' home routers (NAT-PMP), renewed, released on stop.
//! - `punch`: hole punching between members, coordinated through a member both are connected to.
//!   `birthday`: the birthday probe between a random symmetric NAT and an open one (sockets and pacing).
//! - `join`: joining a network with an invite (the admin's answer, the joining node's request).
//! - `lan_discovery`: members on the same LAN through mDNS (candidates only, trusted after the handshake).
//! - `lane`: the TCP lane: LAN TCP terminated at the router, its bytes carried over MPTCP + TLS (issue 16).
//! - `lane_copy`: a lane connection's bytes copied both ways, the bytes before a failure handed on first.
//! - `lane_nudge`: a lane socket whose reader also tries it on a timer, for wakeups the kernel does not send.
//! - `tun`: Linux TUN devices. (The lab's delay line lives in `core/labtools`, not linked into the appliance.)

pub mod batching;
pub mod birthday;
pub mod congestion;
pub mod connect;
pub mod debug;
pub mod discovery;
pub mod events;
pub mod join;
pub mod lan_discovery;
pub mod lane;
pub mod lane_copy;
pub mod lane_nudge;
pub mod member_news;
pub mod node;
pub mod peer;
pub mod peers;
pub mod portmap;
pub mod punch;
pub mod receive;
pub mod relay;
pub mod routes;
pub mod send;
pub mod sockets;
pub mod stats;
pub mod timers;
pub mod tls;
pub mod tun;
mod upnp;

/// The wall clock since the Unix epoch (zero if the clock is before it): certificates' validity, records'
/// expiry and DHT sequence numbers are in it. The one place the I/O crate reads it.
pub fn unix_time() -> std::time::Duration {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default()
}
