//! Joining a network with an invite: the one exchange a node that is not yet a member has with the admin
//! node. The invite code holds a one-time key (its seed is the invite's secret); the joining node shows
//! that key in its TLS handshake (the admin accepts a handshake with it only while the invite is pending),
//! then sends one request on one stream: the node key it wants certified, the name it asks for and the LAN
//! prefixes it asks to route (a site's LAN, so that a gateway can route replies to it: the admin decides
//! whether it grants them), signed with that node key (so a certificate is only issued to a key its
//! requester holds). The admin answers
//! once — the daemon's answer bytes (the certificate and what the new member needs to find the network), or
//! the reason it refuses — and the connection closes. No path, no peer, no routes come of it.
//!
//! Wire format (integers big-endian; trailing bytes refused):
//! ```text
//!   request:  [4] "QEJ1", [32] invite key, [32] node key, u8 name len, name (≤ MAX_NAME_LEN of a-z 0-9 -;
//!             empty: the name the invite gives), u8 count, count × LAN prefix (≤ MAX_LAN_PREFIXES; IPv4
//!             as `wire::Writer::prefix`: u8 4, [4] address, u8 length, no host bits), [64] signature
//!   answer:   [4] "QEJ1", u8 status (0 certified, 1 refused), u16 len, len bytes (≤ MAX_ANSWER_LEN)
//! ```
//! The signature covers `SIGNED_CONTEXT` and everything before it: it cannot be replayed with another
//! invite, and neither the name nor the prefixes can be changed on the way.

use crate::allowed_ips::Prefix;
use crate::signing::{self, SEED_LEN, SIGNATURE_LEN};
use crate::wire::{Malformed, Reader, Writer};

pub const MAGIC: &[u8; 4] = b"QEJ1";
pub const MAX_NAME_LEN: usize = 32;
/// Largest answer: a certificate, the admin's own, its endpoints and the discovery settings fit easily.
pub const MAX_ANSWER_LEN: usize = 8192;
/// A site routes one LAN, or a few: more in a request is refused.
pub const MAX_LAN_PREFIXES: usize = 4;
/// An IPv4 prefix as `Writer::prefix` writes it.
const PREFIX_LEN: usize = 1 + 4 + 1;
pub const MAX_REQUEST_LEN: usize = 4 + 32 + 32 + 1 + MAX_NAME_LEN + 1 + MAX_LAN_PREFIXES * PREFIX_LEN + SIGNATURE_LEN;
const SIGNED_CONTEXT: &[u8] = b"quicether join request v2";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinRequest {
    pub invite: [u8; 32],
    pub node: [u8; 32],
    pub name: String,
    /// IPv4 only (a site's LAN); the admin decides whether the certificate grants them.
    pub lan_prefixes: Vec<Prefix>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JoinAnswer {
    /// The daemon's answer: opaque here (the certificate and the network's settings, as the daemon wrote them).
    Certified(Vec<u8>),
    /// Why the admin refused, in words for the person joining.
    Refused(String),
}

/// What the signature covers: the context, then the request up to the signature.
fn signed_message(unsigned: &[u8]) -> Vec<u8> {
    [SIGNED_CONTEXT, unsigned].concat()
}

/// The request of the node with key seed `node_seed` to join with invite key `invite`, as member `name`,
/// asking to route `lan_prefixes` (canonical IPv4 prefixes).
pub fn encode_request(
    invite: &[u8; 32],
    node_seed: &[u8; SEED_LEN],
    name: &str,
    lan_prefixes: &[Prefix],
) -> Result<Vec<u8>, Malformed> {
    if name.len() > MAX_NAME_LEN {
        return Err("name too long");
    }
    if lan_prefixes.len() > MAX_LAN_PREFIXES {
        return Err("too many LAN prefixes");
    }
    if lan_prefixes.iter().any(|p| !p.addr.is_ipv4() || p.len > 32 || !crate::wire::is_canonical(p)) {
        return Err("a LAN prefix is not an IPv4 prefix without host bits");
    }
    let node = signing::public_key(node_seed);
    let mut w = Writer::default();
    w.bytes(MAGIC);
    w.bytes(invite);
    w.bytes(&node);
    w.u8(name.len() as u8);
    w.bytes(name.as_bytes());
    w.u8(lan_prefixes.len() as u8);
    for prefix in lan_prefixes {
        w.prefix(prefix);
    }
    let signature = signing::sign(node_seed, &signed_message(&w.out));
    w.bytes(&signature);
    Ok(w.out)
}

/// Decodes and verifies a request that came with a handshake of invite key `invite`: the invite key in it
/// must be that one and the signature the named node key's.
pub fn decode_request(data: &[u8], invite: &[u8; 32]) -> Result<JoinRequest, Malformed> {
    if data.len() > MAX_REQUEST_LEN {
        return Err("join request too long");
    }
    let mut r = Reader::new(data);
    if r.bytes(4)? != MAGIC {
        return Err("not a join request");
    }
    let claimed: [u8; 32] = r.array()?;
    let node: [u8; 32] = r.array()?;
    let name = r.short_bytes(MAX_NAME_LEN, "name too long")?;
    let count = r.u8()? as usize;
    if count > MAX_LAN_PREFIXES {
        return Err("too many LAN prefixes");
    }
    let lan_prefixes = (0..count).map(|_| r.prefix()).collect::<Result<Vec<_>, _>>()?;
    if lan_prefixes.iter().any(|p| !p.addr.is_ipv4()) {
        return Err("a LAN prefix is not IPv4");
    }
    let unsigned = &data[..data.len() - r.remaining()];
    let signature = r.bytes(SIGNATURE_LEN)?;
    if r.remaining() != 0 {
        return Err("trailing bytes");
    }
    if &claimed != invite {
        return Err("join request for another invite");
    }
    if !signing::verify(&node, &signed_message(unsigned), signature) {
        return Err("join request signature invalid");
    }
    if !name.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-') {
        return Err("name has characters other than a-z, 0-9 and -");
    }
    Ok(JoinRequest { invite: claimed, node, name: String::from_utf8_lossy(name).into_owned(), lan_prefixes })
}

