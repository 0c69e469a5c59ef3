//! QuicEther protocol logic without I/O: no sockets, no clocks, no threads. Everything here is a pure
//! function of its inputs and is unit-tested in microseconds.
//!
//! - `allowed_ips`: which peer an inner packet belongs to (longest prefix match), and source checks.
//! - `certkey`: the Ed25519 node key inside a peer's self-signed certificate.

pub mod allowed_ips;
pub mod certkey;
