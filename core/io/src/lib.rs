//! QuicEther I/O: everything that touches file descriptors and threads but knows nothing of Python.
//!
//! - `tun`: open a Linux TUN device by name.
//! - `delayline`: a userspace delay line over a TUN device, used by the network lab in place of netem.

pub mod delayline;
pub mod tun;
