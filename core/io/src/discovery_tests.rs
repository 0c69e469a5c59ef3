use std::net::{Ipv4Addr, SocketAddrV4};

use mainline::Testnet;
use quicether_proto::record::{Endpoint, EndpointKind};

use super::*;

const NET: [u8; 32] = [7; 32];
const NOW: u64 = 1_800_000_000;

fn record(expires_at: u64) -> Record {
    Record {
        expires_at,
        endpoints: vec![Endpoint {
            kind: EndpointKind::Public,
            wan: "wan0".into(),
            addr: "198.18.0.2:4433".parse().unwrap(),
        }],
        lan: vec![],
        relays: vec![],
    }
}

/// A BEP 44 item of `seed`'s key at `seq`, its value sealed for `network` (as a member would publish it).
fn item(seed: [u8; 32], network: &[u8; 32], seq: i64, r: &Record) -> MutableItem {
    let keys = NetworkKeys::new(network);
    let node = quicether_proto::signing::public_key(&seed);
    let value = keys.seal(&node, seq, r, random_nonce()).unwrap();
    MutableItem::new(SigningKey::from_bytes(&seed), &value, seq, Some(&NetworkKeys::new(&NET).salt))
}

fn count(s: &Shared) -> HashMap<&'static str, u64> {
    s.counters.snapshot().into_iter().collect()
}

#[test]
fn accepts_the_newest_valid_item_and_ignores_stale_copies() {
    let reader = Shared::new([1; 32], &NET);
    let seed = [2; 32];
    let key = quicether_proto::signing::public_key(&seed);
    let items = vec![item(seed, &NET, 10, &record(NOW + 60)), item(seed, &NET, 20, &record(NOW + 90))];
    let found = reader.accept(&key, items, NOW).unwrap();
    assert_eq!((found.seq, found.record), (20, record(NOW + 90)));
    assert!(count(&reader).values().all(|v| *v == 0), "{:?}", count(&reader));
}

#[test]
fn refuses_older_sequence_after_a_newer_one_was_accepted() {
    let reader = Shared::new([1; 32], &NET);
    let seed = [2; 32];
    let key = quicether_proto::signing::public_key(&seed);
    assert!(reader.accept(&key, vec![item(seed, &NET, 20, &record(NOW + 60))], NOW).is_some());
    assert!(reader.accept(&key, vec![item(seed, &NET, 19, &record(NOW + 60))], NOW).is_none());
    assert_eq!(count(&reader)["replay"], 1);
    // The same item again is not a replay.
    assert!(reader.accept(&key, vec![item(seed, &NET, 20, &record(NOW + 60))], NOW).is_some());
    assert_eq!(count(&reader)["replay"], 1);
}

#[test]
fn refuses_non_member_malformed_and_expired_values() {
    let reader = Shared::new([1; 32], &NET);
    let seed = [2; 32];
    let key = quicether_proto::signing::public_key(&seed);
    assert!(reader.accept(&key, vec![item(seed, &[9; 32], 5, &record(NOW + 60))], NOW).is_none());
    assert_eq!(count(&reader)["non_member"], 1);
    let junk = MutableItem::new(SigningKey::from_bytes(&seed), b"\x01not sealed at all.............", 6, None);
    assert!(reader.accept(&key, vec![junk], NOW).is_none());
    assert_eq!(count(&reader)["non_member"], 2);
    assert!(reader.accept(&key, vec![item(seed, &NET, 7, &record(NOW - CLOCK_TOLERANCE_S - 1))], NOW).is_none());
    assert_eq!(count(&reader)["expired"], 1);
    assert!(reader.accept(&key, vec![item(seed, &NET, 8, &record(NOW - CLOCK_TOLERANCE_S))], NOW).is_some());
    // An expired newest item does not hide a valid older one of the same lookup.
    let items = vec![item(seed, &NET, 30, &record(NOW - 10_000)), item(seed, &NET, 29, &record(NOW + 60))];
    assert_eq!(reader.accept(&key, items, NOW).unwrap().seq, 29);
    assert_eq!(count(&reader)["expired"], 2);
    // Nothing refused left state behind: only accepted sequences are remembered.
    assert_eq!(reader.last_seq.lock().unwrap().len(), 1);
}

