//! Coverage-guided fuzz targets for every decoder of what the network sends the core: bond frames (each
//! DATAGRAM, and the relay datagrams among them), the path hello and its answer, inner IP packets (addresses for allowed IPs, classification),
//! peer-supplied text, certificates, revocations, DHT records, member news batches, join requests and
//! answers, hole-punch messages, runs of inner packets merged for the TUN (GRO), the TCP lane's connection header, the home router's PCP and NAT-PMP answers, and the peer's TLS certificate (walked for its key and membership before
//! the handshake is authenticated). Built with cargo-afl on the stable toolchain; `scripts/fuzz` runs
//! them (`scripts/fuzz --help`):
//!
//! ```text
//! cargo install cargo-afl && cargo afl build --release
//! cargo run --release --bin seeds          # corpus/<target>/seed: one valid input each
//! mkdir -p out && cargo afl fuzz -V 60 -i corpus/record -o out/record target/release/record
//! ```
//!
//! What each fuzz target feeds its input to. The properties: no input panics, allocates beyond the
//! decoders' fixed limits or loops; whatever decodes encodes back to the same bytes (one encoding per
//! value), so a refusal cannot be sidestepped by an alternative spelling.

use quicether_proto::allowed_ips::packet_addrs;
use quicether_proto::certkey::{ed25519_key_of_cert, membership_of_cert};
use quicether_proto::classify::inspect;
use quicether_proto::frame::{self, Frame};
use quicether_proto::gro::{coalesce, Write};
use quicether_proto::hello;
use quicether_proto::join::{decode_answer, decode_request, encode_answer, JoinAnswer};
use quicether_proto::lane::{LaneHeader, MAX_HEADER_LEN};
use quicether_proto::member_news;
use quicether_proto::membership::{read_certificate, read_revocation, RevocationSet};
use quicether_proto::pcp;
use quicether_proto::peer_text::{escape_text, safe_label, MAX_LABEL_LEN, MAX_TEXT_LEN};
use quicether_proto::portmap::{self, unusable_external, Mapper};
use quicether_proto::punch;
use quicether_proto::record::{NetworkKeys, Record};

/// The network key the fuzzed certificates and revocations are checked against (any fixed key will do:
/// the decoder runs before the signature check, which fails for fuzzed input).
pub const NETWORK_KEY: [u8; 32] = [0x42; 32];

pub fn certificate(data: &[u8]) {
    let _ = read_certificate(data, &NETWORK_KEY, 1_800_000_000, &RevocationSet::default());
}

/// A peer's TLS certificate (DER), read before anything about the peer is known: what the walk returns
/// lies inside the input.
pub fn certkey(data: &[u8]) {
    if let Some(key) = ed25519_key_of_cert(data) {
        assert!(data.windows(32).any(|w| w == key), "the key must come from the certificate");
    }
    if let Some(inner) = membership_of_cert(data) {
        assert!(inner.len() < data.len());
    }
}

/// A hole-punch request or offer from a peer: whatever decodes encodes back to the same bytes.
pub fn punch(data: &[u8]) {
    if let Ok(message) = punch::decode(data) {
        assert_eq!(punch::encode(&message), data, "a decoded punch message must encode to the same bytes");
    }
}

pub fn revocation(data: &[u8]) {
    let _ = read_revocation(data, &NETWORK_KEY);
}

pub fn record(data: &[u8]) {
    if let Ok(r) = Record::decode(data) {
        assert_eq!(r.encode().as_deref(), Ok(data), "a decoded record must encode to the same bytes");
    }
    // The sealed form: authentication fails first for anything not made with the key.
    let _ = NetworkKeys::new(&NETWORK_KEY).open(&[1; 32], 1, data);
}

pub fn member_news(data: &[u8]) {
    if let Ok(items) = member_news::decode(data) {
        assert_eq!(member_news::encode(&items), data, "a decoded batch must encode to the same bytes");
    }
}

