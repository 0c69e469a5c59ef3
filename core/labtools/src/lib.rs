//! The network lab's tools, built by scripts/setup for the tests, the demo and the benchmarks, and never
//! linked into the appliance's `quicether._core`.
//!
//! - `delayline`: a userspace delay line on a TUN device (the lab's netem replacement), run as the
//!   `qe-delayline` binary by tests/lab/delayline.py.
//! - `flood`: unauthenticated traffic at a node's QUIC port (garbage, handshakes with unknown keys,
//!   replayed Initials), run as the `qe-flood` binary by scripts/bench-flood and the lab tests.
//! - `dht_flood`: the same binary's floods at a node's DHT port (bogus KRPC requests, store filling).

pub mod delayline;
pub mod dht_flood;
pub mod flood;
