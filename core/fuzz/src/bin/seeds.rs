//! Writes one valid input per target into corpus/<target>/ (run from core/fuzz): a fuzzer that starts
//! from well-formed values reaches the deep branches of each decoder at once.

use std::net::Ipv4Addr;

use quicether_proto::certkey::{der, membership_extension_value};
use quicether_proto::lane::LaneHeader;
use quicether_proto::member_news::{self, Item};
use quicether_proto::membership::{Certificate, Revocation};
use quicether_proto::record::{Endpoint, EndpointKind, Record};
use quicether_proto::{frame, hello, join, punch};

/// A minimal IPv4/UDP packet (20-byte header, 8-byte UDP header, 4 bytes of payload).
fn ipv4_udp() -> Vec<u8> {
    let mut p = vec![0x45, 0xb8, 0, 32, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
    p.extend_from_slice(&[0x13, 0x88, 0x13, 0x89, 0, 12, 0, 0, b'p', b'i', b'n', b'g']);
    p
}

/// Three back-to-back segments of one TCP flow (IPv4, DF, ACK), each with a two-byte length: what the
/// bond releases and GRO merges.
fn tcp_run() -> Vec<u8> {
    let mut run = Vec::new();
    for i in 0..3u32 {
        let mut p = vec![0x45, 0, 0, 140, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
        p.extend_from_slice(&[0x13, 0x88, 0x9c, 0x40]);
        p.extend_from_slice(&(1000 + 100 * i).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 7, 0x50, 0x10, 2, 0, 0, 0, 0, 0]);
        p.extend_from_slice(&[b'x'; 100]);
        run.extend_from_slice(&(p.len() as u16).to_be_bytes());
        run.extend_from_slice(&p);
    }
    run
}

/// An X.509 certificate as a node shows it in its TLS handshake: an Ed25519 key and the membership
/// extension (OID 2.25.…) holding `membership`; the signature is not checked by the walk.
fn tls_certificate(membership: &[u8]) -> Vec<u8> {
    let ed25519 = der(0x30, &der(0x06, &[0x2b, 0x65, 0x70]));
    let name = der(0x30, &der(0x31, &der(0x30, &[der(0x06, &[0x55, 0x04, 0x03]), der(0x0c, b"qe")].concat())));
    let validity = der(0x30, &[der(0x17, b"240101000000Z"), der(0x17, b"340101000000Z")].concat());
    let spki = der(0x30, &[ed25519.clone(), der(0x03, &[[0u8].as_slice(), &[9; 32]].concat())].concat());
    let oid = [0x06, 0x0a, 0x69, 0xd1, 0xa2, 0xd3, 0xa8, 0xd4, 0xea, 0x89, 0xa4, 0x31];
    let extension = der(0x30, &[oid.as_slice(), &der(0x04, &membership_extension_value(membership))].concat());
    let tbs = der(
        0x30,
        &[
            der(0xa0, &der(0x02, &[2])),
            der(0x02, &[1]),
            ed25519.clone(),
            name.clone(),
            validity,
            name,
            spki,
            der(0xa3, &der(0x30, &extension)),
        ]
        .concat(),
    );
    der(0x30, &[tbs, ed25519, der(0x03, &[0u8; 65])].concat())
}

/// A PCP MAP answer for the fuzzed mapper (RFC 6887 7.2, 11.1): 203.0.113.7:4433 for two hours, as one
/// length-prefixed datagram of the portmap target.
fn pcp_map_answer() -> Vec<u8> {
    let mut answer = vec![2, 0x81, 0, 0];
    answer.extend(7200u32.to_be_bytes());
    answer.extend(1u32.to_be_bytes());
    answer.extend([0; 12]);
    answer.extend(quicether_fuzz::PORTMAP_NONCE);
    answer.extend([17, 0, 0, 0]);
    answer.extend(4433u16.to_be_bytes());
    answer.extend(4433u16.to_be_bytes());
    answer.extend(std::net::Ipv4Addr::new(203, 0, 113, 7).to_ipv6_mapped().octets());
    [vec![answer.len() as u8], answer].concat()
}

fn main() -> std::io::Result<()> {
    let cert = Certificate {
        network: [0; 32],
        node: [7; 32],
        not_before: 1_700_000_000,
        not_after: 1_900_000_000,
        ipv4: Ipv4Addr::new(100, 64, 0, 7),
        overlay: (Ipv4Addr::new(100, 64, 0, 0), 16),
        exit: true,
        name: "site-a".into(),
        groups: vec!["lab".into()],
        lan_prefixes: vec!["192.168.50.0/24".parse().unwrap(), "fd12::/16".parse().unwrap()],
    };
    let record = Record {
        expires_at: 1_900_000_000,
        endpoints: vec![Endpoint {
            kind: EndpointKind::Public,
            wan: "wan0".into(),
            addr: "198.18.0.1:4433".parse().unwrap(),
        }],
        lan: vec!["[fd00::1]:4433".parse().unwrap()],
        relays: vec![[3; 32]],
    };
    let certificate = cert.issue(&[1; 32]).expect("a valid certificate");
    let seeds = [
        ("certkey", tls_certificate(&certificate)),
        ("certificate", certificate),
        ("revocation", Revocation { network: [0; 32], node: [7; 32], revoked_at: 1, sequence: 1 }.issue(&[1; 32])),
        ("record", record.encode().expect("a valid record")),
        ("member_news", member_news::encode(&[Item::Certificate(vec![1; 40]), Item::Revocation(vec![2; 90])])),
        ("join", join::encode_request(&quicether_fuzz::INVITE_KEY, &[5; 32], "site-a", &[]).expect("a valid request")),
        ("frame", [frame::encode_data_header(7, Some(5)).as_slice(), &ipv4_udp()].concat()),
        ("hello", hello::encode_hello("wan0", true)),
        ("packet", ipv4_udp()),
        ("gro", tcp_run()),
        (
            "lane",
            LaneHeader { source: "192.168.1.20".parse().unwrap(), destination: "10.0.60.10:443".parse().unwrap() }
                .encode()
                .expect("one family"),
        ),
        ("peer_text", b"closed by peer: \x00 idle\n".to_vec()),
        ("portmap", pcp_map_answer()),
        (
            "punch",
            punch::encode(&punch::Message {
                kind: punch::Kind::Request,
                key: [4; 32],
                delay_ms: 300,
                candidates: vec!["198.18.0.1:4433".parse().unwrap(), "[2001:db8::1]:4433".parse().unwrap()],
                class: quicether_proto::symmetric::NatClass::Sequential { step: 1 },
                birthday: Some([6; punch::NONCE_LEN]),
            }),
        ),
    ];
    for (target, data) in seeds {
        std::fs::create_dir_all(format!("corpus/{target}"))?;
        std::fs::write(format!("corpus/{target}/seed"), data)?;
    }
    Ok(())
}