/// One DATAGRAM from a peer: whatever parses as a DATA frame carries exactly the bytes after its header.
pub fn frame(data: &[u8]) {
    // A DATAGRAM is a RELAY datagram (another member's QUIC packet, `relay.rs`) or a bond frame.
    if let Some((header, packet)) = quicether_proto::relay::decode(data) {
        assert!(quicether_proto::relay::is_relay(data) && frame::parse(data).is_none());
        let mut again = quicether_proto::relay::encode_to(&header.key, header.handle, header.dialed, packet);
        if header.direction == quicether_proto::relay::Direction::From {
            quicether_proto::relay::turn_around(&mut again, &header.key, header.handle);
        }
        assert_eq!(again, data, "a relay datagram reads back to the same bytes");
        return;
    }
    match frame::parse(data) {
        Some(Frame::Data { seq, packet, .. }) => {
            assert_eq!(frame::data_seq(data), Some(seq));
            assert_eq!(packet.len(), data.len() - frame::DATA_HEADER_LEN);
        }
        Some(Frame::Nack { seqs }) => assert!(seqs.len() * 8 + 3 == data.len()),
        _ => {}
    }
}

/// The path hello and its answer; what a peer names its WAN is always a safe label.
pub fn hello(data: &[u8]) {
    if let Ok(h) = hello::decode_hello(data) {
        assert!(h.wan.len() <= MAX_LABEL_LEN && h.wan.bytes().all(|c| c.is_ascii_graphic()));
    }
    if let Ok(answer) = hello::decode_answer(data) {
        assert!(answer.peer_wan.is_none_or(|w| w.len() <= MAX_LABEL_LEN && w.bytes().all(|c| c.is_ascii_graphic())));
    }
}

/// The TCP lane's connection header (read by a gateway before it connects anywhere): never takes more than
/// its bound, and what decodes encodes back to the bytes it took.
pub fn lane(data: &[u8]) {
    if let Ok(Some((header, used))) = LaneHeader::decode(data) {
        assert!(used <= MAX_HEADER_LEN);
        assert_eq!(header.encode().as_deref(), Ok(&data[..used]), "a decoded header must encode to the same bytes");
    }
}

/// The nonce of the fuzzed port mapper (its seed's PCP answer carries it).
pub const PORTMAP_NONCE: [u8; pcp::NONCE_LEN] = [0x37; pcp::NONCE_LEN];

/// What a home router answers on port 5351 (PCP, or NAT-PMP after a version-0 answer): the input is a
/// run of datagrams, each a length byte and its bytes, fed to one mapper as time goes on. No datagram
/// panics, and a mapping the mapper takes is never a private, shared or unspecified address, nor port 0.
pub fn portmap(data: &[u8]) {
    let _ = pcp::decode(data);
    let _ = portmap::decode(data);
    let mut mapper = Mapper::new(4433, std::net::Ipv4Addr::new(192, 168, 1, 2), PORTMAP_NONCE, 0);
    let (mut rest, mut now_us) = (data, 0u64);
    while let Some((&len, tail)) = rest.split_first() {
        let (datagram, next) = tail.split_at((len as usize).min(tail.len()));
        let _ = mapper.poll_transmit(now_us);
        let _ = mapper.handle_response(datagram, now_us);
        if let Some(candidate) = mapper.candidate(now_us) {
            let std::net::SocketAddr::V4(v4) = candidate else { panic!("an IPv6 mapping: {candidate}") };
            assert!(v4.port() != 0 && unusable_external(*v4.ip()).is_none(), "a mapping taken: {v4}");
        }
        now_us += 100_000;
        rest = next;
    }
}

/// An inner IP packet (from the TUN, or from a peer before its source is checked).
pub fn packet(data: &[u8]) {
    let _ = packet_addrs(data);
    if let Some(info) = inspect(data) {
        assert_eq!(info.len, data.len());
    }
}

/// Text a peer sends (close reasons): escaped to printable ASCII and bounded, whatever it is.
pub fn peer_text(data: &[u8]) {
    let text = escape_text(data);
    assert!(text.len() <= MAX_TEXT_LEN + 3 && text.bytes().all(|c| (0x20..0x7f).contains(&c)));
    let label = safe_label(data);
    assert!(label.len() <= MAX_LABEL_LEN);
}