#[test]
fn replay_memory_is_bounded() {
    let reader = Shared::new([1; 32], &NET);
    for i in 0..MAX_TRACKED_KEYS + 3 {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let key = quicether_proto::signing::public_key(&seed);
        let mut s = reader.last_seq.lock().unwrap();
        if s.len() < MAX_TRACKED_KEYS - 1 {
            // Fill quickly without signing thousands of items; the last few go through `accept`.
            s.insert(key, i as i64);
            continue;
        }
        drop(s);
        assert!(reader.accept(&key, vec![item(seed, &NET, i as i64, &record(NOW + 60))], NOW).is_some());
    }
    assert_eq!(reader.last_seq.lock().unwrap().len(), MAX_TRACKED_KEYS);
}

fn member(testnet: &Testnet, seed: [u8; 32], network: [u8; 32]) -> Discovery {
    let bootstrap = testnet.bootstrap.iter().map(|a| a.parse().unwrap()).collect();
    Discovery::start(DiscoveryConfig {
        port: 0,
        bind: Some(Ipv4Addr::LOCALHOST),
        serve_on: vec![],
        bootstrap: Some(bootstrap),
        server: false,
        seed,
        network_key: network,
    })
    .unwrap()
}

#[test]
fn members_find_each_other_and_outsiders_find_nothing() {
    let testnet = Testnet::builder(8).build().unwrap();
    let a = member(&testnet, [1; 32], NET);
    let b = member(&testnet, [2; 32], NET);
    let outsider = member(&testnet, [3; 32], [8; 32]);
    let expires = crate::unix_time().as_secs() + 600;
    let (seq, stored) = a.publish(&record(expires)).unwrap();
    assert!(stored > 0);
    let found = b.lookup(&a.node_key(), Duration::from_secs(10)).unwrap().unwrap();
    assert_eq!((found.seq, found.record), (seq, record(expires)));
    // Another network's salt puts the item elsewhere: an outsider does not even find a value to refuse.
    assert_eq!(outsider.lookup(&a.node_key(), Duration::from_secs(10)).unwrap(), None);
    let c = outsider.counters().into_iter().collect::<HashMap<_, _>>();
    assert_eq!((c["not_found"], c["non_member"]), (1, 0));
    // A second publish has a newer sequence and replaces the first.
    let (seq2, _) = a.publish(&record(expires + 1)).unwrap();
    assert!(seq2 > seq);
    assert_eq!(b.lookup(&a.node_key(), Duration::from_secs(10)).unwrap().unwrap().seq, seq2);
}

#[test]
fn late_items_after_an_answer_count_refusals_but_not_stale_copies() {
    let reader = Shared::new([1; 32], &NET);
    let seed = [2; 32];
    let key = quicether_proto::signing::public_key(&seed);
    assert_eq!(reader.accept(&key, vec![item(seed, &NET, 10, &record(NOW + 60))], NOW).unwrap().seq, 10);
    // A later lookup returned seq 20 early; its remaining answers: an older copy of 15 (stale, between
    // the previous 10 and the answer), a replay of 5, a non-member 30, and a newer valid 25.
    let late = vec![
        item(seed, &NET, 15, &record(NOW + 60)),
        item(seed, &NET, 5, &record(NOW + 60)),
        item(seed, &[9; 32], 30, &record(NOW + 60)),
        item(seed, &NET, 25, &record(NOW + 60)),
    ];
    assert_eq!(reader.accept_items(&key, late, NOW, Some(10), Some(20)).unwrap().seq, 25);
    let c = count(&reader);
    assert_eq!((c["replay"], c["non_member"], c["expired"]), (1, 1, 0));
    assert_eq!(reader.last_seq.lock().unwrap()[&key], 25);
}

/// A member of `NET` whose only bootstrap is `bootstrap`, asking from `bind`.
fn member_via(bind: Ipv4Addr, bootstrap: SocketAddrV4, seed: [u8; 32]) -> Discovery {
    Discovery::start(DiscoveryConfig {
        port: 0,
        bind: Some(bind),
        serve_on: vec![],
        bootstrap: Some(vec![bootstrap]),
        server: false,
        seed,
        network_key: NET,
    })
    .unwrap()
}

