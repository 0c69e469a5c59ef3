//! Opening Linux TUN devices (`/dev/net/tun`, `TUNSETIFF`), with offloads where the kernel has them: a
//! virtio-net header on every packet (`IFF_VNET_HDR`), and TCP/UDP segmentation and checksums left to us
//! (`TUNSETOFFLOAD`), so one read returns up to 64 KB of a flow (`quicether_proto::offload` splits it).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicU64;

use quicether_proto::offload::{VnetHdr, VNET_HDR_LEN};
use tokio::io::unix::AsyncFd;

/// `TUNSETIFF` from <linux/if_tun.h>: `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// Layer-3 device: every read/write is one IP packet.
const IFF_TUN: libc::c_short = 0x0001;
/// No 4-byte packet-information prefix: packets start at the IP header.
const IFF_NO_PI: libc::c_short = 0x1000;
/// Every read and write starts with a `struct virtio_net_hdr` (GSO type and size, checksum offsets).
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// `TUNSETOFFLOAD` from <linux/if_tun.h>: `_IOW('T', 208, unsigned int)`.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// `TUN_F_*` offload flags: partial checksums, TCP segmentation (v4, v6, with ECN), UDP segmentation.
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;
const TUN_F_TSO_ECN: libc::c_uint = 0x08;
const TUN_F_USO4: libc::c_uint = 0x20;
const TUN_F_USO6: libc::c_uint = 0x40;
/// Kernel limit for interface names, including the terminating NUL.
const IFNAMSIZ: usize = 16;

#[repr(C)]
struct IfReqFlags {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    // `struct ifreq` is 40 bytes on 64-bit Linux; the kernel copies all of it.
    _pad: [u8; 22],
}

/// What the TUN device was opened with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offloads {
    /// Packets carry a virtio-net header (`quicether_proto::offload::VNET_HDR_LEN` bytes) both ways.
    pub vnet_hdr: bool,
    /// Reads may return TCP super-packets (TSO), and written ones are taken (GRO on our side).
    pub tso: bool,
    /// Reads may return UDP super-packets (USO, Linux 6.2 and later).
    pub uso: bool,
}

impl Offloads {
    /// How status names it: the offloads in use, or "none".
    pub fn describe(&self) -> String {
        let on: Vec<&str> = [(self.tso, "tso"), (self.uso, "uso"), (self.vnet_hdr, "csum")]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, name)| *name)
            .collect();
        if on.is_empty() {
            "none".into()
        } else {
            on.join("+")
        }
    }
}

/// Opens (or creates, if it does not exist and we may) the TUN device `name`, with the offloads the kernel
/// has (none if `offloads` is false). A kernel without one is not an error: the device works with fewer,
/// and the returned `Offloads` says which (the caller logs it once).
///
/// Attaching to a device made beforehand with `ip tuntap add mode tun` lets the caller own its life time.
pub fn open_tun(name: &str, offloads: bool) -> io::Result<(File, Offloads)> {
    if offloads {
        if let Ok(file) = open_tun_flags(name, IFF_TUN | IFF_NO_PI | IFF_VNET_HDR) {
            let fd = file.as_raw_fd();
            let tcp = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
            let got = if set_offload(fd, tcp | TUN_F_USO4 | TUN_F_USO6) {
                Offloads { vnet_hdr: true, tso: true, uso: true }
            } else if set_offload(fd, tcp) {
                Offloads { vnet_hdr: true, tso: true, uso: false }
            } else {
                // The header alone still works (every packet plain, no partial checksums).
                set_offload(fd, 0);
                Offloads { vnet_hdr: true, tso: false, uso: false }
            };
            return Ok((file, got));
        }
    }
    Ok((open_tun_flags(name, IFF_TUN | IFF_NO_PI)?, Offloads::default()))
}

