use super::*;

const NET_SEED: [u8; 32] = [1; 32];
const NODE_SEED: [u8; 32] = [2; 32];
const NOW: u64 = 1_800_000_000;

fn cert() -> Certificate {
    Certificate {
        network: [0; 32],
        node: signing::public_key(&NODE_SEED),
        not_before: NOW - 60,
        not_after: NOW + 86_400,
        ipv4: Ipv4Addr::new(100, 64, 0, 7),
        overlay: (Ipv4Addr::new(100, 64, 0, 0), 16),
        exit: true,
        name: "site-a".into(),
        groups: vec!["admins".into(), "lab".into()],
        lan_prefixes: vec!["192.168.50.0/24".parse().unwrap(), "fd12:3456::/32".parse().unwrap()],
    }
}

fn net_key() -> [u8; 32] {
    signing::public_key(&NET_SEED)
}

fn read(data: &[u8], now: u64) -> Result<Certificate, Refused> {
    read_certificate(data, &net_key(), now, &RevocationSet::default())
}

#[test]
fn issued_certificate_reads_back() {
    let data = cert().issue(&NET_SEED).unwrap();
    assert!(data.len() <= MAX_CERTIFICATE_LEN);
    let got = read(&data, NOW).unwrap();
    assert_eq!(got, Certificate { network: net_key(), ..cert() });
    assert_eq!(got.ipv6().octets()[0], 0xfd);
}

#[test]
fn largest_certificate_fits_the_bound() {
    let mut c = cert();
    c.name = "a".repeat(MAX_NAME_LEN);
    c.groups = (0..MAX_GROUPS).map(|i| format!("{i}{}", "g".repeat(MAX_NAME_LEN - 1))).collect();
    c.lan_prefixes = (0..MAX_LAN_PREFIXES).map(|i| format!("fd00:{i:x}::/32").parse().unwrap()).collect();
    let data = c.issue(&NET_SEED).unwrap();
    assert_eq!(data.len(), MAX_CERTIFICATE_LEN);
    assert!(read(&data, NOW).is_ok());
}

#[test]
fn refuses_another_networks_certificate() {
    let data = cert().issue(&[9; 32]).unwrap();
    assert_eq!(read(&data, NOW), Err(Refused::ForeignNetwork));
}

#[test]
fn refuses_a_changed_certificate_as_bad_signature() {
    let mut data = cert().issue(&NET_SEED).unwrap();
    // The overlay IPv4's last byte: still well-formed, no longer what was signed.
    let ip_at = 1 + 32 + 32 + 16 + 3;
    data[ip_at] = 8;
    assert_eq!(read(&data, NOW), Err(Refused::BadSignature));
    let mut data = cert().issue(&NET_SEED).unwrap();
    let last = data.len() - 1;
    data[last] ^= 0x40;
    assert_eq!(read(&data, NOW), Err(Refused::BadSignature));
}

#[test]
fn validity_window_has_a_clock_tolerance() {
    let data = cert().issue(&NET_SEED).unwrap();
    let c = cert();
    assert!(read(&data, c.not_before - CLOCK_TOLERANCE_S).is_ok());
    assert_eq!(read(&data, c.not_before - CLOCK_TOLERANCE_S - 1), Err(Refused::NotYetValid));
    assert!(read(&data, c.not_after + CLOCK_TOLERANCE_S).is_ok());
    assert_eq!(read(&data, c.not_after + CLOCK_TOLERANCE_S + 1), Err(Refused::Expired));
}

#[test]
fn an_admitted_member_outlives_a_backward_clock_step_not_its_expiry_or_revocation() {
    let data = cert().issue(&NET_SEED).unwrap();
    let c = cert();
    let holds = |now: u64, revoked: &RevocationSet| admitted_certificate_holds(&data, &net_key(), now, revoked);
    // Our clock stepped back a day after admitting it: a new handshake is refused, the admitted member stays.
    let day_before = c.not_before - 86_400;
    assert_eq!(read(&data, day_before), Err(Refused::NotYetValid));
    assert_eq!(holds(day_before, &RevocationSet::default()).map(|h| h.name), Ok("site-a".to_string()));
    assert_eq!(holds(c.not_after + CLOCK_TOLERANCE_S + 1, &RevocationSet::default()), Err(Refused::Expired));
    let rev = Revocation { network: [0; 32], node: c.node, revoked_at: NOW, sequence: 1 }.issue(&NET_SEED);
    let mut revoked = RevocationSet::default();
    assert!(revoked.insert(read_revocation(&rev, &net_key()).unwrap()));
    assert_eq!(holds(day_before, &revoked), Err(Refused::Revoked));
}

#[test]
fn refuses_a_revoked_member() {
    let data = cert().issue(&NET_SEED).unwrap();
    let rev = Revocation { network: [0; 32], node: cert().node, revoked_at: NOW, sequence: 3 }.issue(&NET_SEED);
    let rev = read_revocation(&rev, &net_key()).unwrap();
    let mut set = RevocationSet::default();
    assert!(set.insert(rev));
    assert!(!set.insert(rev));
    assert_eq!(set.latest_sequence(), 3);
    assert_eq!(read_certificate(&data, &net_key(), NOW, &set), Err(Refused::Revoked));
}