#[test]
fn a_server_on_two_addresses_answers_on_each_and_members_find_each_other_through_either() {
    // The only DHT there is: one server with two addresses (loopback has them all), no bootstrap.
    let addrs = [Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2)];
    let mut server = None;
    for port in 46_100..46_200 {
        // A fixed port is needed; take a free one (tests run in parallel).
        let cfg = DiscoveryConfig {
            port,
            bind: None,
            serve_on: addrs.to_vec(),
            bootstrap: Some(vec![]),
            server: true,
            seed: [5; 32],
            network_key: NET,
        };
        if let Ok(s) = Discovery::start(cfg) {
            server = Some(s);
            break;
        }
    }
    let server = server.expect("a free port for the server");
    let port = server.serving[0].port();
    assert_eq!(server.serving, vec![SocketAddrV4::new(addrs[0], port), SocketAddrV4::new(addrs[1], port)]);
    assert_ne!(server.local_addr.port(), port, "its own client node is apart from the servers");
    // Each member knows only one of the server's addresses, and asks from an address of its own.
    let a = member_via(Ipv4Addr::new(127, 0, 0, 3), server.serving[0], [1; 32]);
    let b = member_via(Ipv4Addr::new(127, 0, 0, 4), server.serving[1], [2; 32]);
    let expires = crate::unix_time().as_secs() + 600;
    let (seq_a, stored) = a.publish(&record(expires)).unwrap();
    assert!(stored > 0);
    let (seq_b, _) = b.publish(&record(expires + 1)).unwrap();
    assert_eq!(b.lookup(&a.node_key(), Duration::from_secs(10)).unwrap().unwrap().seq, seq_a);
    assert_eq!(a.lookup(&b.node_key(), Duration::from_secs(10)).unwrap().unwrap().seq, seq_b);
    // The server's own record is stored at its own serving nodes, and found through either address.
    let (seq_s, _) = server.publish(&record(expires + 2)).unwrap();
    assert_eq!(a.lookup(&server.node_key(), Duration::from_secs(10)).unwrap().unwrap().seq, seq_s);
    assert_eq!(b.lookup(&server.node_key(), Duration::from_secs(10)).unwrap().unwrap().seq, seq_s);
}

#[test]
fn a_node_restarted_on_its_fixed_port_gets_the_port_its_predecessor_lets_go() {
    let config = |port| DiscoveryConfig {
        port,
        bind: Some(Ipv4Addr::LOCALHOST),
        serve_on: vec![],
        bootstrap: Some(vec![]),
        server: true,
        seed: [3; 32],
        network_key: NET,
    };
    let first = Discovery::start(config(0)).unwrap();
    let port = first.local_addr.port();
    drop(first);
    // At once, as the daemon does when its addresses change: the old actor still holds the port a moment.
    let second = match Discovery::start(config(port)) {
        Ok(second) => second,
        // Who holds the port, for a failure seen only on loaded CI machines.
        Err(e) => {
            let holders = std::process::Command::new("ss").args(["-uapn", &format!("sport = :{port}")]).output();
            let holders = holders.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
            panic!(
                "the port {port}, once the old node let it go: {e} (kind {:?}); its sockets now:\n{holders}",
                e.kind()
            )
        }
    };
    assert_eq!(second.local_addr.port(), port);
}

#[test]
fn a_start_on_a_port_another_socket_keeps_fails_with_the_bind_error_not_a_panic() {
    let holder = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = holder.local_addr().unwrap().port();
    let config = DiscoveryConfig {
        port,
        bind: Some(Ipv4Addr::LOCALHOST),
        serve_on: vec![],
        bootstrap: Some(vec![]),
        server: true,
        seed: [4; 32],
        network_key: NET,
    };
    let started = std::time::Instant::now();
    let err = Discovery::start(config).err().expect("the port is taken");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
    assert!(started.elapsed() >= REBIND_WAIT, "it waited for the port to be let go first");
}