/// Inner packets a peer sent, as the bond releases them, merged for the TUN device (GRO): the input is a
/// run of packets, each a two-byte length and its bytes. Every packet is written once, in order; a
/// super-packet is as long as the packets it merges less their repeated headers, and never over 64 KB.
pub fn gro(data: &[u8]) {
    let mut packets = Vec::new();
    let mut rest = data;
    while let [hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        packets.push(&tail[..len]);
        rest = &tail[len..];
    }
    let (mut out, mut writes) = (Vec::new(), Vec::new());
    coalesce(&packets, &mut out, &mut writes);
    let mut next = 0;
    for write in writes {
        match write {
            Write::Packet(i) => {
                assert_eq!(i, next);
                next += 1;
            }
            Write::Super { hdr, range, segments } => {
                assert!(segments >= 2 && range.len() <= 65_535);
                let merged: usize = packets[next..next + segments].iter().map(|p| p.len()).sum();
                assert_eq!(range.len(), merged - (segments - 1) * usize::from(hdr.hdr_len));
                next += segments;
            }
        }
    }
    assert_eq!(next, packets.len());
}

/// The invite key the fuzzed join requests are read for.
pub const INVITE_KEY: [u8; 32] = [0x24; 32];

pub fn join(data: &[u8]) {
    let _ = decode_request(data, &INVITE_KEY);
    if let Ok(answer @ JoinAnswer::Certified(_)) = decode_answer(data) {
        assert_eq!(encode_answer(&answer), data, "a decoded answer must encode to the same bytes");
    }
}

#[cfg(test)]
mod tests {
    /// Each target on its seed (`cargo run --bin seeds` first): a valid input passes its own property.
    #[test]
    fn every_target_takes_its_seed() {
        type Target = (&'static str, fn(&[u8]));
        let targets: [Target; 14] = [
            ("frame", super::frame),
            ("gro", super::gro),
            ("hello", super::hello),
            ("packet", super::packet),
            ("peer_text", super::peer_text),
            ("certificate", super::certificate),
            ("revocation", super::revocation),
            ("record", super::record),
            ("member_news", super::member_news),
            ("join", super::join),
            ("certkey", super::certkey),
            ("punch", super::punch),
            ("lane", super::lane),
            ("portmap", super::portmap),
        ];
        for (name, target) in targets {
            target(&std::fs::read(format!("corpus/{name}/seed")).unwrap());
        }
    }

    /// The GRO seed is a run the merge takes: the fuzzer starts from a super-packet built.
    #[test]
    fn the_gro_seed_merges_into_one_super_packet() {
        let seed = std::fs::read("corpus/gro/seed").unwrap();
        let packets: Vec<&[u8]> = seed.chunks(142).map(|c| &c[2..]).collect();
        let (mut out, mut writes) = (Vec::new(), Vec::new());
        super::coalesce(&packets, &mut out, &mut writes);
        assert!(matches!(writes[..], [super::Write::Super { segments: 3, .. }]), "{writes:?}");
    }

    /// The port mapping seed is an answer the mapper takes: the fuzzer starts past the nonce check.
    #[test]
    fn the_portmap_seed_is_a_mapping_taken() {
        let seed = std::fs::read("corpus/portmap/seed").unwrap();
        let mut mapper = super::Mapper::new(4433, std::net::Ipv4Addr::new(192, 168, 1, 2), super::PORTMAP_NONCE, 0);
        let _ = mapper.poll_transmit(0);
        assert_eq!(mapper.handle_response(&seed[1..], 0), Ok(true));
        assert_eq!(mapper.candidate(0), Some("203.0.113.7:4433".parse().unwrap()));
    }

    /// The certificate seed is one the walk reads through: the fuzzer starts past the DER framing.
    #[test]
    fn the_certificate_seed_holds_a_key_and_a_membership() {
        let seed = std::fs::read("corpus/certkey/seed").unwrap();
        assert_eq!(super::ed25519_key_of_cert(&seed), Some([9; 32]));
        let membership = super::membership_of_cert(&seed).expect("the membership extension");
        assert_eq!(membership, std::fs::read("corpus/certificate/seed").unwrap());
    }
}
