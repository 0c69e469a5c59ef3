//! PCP (Port Control Protocol, RFC 6887) MAP requests and answers for one UDP port, IPv4 only: the
//! successor of NAT-PMP on the same server port (5351), asked first by `portmap::Mapper`. A server that
//! speaks only NAT-PMP answers a PCP request with a version 0 "unsupported version" (RFC 6887 9), which
//! `is_natpmp` tells apart. No I/O: the caller gives the nonce (random, kept for the mapping's life: an
//! answer with another nonce is not for us) and the client address (the request's source address, which
//! the server checks).
//!
//! Wire format (integers big-endian; addresses are 16 bytes, IPv4 as ::ffff:a.b.c.d):
//! ```text
//!   request  u8 version 2, u8 opcode 1 (MAP), u16 reserved, u32 lifetime s, [16] client address,
//!            [12] nonce, u8 protocol 17 (UDP), [3] reserved, u16 internal port,
//!            u16 suggested external port, [16] suggested external address
//!   answer   u8 version 2, u8 0x81, u8 reserved, u8 result, u32 lifetime s, u32 epoch s, [12] reserved,
//!            [12] nonce, u8 protocol, [3] reserved, u16 internal port, u16 external port, [16] external address
//! ```
//! Options (after the opcode's fields) are neither sent nor read: an answer's trailing bytes are ignored,
//! as RFC 6887 lets a client skip options it did not ask for.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::wire::{Malformed, Reader, Writer};

pub const VERSION: u8 = 2;
const OP_MAP: u8 = 1;
const RESPONSE_BIT: u8 = 0x80;
const UDP: u8 = 17;
pub const NONCE_LEN: usize = 12;
/// Result codes this client acts on (RFC 6887 7.4).
pub const SUCCESS: u8 = 0;
pub const UNSUPP_VERSION: u8 = 1;

/// A MAP request for UDP `internal_port` of `client` for `lifetime_s` (0 deletes the mapping), asking
/// for the same port outside.
pub fn map_request(client: Ipv4Addr, nonce: &[u8; NONCE_LEN], internal_port: u16, lifetime_s: u32) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(VERSION);
    w.u8(OP_MAP);
    w.u16(0);
    w.u32(lifetime_s);
    w.bytes(&client.to_ipv6_mapped().octets());
    w.bytes(nonce);
    w.u8(UDP);
    w.bytes(&[0; 3]);
    w.u16(internal_port);
    w.u16(if lifetime_s == 0 { 0 } else { internal_port });
    w.bytes(&Ipv4Addr::UNSPECIFIED.to_ipv6_mapped().octets());
    w.out
}

/// A MAP answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapAnswer {
    pub result: u8,
    pub lifetime_s: u32,
    pub epoch: u32,
    pub nonce: [u8; NONCE_LEN],
    pub protocol: u8,
    pub internal_port: u16,
    pub external_port: u16,
    /// None if the address is not an IPv4 one (::ffff:a.b.c.d).
    pub external_ip: Option<Ipv4Addr>,
}

impl MapAnswer {
    /// Whether it answers our request (`nonce`, UDP `internal_port`).
    pub fn answers(&self, nonce: &[u8; NONCE_LEN], internal_port: u16) -> bool {
        self.nonce == *nonce && self.protocol == UDP && self.internal_port == internal_port
    }
}

/// Whether `data` is a NAT-PMP (version 0) datagram: the server does not speak PCP.
pub fn is_natpmp(data: &[u8]) -> bool {
    data.first() == Some(&0)
}

