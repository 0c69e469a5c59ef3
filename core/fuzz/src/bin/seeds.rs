//! Writes one valid input per target into corpus/<target>/ (run from core/fuzz): a fuzzer that starts
//! from well-formed values reaches the deep branches of each decoder at once.

use std::net::Ipv4Addr;

use quicether_proto::join;
use quicether_proto::member_news::{self, Item};
use quicether_proto::membership::{Certificate, Revocation};
use quicether_proto::record::{Endpoint, EndpointKind, Record};

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
        ("join", join::encode_request(&quicether_fuzz::INVITE_KEY, &[5; 32], "site-a").expect("a valid request")),
    ];
    for (target, data) in seeds {
        std::fs::create_dir_all(format!("corpus/{target}"))?;
        std::fs::write(format!("corpus/{target}/seed"), data)?;
    }
    Ok(())
}