/// The node's TUN device: its fd registered with tokio (non-blocking), and the offloads it has.
pub struct Tun {
    pub fd: AsyncFd<File>,
    pub offloads: Offloads,
    /// Packets read that could not be split into plain ones (malformed or unsupported offload headers).
    pub unsplittable: AtomicU64,
}

impl Tun {
    /// Opens the device (see `open_tun`); `QUICETHER_TUN_OFFLOADS=0` opens it without offloads.
    pub fn open(name: &str) -> io::Result<Tun> {
        let (file, offloads) = open_tun(name, crate::debug::tun_offloads())?;
        // SAFETY: setting O_NONBLOCK on an fd we own.
        unsafe {
            let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        // SAFETY: `File` owns its fd, which stays open and unchanged for the AsyncFd's life.
        let fd = unsafe { AsyncFd::register(file) }.map_err(|e| io::Error::other(format!("tun: {e}")))?;
        Ok(Tun { fd, offloads, unsplittable: AtomicU64::new(0) })
    }

    /// Whether a write may be a TCP super-packet (`quicether_proto::gro`): the device has virtio-net
    /// headers and TSO.
    pub fn takes_super_packets(&self) -> bool {
        self.offloads.vnet_hdr && self.offloads.tso
    }

    /// Bytes in front of each packet read or written.
    pub fn header_len(&self) -> usize {
        if self.offloads.vnet_hdr {
            VNET_HDR_LEN
        } else {
            0
        }
    }

    /// Writes one packet with `hdr` in front (if the device has headers); true if all of it went.
    /// Non-blocking: a full device queue (EAGAIN) drops this packet only.
    pub fn write(&self, hdr: &VnetHdr, packet: &[u8]) -> bool {
        let fd = self.fd.as_raw_fd();
        if !self.offloads.vnet_hdr {
            // SAFETY: writing a valid buffer to the TUN fd.
            return unsafe { libc::write(fd, packet.as_ptr().cast(), packet.len()) } == packet.len() as isize;
        }
        let hdr = hdr.encode();
        let iov = [
            libc::iovec { iov_base: hdr.as_ptr() as *mut _, iov_len: hdr.len() },
            libc::iovec { iov_base: packet.as_ptr() as *mut _, iov_len: packet.len() },
        ];
        // SAFETY: both iovecs point to valid buffers that outlive the call; the kernel only reads them.
        let n = unsafe { libc::writev(fd, iov.as_ptr(), 2) };
        n == (hdr.len() + packet.len()) as isize
    }
}

impl crate::node::Node {
    /// The TUN offloads in use (`Offloads::describe`) and the packets read that could not be split.
    pub fn tun_offloads(&self) -> (String, u64) {
        let tun = &self.shared.tun;
        (tun.offloads.describe(), tun.unsplittable.load(std::sync::atomic::Ordering::Relaxed))
    }
}

fn set_offload(fd: std::os::fd::RawFd, flags: libc::c_uint) -> bool {
    // SAFETY: TUNSETOFFLOAD takes its flags by value; no memory is passed.
    unsafe { libc::ioctl(fd, TUNSETOFFLOAD as _, flags as libc::c_ulong) == 0 }
}

fn open_tun_flags(name: &str, flags: libc::c_short) -> io::Result<File> {
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
    let mut req = IfReqFlags { name: [0; IFNAMSIZ], flags, _pad: [0; 22] };
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
        for offloads in [false, true] {
            for name in ["", "a-name-that-is-too-long", "a/b"] {
                assert_eq!(open_tun(name, offloads).unwrap_err().kind(), io::ErrorKind::InvalidInput);
            }
        }
    }

    #[test]
    fn offloads_are_named_for_status() {
        assert_eq!(Offloads::default().describe(), "none");
        assert_eq!(Offloads { vnet_hdr: true, tso: true, uso: false }.describe(), "tso+csum");
    }

    #[test]
    fn ifreq_has_kernel_size() {
        assert_eq!(std::mem::size_of::<IfReqFlags>(), 40);
    }
}
