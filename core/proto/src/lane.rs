//! The TCP lane's connection header (issue 16): the first bytes a site router sends inside TLS on each lane
//! connection, naming the original source address and destination of the LAN's TCP connection it
//! terminated. The gateway reads it before it connects anywhere (the source must be one the peer speaks
//! for, and the ACLs are judged on both), so it is parsed with a fixed upper bound and no allocation: a peer
//! (or a bug) can make it fail, never grow or hang it.
//!
//! Wire format (big-endian; both addresses of the one family):
//! ```text
//! "QEL" | version: u8 (1) | family: u8 (4 or 6) | source: 4 or 16 bytes | destination: 4 or 16 bytes
//!       | destination port: u16 (not 0)
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const MAGIC: &[u8; 3] = b"QEL";
pub const VERSION: u8 = 1;
/// The longest header (IPv6): what a reader needs to buffer at most before it can decide.
pub const MAX_HEADER_LEN: usize = 3 + 1 + 1 + 16 + 16 + 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneHeader {
    /// The LAN host that opened the TCP connection.
    pub source: IpAddr,
    /// Where the LAN host's TCP connection was going.
    pub destination: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    NotALane,
    /// A version this node does not speak (a newer peer): refused, not guessed at.
    Version(u8),
    Family(u8),
    PortZero,
    /// Only `encode` says this: a source of the other family than the destination (a header can hold one).
    MixedFamilies,
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::NotALane => write!(f, "not a lane header"),
            HeaderError::Version(v) => write!(f, "lane header version {v} not supported (this node speaks {VERSION})"),
            HeaderError::Family(x) => write!(f, "lane header address family {x} unknown"),
            HeaderError::PortZero => write!(f, "lane header destination port 0"),
            HeaderError::MixedFamilies => write!(f, "lane header: source and destination of different families"),
        }
    }
}

impl std::error::Error for HeaderError {}

impl LaneHeader {
    /// The header's bytes (a dual-stack socket's IPv4-mapped addresses are for the caller to make IPv4).
    pub fn encode(&self) -> Result<Vec<u8>, HeaderError> {
        let mut out = Vec::with_capacity(MAX_HEADER_LEN);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        match (self.source, self.destination.ip()) {
            (IpAddr::V4(source), IpAddr::V4(destination)) => {
                out.push(4);
                out.extend_from_slice(&source.octets());
                out.extend_from_slice(&destination.octets());
            }
            (IpAddr::V6(source), IpAddr::V6(destination)) => {
                out.push(6);
                out.extend_from_slice(&source.octets());
                out.extend_from_slice(&destination.octets());
            }
            _ => return Err(HeaderError::MixedFamilies),
        }
        out.extend_from_slice(&self.destination.port().to_be_bytes());
        Ok(out)
    }

    /// Decodes a header from the start of `buf`: `Ok(None)` if `buf` is a valid beginning that is too short
    /// yet (read more, at most `MAX_HEADER_LEN` in all), else the header and the bytes it took. Anything
    /// after the header is the connection's data.
    pub fn decode(buf: &[u8]) -> Result<Option<(LaneHeader, usize)>, HeaderError> {
        let magic_seen = buf.len().min(MAGIC.len());
        if buf[..magic_seen] != MAGIC[..magic_seen] {
            return Err(HeaderError::NotALane);
        }
        match buf.get(3) {
            None => return Ok(None),
            Some(&VERSION) => {}
            Some(&other) => return Err(HeaderError::Version(other)),
        }
        let addr_len = match buf.get(4) {
            None => return Ok(None),
            Some(4) => 4,
            Some(6) => 16,
            Some(&other) => return Err(HeaderError::Family(other)),
        };
        let len = 5 + 2 * addr_len + 2;
        let Some(rest) = buf.get(5..len) else { return Ok(None) };
        let (source, rest) = rest.split_at(addr_len);
        let (destination, port) = rest.split_at(addr_len);
        let ip = |addr: &[u8]| match addr_len {
            4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(addr).expect("4 bytes"))),
            _ => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(addr).expect("16 bytes"))),
        };
        let port = u16::from_be_bytes([port[0], port[1]]);
        if port == 0 {
            return Err(HeaderError::PortZero);
        }
        Ok(Some((LaneHeader { source: ip(source), destination: SocketAddr::new(ip(destination), port) }, len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(source: &str, destination: &str) -> LaneHeader {
        LaneHeader { source: source.parse().unwrap(), destination: destination.parse().unwrap() }
    }

    fn both() -> [LaneHeader; 2] {
        [header("192.168.1.20", "10.0.60.10:443"), header("fd00::20", "[2001:db8::1]:8080")]
    }

    #[test]
    fn round_trip_v4_and_v6_with_data_after() {
        for h in both() {
            let mut bytes = h.encode().unwrap();
            let len = bytes.len();
            assert!(len <= MAX_HEADER_LEN);
            bytes.extend_from_slice(b"GET /");
            assert_eq!(LaneHeader::decode(&bytes), Ok(Some((h, len))));
        }
    }

    #[test]
    fn every_short_prefix_asks_for_more() {
        for h in both() {
            let bytes = h.encode().unwrap();
            for cut in 0..bytes.len() {
                assert_eq!(LaneHeader::decode(&bytes[..cut]), Ok(None), "prefix of {cut} bytes");
            }
        }
    }

    #[test]
    fn refuses_what_is_not_a_version_1_header() {
        assert_eq!(LaneHeader::decode(b"GET / HTTP/1.1"), Err(HeaderError::NotALane));
        assert_eq!(LaneHeader::decode(b"QX"), Err(HeaderError::NotALane));
        assert_eq!(LaneHeader::decode(b"QEL\x02"), Err(HeaderError::Version(2)));
        assert_eq!(LaneHeader::decode(b"QEL\x01\x05"), Err(HeaderError::Family(5)));
        let port_zero = b"QEL\x01\x04\xc0\xa8\x01\x14\x0a\x00\x00\x01\x00\x00";
        assert_eq!(LaneHeader::decode(port_zero), Err(HeaderError::PortZero));
    }

    #[test]
    fn a_source_and_destination_of_two_families_are_not_encoded() {
        assert_eq!(header("fd00::20", "10.0.60.10:443").encode(), Err(HeaderError::MixedFamilies));
        assert_eq!(header("192.168.1.20", "[2001:db8::1]:80").encode(), Err(HeaderError::MixedFamilies));
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_never_take_more_than_the_bound() {
        // A cheap deterministic sweep (the fuzz target covers the rest): every 2-byte tail after each valid
        // 5-byte beginning, and random-looking buffers from a linear congruential generator.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            let mut buf = [0u8; 30];
            for b in buf.iter_mut() {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                *b = (state >> 56) as u8;
            }
            buf[..3].copy_from_slice(MAGIC);
            buf[3] = VERSION;
            buf[4] = if state & 1 == 0 { 4 } else { 6 };
            let cut = (state >> 8) as usize % buf.len();
            if let Ok(Some((_, used))) = LaneHeader::decode(&buf[..cut]) {
                assert!(used <= MAX_HEADER_LEN && used <= cut);
            }
        }
    }
}
