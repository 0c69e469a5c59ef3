//! UDP sockets for QUIC endpoints: buffer sizes, and binding a socket to one WAN device.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

/// UDP socket buffers sized for a few hundred Mbit/s with bursts (set with the *FORCE variants as root).
const SOCKET_BUFFER: libc::c_int = 8 << 20;

pub(crate) fn set_int(sock: &impl AsRawFd, level: libc::c_int, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
    set_option(sock, level, opt, value)
}

/// setsockopt(2) with a plain value the kernel reads as is (an int, a `linger`).
pub(crate) fn set_option<T: Copy>(
    sock: &impl AsRawFd,
    level: libc::c_int,
    opt: libc::c_int,
    value: T,
) -> io::Result<()> {
    // SAFETY: setsockopt with a pointer to a value that lives across the call, and its size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            opt,
            (&value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_buffers(sock: &UdpSocket) {
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
        // Not root: fall back to the capped variant; either failing only keeps the default size.
        if set_int(sock, libc::SOL_SOCKET, opt, SOCKET_BUFFER).is_err() {
            let plain = if opt == libc::SO_RCVBUFFORCE { libc::SO_RCVBUF } else { libc::SO_SNDBUF };
            let _ = set_int(sock, libc::SOL_SOCKET, plain, SOCKET_BUFFER);
        }
    }
}

/// A socket for the node's listening endpoint.
pub fn bind_listen(addr: SocketAddr) -> io::Result<UdpSocket> {
    let sock = UdpSocket::bind(addr).map_err(|e| io::Error::new(e.kind(), format!("listen {addr}: {e}")))?;
    set_buffers(&sock);
    Ok(sock)
}

/// A socket whose packets leave through WAN `device` from `local`: SO_BINDTODEVICE pins the egress device
/// whatever the routing table says, and the source address, or the firewall mark `mark` (non-zero), selects
/// the WAN's policy-routing table.
pub fn bind_wan(device: Option<&str>, local: SocketAddr, mark: u32) -> io::Result<UdpSocket> {
    let sock = UdpSocket::bind(local).map_err(|e| io::Error::new(e.kind(), format!("bind {local}: {e}")))?;
    if mark != 0 {
        set_int(&sock, libc::SOL_SOCKET, libc::SO_MARK, mark as libc::c_int)
            .map_err(|e| io::Error::new(e.kind(), format!("mark {mark:#x} on {local}: {e}")))?;
    }
    if let Some(dev) = device {
        // SAFETY: the name buffer is valid for its length during the call.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                dev.as_ptr().cast(),
                dev.len() as libc::socklen_t,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("bind to device {dev}: {e}")));
        }
    }
    set_buffers(&sock);
    Ok(sock)
}
