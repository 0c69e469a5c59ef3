//! Writes one valid input per target into corpus/<target>/ (run from core/fuzz): a fuzzer that starts
//! from well-formed values reaches the deep branches of each decoder at once.

use std::net::Ipv4Addr;

use quicether_proto::member_news::{self, Item};
use quicether_proto::membership::{Certificate, Revocation};
use quicether_proto::record::{Endpoint, EndpointKind, Record};
use quicether_proto::{frame, hello, join};

/// A minimal IPv4/UDP packet (20-byte header, 8-byte UDP header, 4 bytes of payload).
fn ipv4_udp() -> Vec<u8> {
    let mut p = vec![0x45, 0xb8, 0, 32, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
    p.extend_from_slice(&[0x13, 0x88, 0x13, 0x89, 0, 12, 0, 0, b'p', b'i', b'n', b'g']);
    p
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
    let seeds = [
        ("certificate", cert.issue(&[1; 32]).expect("a valid certificate")),
        ("revocation", Revocation { network: [0; 32], node: [7; 32], revoked_at: 1, sequence: 1 }.issue(&[1; 32])),
        ("record", record.encode().expect("a valid record")),
        ("member_news", member_news::encode(&[Item::Certificate(vec![1; 40]), Item::Revocation(vec![2; 90])])),
        ("join", join::encode_request(&quicether_fuzz::INVITE_KEY, &[5; 32], "site-a", &[]).expect("a valid request")),
        ("frame", [frame::encode_data_header(7, Some(5)).as_slice(), &ipv4_udp()].concat()),
        ("hello", hello::encode_hello("wan0", true)),
        ("packet", ipv4_udp()),
        ("peer_text", b"closed by peer: \x00 idle\n".to_vec()),
    ];
    for (target, data) in seeds {
        std::fs::create_dir_all(format!("corpus/{target}"))?;
        std::fs::write(format!("corpus/{target}/seed"), data)?;
    }
    Ok(())
}
