//! QuicEther protocol logic without I/O: no sockets, no clocks, no threads. Everything here is a pure
//! function of its inputs (time is passed in as `now`) and is unit-tested in microseconds.
//!
//! - `admission`: which incoming handshakes are taken on, retried (address validation) or dropped.
//! - `allowed_ips`: which peer an inner packet belongs to (longest prefix match), and source checks.
//! - `certkey`: the Ed25519 node key inside a peer's self-signed certificate.
//! - `bond`: one peer's receive side of the bond: frame dispatch, reordering, NACKs, probe answers, timers.
//! - `bond_send`: one peer's send side of the bond: sequence numbers, DATA framing, the resend memory, what
//!   to resend for a NACK or a failed path.
//! - `frame`: the DATAGRAM frame format (bond sequence numbers, probes).
//! - `classify`: traffic classes (bulk / real-time / rules) → scheduling mode.
//! - `scheduler`: which path(s) carry a packet.
//! - `reorder`: in-order release at the receiver with an RTT-spread timeout.
//! - `resend`: what a peer's paths sent lately, by sequence (NACKs) and by path (failures).
//! - `health`: probes, up/down with damping.
//! - `hello`: the path hello a dialer sends on a new path, and the acceptor's answer.
//! - `io_threads`: how many threads carry a node's packets.
//! - `path_rank`: which path ranks first (route kind, WAN role): one comparator.
//! - `peer_text`: peer-supplied strings made safe for events and logs.
//! - `refusals`: refused-handshake counting, reported at a bounded rate with bounded memory.
//! - `path_rate`: a path's delivery rate and minimum RTT, and the window cap they give.
//! - `signing`: Ed25519 signatures with a node or network key seed.
//! - `membership`: network membership certificates and revocations (encoding, verification).
//! - `nat`: what kind of NAT a WAN socket is behind, from the addresses peers see it at.
//! - `portmap`: a port mapping on the home router (PCP, else NAT-PMP): requests, answers checked, renewal,
//!   release.  `pcp`: PCP's MAP request and answer.
//! - `punch`: hole punching messages, their schedule and rate limits (coordinated simultaneous open).
//! - `symmetric`: what a punch does against symmetric NATs; `birthday`: the birthday probe's tokens, packets
//!   and winner choice.
//! - `lane`: the TCP lane's connection header (original destination), sent first inside its TLS.
//! - `join`: the join request a node sends with an invite's key, and the admin's answer.
//! - `dht_server`: which requests a DHT node in server mode answers (per-source and total rate limits).
//! - `record`: a member's discovery record (DHT value): plaintext format, sealing for members only.
//! - `wire`: the bounded reader and writer of our binary encodings.
//! - `bounded`: tables the network can grow, kept to a limit (the oldest entry goes).
//! - `offload`: TUN offloads: the virtio-net header, splitting GSO super-packets, checksums.
//! - `gro`: TUN writes: in-order segments of one TCP flow merged into one super-packet (offload's reverse).

pub mod admission;
pub mod allowed_ips;
pub mod birthday;
pub mod bond;
pub mod bond_send;
pub mod bounded;
pub mod certkey;
pub mod cipher;
pub mod classify;
pub mod dht_server;
pub mod frame;
pub mod gro;
pub mod health;
pub mod hello;
pub mod io_threads;
pub mod join;
pub mod lane;
pub mod lane_policy;
pub mod member_news;
pub mod membership;
pub mod nat;
pub mod offload;
pub mod path_rank;
pub mod path_rate;
pub mod pcp;
pub mod peer_text;
pub mod portmap;
pub mod punch;
pub mod record;
pub mod refusals;
pub mod relay;
pub mod reorder;
pub mod resend;
pub mod scheduler;
pub mod signing;
pub mod symmetric;
pub mod wire;