#[test]
fn refuses_malformed_certificates() {
    let good = cert().issue(&NET_SEED).unwrap();
    let m = |data: &[u8]| match read(data, NOW) {
        Err(Refused::Malformed(why)) => why,
        other => panic!("expected malformed, got {other:?}"),
    };
    assert_eq!(m(&[]), "truncated");
    // The signature is the last 64 bytes, so a byte less cuts the body, a byte more leaves one over.
    assert_eq!(m(&good[..good.len() - 1]), "truncated");
    assert_eq!(m(&[&good[..], &[0]].concat()), "trailing bytes");
    assert_eq!(m(&vec![1u8; MAX_CERTIFICATE_LEN + 1]), "longer than any certificate");
    let mut v2 = good.clone();
    v2[0] = 2;
    assert_eq!(m(&v2), "not a version 1 certificate");
    let flags_at = 1 + 32 + 32 + 16 + 4 + 5;
    let mut flags = good.clone();
    flags[flags_at] = 0x80;
    assert_eq!(m(&flags), "unknown flags");
    let mut name = good.clone();
    name[flags_at + 2] = b'A';
    assert_eq!(m(&name), "bad name");
    let mut long = good.clone();
    long[flags_at + 1] = 200;
    assert_eq!(m(&long), "bad name");
}

#[test]
fn every_truncation_and_byte_flip_is_refused_without_panic() {
    let good = cert().issue(&NET_SEED).unwrap();
    for n in 0..good.len() {
        assert!(read(&good[..n], NOW).is_err());
    }
    for i in 0..good.len() {
        for bit in 0..8 {
            let mut d = good.clone();
            d[i] ^= 1 << bit;
            assert!(read(&d, NOW).is_err(), "flip of bit {bit} at {i} accepted");
        }
    }
}

#[test]
fn issue_refuses_bad_fields() {
    let bad = |f: fn(&mut Certificate)| {
        let mut c = cert();
        f(&mut c);
        c.issue(&NET_SEED).unwrap_err()
    };
    assert!(bad(|c| c.name = "Site".into()).starts_with("name"));
    assert!(bad(|c| c.name = "-a".into()).starts_with("name"));
    assert!(bad(|c| c.name = "a".repeat(33)).starts_with("name"));
    assert!(bad(|c| c.groups = vec!["x".into(); 9]).starts_with("too many groups"));
    assert!(bad(|c| c.groups = vec!["a b".into()]).starts_with("group"));
    assert!(bad(|c| c.lan_prefixes = vec!["10.0.0.0/8".parse().unwrap(); 17]).starts_with("too many"));
    assert!(bad(|c| c.lan_prefixes = vec!["10.0.0.1/8".parse().unwrap()]).contains("host bits"));
    assert!(bad(|c| c.overlay = (Ipv4Addr::new(100, 64, 0, 0), 17)).contains("/10 to /16"));
    assert!(bad(|c| c.overlay = (Ipv4Addr::new(10, 64, 0, 0), 16)).contains("100.64.0.0/10"));
    assert!(bad(|c| c.ipv4 = Ipv4Addr::new(100, 65, 0, 7)).contains("inside the overlay"));
    assert!(bad(|c| c.ipv4 = Ipv4Addr::new(100, 64, 0, 0)).contains("host address"));
    assert!(bad(|c| c.ipv4 = Ipv4Addr::new(100, 64, 255, 255)).contains("host address"));
    assert!(bad(|c| c.not_after = c.not_before).contains("not_before"));
}

#[test]
fn revocation_refusals() {
    let rev = Revocation { network: [0; 32], node: [5; 32], revoked_at: NOW, sequence: 1 };
    let data = rev.issue(&NET_SEED);
    assert_eq!(data.len(), REVOCATION_LEN);
    assert_eq!(read_revocation(&data, &net_key()).unwrap(), Revocation { network: net_key(), ..rev });
    assert_eq!(read_revocation(&rev.issue(&[9; 32]), &net_key()), Err(Refused::ForeignNetwork));
    let mut forged = data.clone();
    forged[40] ^= 1;
    assert_eq!(read_revocation(&forged, &net_key()), Err(Refused::BadSignature));
    assert_eq!(read_revocation(&data[..10], &net_key()), Err(Refused::Malformed("truncated")));
    assert_eq!(read_revocation(&[&data[..], &[0]].concat(), &net_key()), Err(Refused::Malformed("trailing bytes")));
    let mut v = data.clone();
    v[0] = 1;
    assert_eq!(read_revocation(&v, &net_key()), Err(Refused::Malformed("not a version 1 revocation")));
}

#[test]
fn ula_shares_a_48_per_network_and_differs_per_node() {
    let a = ula(&[1; 32], &[2; 32]).octets();
    let b = ula(&[1; 32], &[3; 32]).octets();
    let c = ula(&[4; 32], &[2; 32]).octets();
    assert_eq!(a[0], 0xfd);
    assert_eq!(a[..8], b[..8]);
    assert_ne!(a[8..], b[8..]);
    assert_ne!(a[1..6], c[1..6]);
}
