//! QuicEther I/O: everything that touches file descriptors, sockets and threads but knows nothing of Python.
//!
//! - `tun`: open a Linux TUN device by name.
//! - `tls`: node identity certificates and key-pinning verifiers.
//! - `node`: the QUIC endpoint, peers and the packet loops (TUN ↔ QUIC DATAGRAM frames).
//! - `delayline`: a userspace delay line over a TUN device, used by the network lab in place of netem.

pub mod delayline;
pub mod node;
pub mod tls;
pub mod tun;