pub fn encode_answer(answer: &JoinAnswer) -> Vec<u8> {
    let (status, body) = match answer {
        JoinAnswer::Certified(b) => (0, b.as_slice()),
        JoinAnswer::Refused(reason) => (1, reason.as_bytes()),
    };
    let body = &body[..body.len().min(MAX_ANSWER_LEN)];
    let mut w = Writer::default();
    w.bytes(MAGIC);
    w.u8(status);
    w.u16(body.len() as u16);
    w.bytes(body);
    w.out
}

/// Decodes an answer; a refusal's reason is made safe to print (it came from the network).
pub fn decode_answer(data: &[u8]) -> Result<JoinAnswer, Malformed> {
    if data.len() > 4 + 1 + 2 + MAX_ANSWER_LEN {
        return Err("join answer too long");
    }
    let mut r = Reader::new(data);
    if r.bytes(4)? != MAGIC {
        return Err("not a join answer");
    }
    let status = r.u8()?;
    let len = r.u16()? as usize;
    if len > MAX_ANSWER_LEN {
        return Err("join answer too long");
    }
    let body = r.bytes(len)?;
    if r.remaining() != 0 {
        return Err("trailing bytes");
    }
    match status {
        0 => Ok(JoinAnswer::Certified(body.to_vec())),
        1 => Ok(JoinAnswer::Refused(crate::peer_text::escape_text(body))),
        _ => Err("unknown join answer status"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    const INVITE: [u8; 32] = [3; 32];
    const NODE_SEED: [u8; 32] = [5; 32];

    fn v4(a: u8, b: u8, c: u8, len: u8) -> Prefix {
        Prefix { addr: IpAddr::V4(Ipv4Addr::new(a, b, c, 0)), len }
    }

    #[test]
    fn a_request_round_trips_and_names_the_signing_node() {
        let lan = vec![v4(192, 168, 50, 24), v4(10, 7, 0, 16)];
        let data = encode_request(&INVITE, &NODE_SEED, "site-a", &lan).unwrap();
        let got = decode_request(&data, &INVITE).unwrap();
        let node = signing::public_key(&NODE_SEED);
        assert_eq!(got, JoinRequest { invite: INVITE, node, name: "site-a".into(), lan_prefixes: lan });
        let full = encode_request(&INVITE, &NODE_SEED, &"a".repeat(MAX_NAME_LEN), &[v4(10, 0, 0, 8); 4]).unwrap();
        assert_eq!(full.len(), MAX_REQUEST_LEN);
        let bare = encode_request(&INVITE, &NODE_SEED, "", &[]).unwrap();
        assert_eq!(decode_request(&bare, &INVITE).unwrap().lan_prefixes, vec![]);
    }

    #[test]
    fn lan_prefixes_are_signed_bounded_ipv4_and_canonical() {
        let data = encode_request(&INVITE, &NODE_SEED, "site-a", &[v4(192, 168, 50, 24)]).unwrap();
        // [4] magic, [32] invite, [32] node, u8 + "site-a", u8 count, then u8 family, the address: 192 → 10.
        let mut widened = data.clone();
        widened[4 + 64 + 1 + 6 + 1 + 1] = 10;
        assert_eq!(decode_request(&widened, &INVITE), Err("join request signature invalid"));
        assert_eq!(encode_request(&INVITE, &NODE_SEED, "a", &[v4(10, 0, 0, 8); 5]), Err("too many LAN prefixes"));
        let host_bits = Prefix { addr: IpAddr::V4(Ipv4Addr::new(192, 168, 50, 1)), len: 24 };
        let v6 = Prefix { addr: IpAddr::V6(Ipv6Addr::LOCALHOST), len: 128 };
        for bad in [host_bits, v6] {
            assert_eq!(
                encode_request(&INVITE, &NODE_SEED, "a", &[bad]),
                Err("a LAN prefix is not an IPv4 prefix without host bits")
            );
        }
        let mut many = data[..4 + 64 + 1 + 6].to_vec();
        many.push(5);
        assert_eq!(decode_request(&many, &INVITE), Err("too many LAN prefixes"));
    }

    #[test]
    fn a_changed_name_key_or_invite_and_a_bad_shape_are_refused() {
        let data = encode_request(&INVITE, &NODE_SEED, "site-a", &[]).unwrap();
        assert_eq!(decode_request(&data, &[4; 32]), Err("join request for another invite"));
        let mut renamed = data.clone();
        renamed[4 + 64 + 1] = b'x';
        assert_eq!(decode_request(&renamed, &INVITE), Err("join request signature invalid"));
        let mut other_key = data.clone();
        other_key[40] ^= 1;
        assert_eq!(decode_request(&other_key, &INVITE), Err("join request signature invalid"));
        assert_eq!(decode_request(&data[..data.len() - 1], &INVITE), Err("truncated"));
        assert_eq!(decode_request(&[data.clone(), vec![0]].concat(), &INVITE), Err("trailing bytes"));
        assert_eq!(decode_request(b"QEN1", &INVITE), Err("not a join request"));
        assert_eq!(encode_request(&INVITE, &NODE_SEED, &"a".repeat(33), &[]), Err("name too long"));
        let mut long_name = data[..68].to_vec();
        long_name.push(40);
        long_name.extend(vec![b'a'; 40]);
        assert_eq!(decode_request(&long_name, &INVITE), Err("name too long"));
        let shouty = encode_request(&INVITE, &NODE_SEED, "Site\n", &[]).unwrap();
        assert_eq!(decode_request(&shouty, &INVITE), Err("name has characters other than a-z, 0-9 and -"));
    }

    #[test]
    fn answers_round_trip_and_a_refusal_is_made_safe() {
        for answer in [JoinAnswer::Certified(b"{\"certificate\":\"...\"}".to_vec()), JoinAnswer::Refused("used".into())]
        {
            assert_eq!(decode_answer(&encode_answer(&answer)).unwrap(), answer);
        }
        let sneaky = encode_answer(&JoinAnswer::Refused("bad\x1b[2Jnews".into()));
        assert_eq!(
            decode_answer(&sneaky).unwrap(),
            JoinAnswer::Refused(crate::peer_text::escape_text(b"bad\x1b[2Jnews"))
        );
        let mut unknown = encode_answer(&JoinAnswer::Refused("x".into()));
        unknown[4] = 7;
        assert_eq!(decode_answer(&unknown), Err("unknown join answer status"));
        assert_eq!(decode_answer(&encode_answer(&JoinAnswer::Certified(vec![1; 3]))[..8]), Err("truncated"));
    }
}