pub fn decode(data: &[u8]) -> Result<MapAnswer, Malformed> {
    let mut r = Reader::new(data);
    if r.u8()? != VERSION {
        return Err("not a PCP version 2 answer");
    }
    if r.u8()? != RESPONSE_BIT | OP_MAP {
        return Err("not a PCP MAP answer");
    }
    r.u8()?;
    let result = r.u8()?;
    let lifetime_s = r.u32()?;
    let epoch = r.u32()?;
    r.bytes(12)?;
    let nonce = r.array::<NONCE_LEN>()?;
    let protocol = r.u8()?;
    r.bytes(3)?;
    let internal_port = r.u16()?;
    let external_port = r.u16()?;
    let external_ip = Ipv6Addr::from(r.array::<16>()?).to_ipv4_mapped();
    Ok(MapAnswer { result, lifetime_s, epoch, nonce, protocol, internal_port, external_port, external_ip })
}

pub fn result_text(result: u8) -> String {
    let why = match result {
        1 => "unsupported version",
        2 => "not authorized (port mapping turned off on the router?)",
        3 => "malformed request",
        4 => "unsupported opcode",
        7 => "its own network is down",
        8 => "out of resources",
        9 => "unsupported protocol",
        10 => "over this host's quota",
        11 => "cannot provide an external port",
        12 => "address mismatch (another NAT between us and the router?)",
        n => return format!("the gateway refused (PCP): result code {n}"),
    };
    format!("the gateway refused (PCP): {why}")
}

#[cfg(test)]
pub(crate) fn answer(
    result: u8,
    lifetime_s: u32,
    epoch: u32,
    nonce: [u8; NONCE_LEN],
    port: u16,
    ext: (Ipv4Addr, u16),
) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(VERSION);
    w.u8(RESPONSE_BIT | OP_MAP);
    w.u8(0);
    w.u8(result);
    w.u32(lifetime_s);
    w.u32(epoch);
    w.bytes(&[0; 12]);
    w.bytes(&nonce);
    w.u8(UDP);
    w.bytes(&[0; 3]);
    w.u16(port);
    w.u16(ext.1);
    w.bytes(&ext.0.to_ipv6_mapped().octets());
    w.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_request_is_60_bytes_as_rfc_6887_lays_it_out() {
        let req = map_request(Ipv4Addr::new(172, 16, 1, 2), &[7; 12], 4433, 7200);
        assert_eq!(req.len(), 60);
        assert_eq!(&req[..8], &[2, 1, 0, 0, 0, 0, 0x1c, 0x20]);
        assert_eq!(&req[8..24], &Ipv4Addr::new(172, 16, 1, 2).to_ipv6_mapped().octets());
        assert_eq!(&req[24..36], &[7; 12]);
        assert_eq!(&req[36..44], &[17, 0, 0, 0, 0x11, 0x51, 0x11, 0x51]);
        let delete = map_request(Ipv4Addr::new(172, 16, 1, 2), &[7; 12], 4433, 0);
        assert_eq!(&delete[4..8], &[0; 4]);
        assert_eq!(&delete[42..44], &[0, 0]);
    }

    #[test]
    fn answers_read_back_and_are_matched_by_nonce_and_port() {
        let data = answer(0, 3600, 9, [7; 12], 4433, (Ipv4Addr::new(11, 1, 0, 1), 40000));
        let a = decode(&data).unwrap();
        assert_eq!((a.result, a.lifetime_s, a.epoch, a.external_port), (0, 3600, 9, 40000));
        assert_eq!(a.external_ip, Some(Ipv4Addr::new(11, 1, 0, 1)));
        assert!(a.answers(&[7; 12], 4433));
        assert!(!a.answers(&[8; 12], 4433), "another request's nonce");
        assert!(!a.answers(&[7; 12], 4434));
        assert_eq!(decode(&data[..59]), Err("truncated"));
        assert!(decode(&[data.clone(), vec![0; 8]].concat()).is_ok(), "options after the answer are skipped");
        let mut request = data.clone();
        request[1] = 1;
        assert_eq!(decode(&request), Err("not a PCP MAP answer"));
        assert!(is_natpmp(&[0, 129, 0, 1]) && !is_natpmp(&data));
        let mut v6 = data;
        v6[44..60].copy_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(decode(&v6).unwrap().external_ip, None);
        assert!(result_text(12).contains("address mismatch"));
    }
}
