//! Opening Linux TUN devices (`/dev/net/tun`, `TUNSETIFF`).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;

/// `TUNSETIFF` from <linux/if_tun.h>: `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// Layer-3 device: every read/write is one IP packet.
const IFF_TUN: libc::c_short = 0x0001;
/// No 4-byte packet-information prefix: packets start at the IP header.
const IFF_NO_PI: libc::c_short = 0x1000;
/// Kernel limit for interface names, including the terminating NUL.
const IFNAMSIZ: usize = 16;

#[repr(C)]
struct IfReqFlags {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    // `struct ifreq` is 40 bytes on 64-bit Linux; the kernel copies all of it.
    _pad: [u8; 22],
}

/// Opens (or creates, if it does not exist and we may) the TUN device `name`.
///
/// Attaching to a device made beforehand with `ip tuntap add mode tun` lets the caller own its life time.
pub fn open_tun(name: &str) -> io::Result<File> {
    if name.is_empty() || name.len() >= IFNAMSIZ || name.contains('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid TUN device name {name:?} (1 to {} characters)", IFNAMSIZ - 1),
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open /dev/net/tun: {e}")))?;
    let mut req = IfReqFlags { name: [0; IFNAMSIZ], flags: IFF_TUN | IFF_NO_PI, _pad: [0; 22] };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: `req` is a properly sized, initialised `struct ifreq` that outlives the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReqFlags) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("TUNSETIFF {name}: {e}")));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_names_before_touching_the_kernel() {
        assert_eq!(open_tun("").unwrap_err().kind(), io::ErrorKind::InvalidInput);
        assert_eq!(open_tun("a-name-that-is-too-long").unwrap_err().kind(), io::ErrorKind::InvalidInput);
        assert_eq!(open_tun("a/b").unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn ifreq_has_kernel_size() {
        assert_eq!(std::mem::size_of::<IfReqFlags>(), 40);
    }
}
