//! Which port the kernel routes a destination out of, for the TCP lane's far end (`lane::connect_out`).

use std::ffi::CStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

/// The device the kernel routes `destination` out of for a connection from this host, found by the local
/// address it picks for it (a UDP socket's connect is that routing decision, and sends nothing). None if
/// there is no route, or if the destination is this host's own address.
pub fn route_device(destination: IpAddr) -> Option<String> {
    let any = if destination.is_ipv4() { IpAddr::V4(Ipv4Addr::UNSPECIFIED) } else { IpAddr::V6(Ipv6Addr::UNSPECIFIED) };
    let probe = UdpSocket::bind(SocketAddr::new(any, 0)).ok()?;
    probe.connect(SocketAddr::new(destination, 9)).ok()?;
    let local = probe.local_addr().ok()?.ip();
    if local == destination {
        return None;
    }
    device_with_address(local)
}

/// The name of the device that has `address` (getifaddrs).
fn device_with_address(address: IpAddr) -> Option<String> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list that we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return None;
    }
    let mut found = None;
    let mut entry = list;
    while !entry.is_null() && found.is_none() {
        // SAFETY: `entry` is a node of the list getifaddrs returned, alive until freeifaddrs.
        let ifa = unsafe { &*entry };
        entry = ifa.ifa_next;
        // SAFETY: ifa_addr, when not null, points at a sockaddr of the family it names.
        if let Some(ip) = unsafe { ip_of(ifa.ifa_addr) } {
            if ip == address {
                // SAFETY: ifa_name is a NUL-terminated string of the list.
                found = Some(unsafe { CStr::from_ptr(ifa.ifa_name) }.to_string_lossy().into_owned());
            }
        }
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(list) };
    found
}

/// # Safety
/// `addr` is null or points at a valid sockaddr of the family in its `sa_family`.
unsafe fn ip_of(addr: *const libc::sockaddr) -> Option<IpAddr> {
    if addr.is_null() {
        return None;
    }
    // SAFETY: the caller's guarantee; the cast follows the family.
    unsafe {
        match i32::from((*addr).sa_family) {
            libc::AF_INET => {
                let v4 = &*addr.cast::<libc::sockaddr_in>();
                Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr))))
            }
            libc::AF_INET6 => {
                let v6 = &*addr.cast::<libc::sockaddr_in6>();
                Some(IpAddr::V6(Ipv6Addr::from(v6.sin6_addr.s6_addr)))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_destinations_are_this_hosts_own_and_others_leave_by_a_device_with_an_address() {
        assert_eq!(route_device(IpAddr::V4(Ipv4Addr::LOCALHOST)), None);
        assert_eq!(device_with_address(IpAddr::V4(Ipv4Addr::LOCALHOST)).as_deref(), Some("lo"));
        // 127.0.0.2 is routed out of lo from 127.0.0.1: another address, the loopback device.
        assert_eq!(route_device(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))).as_deref(), Some("lo"));
        assert_eq!(device_with_address(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 77))), None);
    }
}
