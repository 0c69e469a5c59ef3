//! The lane end to end over loopback: a site dialer and a gateway listener, real MPTCP sockets and TLS.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::tls::{generate_seed, provider, Identity};

struct Gateway {
    addr: SocketAddr,
    limits: Arc<LaneLimits>,
    identity: Identity,
    log: Arc<Mutex<Vec<String>>>,
}

/// A gateway lane on loopback that lets in the keys `pinned` (loopback destinations allowed: the test's
/// destination lives there), from any source, with no ACLs.
async fn gateway(pinned: &[[u8; 32]]) -> Gateway {
    gateway_judging(pinned, LanePolicy::default(), |_, _| true).await
}

/// The same with the ACLs `acl`, and `speaks_for` as the peers' allowed_ips.
async fn gateway_judging(pinned: &[[u8; 32]], acl: LanePolicy, speaks_for: fn(&[u8; 32], IpAddr) -> bool) -> Gateway {
    let identity = Identity::from_seed(&generate_seed(), None).unwrap();
    let keys = Arc::new(RwLock::new(pinned.iter().copied().collect::<HashSet<_>>()));
    let verifier = Arc::new(KnownClientKeys::new(keys, Arc::new(RwLock::new(None)), provider(), Box::new(|_, _| {})));
    let acceptor = acceptor(verifier, CurrentIdentity::new(&identity).unwrap()).unwrap();
    let listener = mptcp_listener("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    let limits = Arc::new(LaneLimits::new(8, Arc::new(move |line| sink.lock().unwrap().push(line))));
    let gate = LaneGate { destinations: |_| true, speaks_for: Box::new(speaks_for), acl: Arc::new(RwLock::new(acl)) };
    tokio::spawn(serve_gateway(listener, acceptor, limits.clone(), Arc::new(gate)));
    Gateway { addr, limits, identity, log }
}

/// A LAN connection's two ends: what the LAN host holds and what the site's listener accepted.
async fn lan_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (accepted, _) = listener.accept().await.unwrap();
    (host, accepted)
}

pub(crate) fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[tokio::test]
async fn carries_a_connection_both_ways_over_mptcp_and_tls() {
    let site = Identity::from_seed(&generate_seed(), None).unwrap();
    let gw = gateway(&[site.public_key]).await;
    // The destination sends 4 MB, then echoes what it gets back as its length.
    let destination = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dest_addr = destination.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut conn, _) = destination.accept().await.unwrap();
        conn.write_all(&pattern(4 << 20)).await.unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).await.unwrap();
        conn.write_all(&(got.len() as u64).to_be_bytes()).await.unwrap();
    });
    let dialer = LaneDialer::new(CurrentIdentity::new(&site).unwrap(), gw.identity.public_key, None, gw.addr).unwrap();
    let (mut host, accepted) = lan_pair().await;
    let site_counters = Arc::new(LaneCounters::default());
    let carried = {
        let counters = site_counters.clone();
        tokio::spawn(async move { dialer.carry(accepted, dest_addr, &counters).await })
    };
    let mut got = vec![0u8; 4 << 20];
    host.read_exact(&mut got).await.unwrap();
    assert!(got == pattern(4 << 20), "the download arrived intact");
    host.write_all(&pattern(100_000)).await.unwrap();
    host.shutdown().await.unwrap();
    let mut len = [0u8; 8];
    host.read_exact(&mut len).await.unwrap();
    assert_eq!(u64::from_be_bytes(len), 100_000);
    drop(host);
    carried.await.unwrap().unwrap();
    assert_eq!(site_counters.bytes_out.load(Ordering::Relaxed), 100_000);
    assert_eq!(site_counters.bytes_in.load(Ordering::Relaxed), (4 << 20) + 8);
    let counters = &gw.limits.counters;
    assert_eq!(counters.connections.load(Ordering::Relaxed), 1);
    assert_eq!(counters.refused.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn refuses_a_key_that_is_not_pinned() {
    let pinned = Identity::from_seed(&generate_seed(), None).unwrap();
    let stranger = Identity::from_seed(&generate_seed(), None).unwrap();
    let gw = gateway(&[pinned.public_key]).await;
    let dialer =
        LaneDialer::new(CurrentIdentity::new(&stranger).unwrap(), gw.identity.public_key, None, gw.addr).unwrap();
    let (_host, accepted) = lan_pair().await;
    let counters = LaneCounters::default();
    // TLS 1.3: the client's certificate is checked after the client has sent its Finished, so the refusal
    // shows at the latest as a failed read or write of the relayed bytes.
    let _ = dialer.carry(accepted, "127.0.0.1:9".parse().unwrap(), &counters).await;
    for _ in 0..100 {
        if gw.limits.counters.refused.load(Ordering::Relaxed) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(gw.limits.counters.refused.load(Ordering::Relaxed), 1);
    assert_eq!(gw.limits.counters.connections.load(Ordering::Relaxed), 0);
    assert!(gw.log.lock().unwrap().iter().any(|l| l.contains("refused")), "{:?}", gw.log.lock().unwrap());
}

#[tokio::test]
async fn a_connection_to_a_plain_tcp_listener_is_seen_to_fall_back_and_one_to_mptcp_is_not() {
    let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let to_plain = plain.local_addr().unwrap();
    let stream = mptcp_socket(&to_plain).unwrap().connect(to_plain).await.unwrap();
    assert!(fell_back_to_tcp(&stream), "the SYN-ACK of a plain TCP listener carries no MP_CAPABLE");
    let mptcp = mptcp_listener("127.0.0.1:0".parse().unwrap()).unwrap();
    let to_mptcp = mptcp.local_addr().unwrap();
    let stream = mptcp_socket(&to_mptcp).unwrap().connect(to_mptcp).await.unwrap();
    assert!(!fell_back_to_tcp(&stream));
    // A plain TCP socket answers as one that fell back.
    let plain_stream = TcpStream::connect(to_plain).await.unwrap();
    assert!(fell_back_to_tcp(&plain_stream));
}

#[tokio::test]
async fn dials_that_fall_back_are_counted_and_told_after_three_in_a_row() {
    // A "gateway" whose lane port is plain TCP, as a middlebox stripping MP_CAPABLE makes it look: each dial
    // falls back; the TLS handshake then fails here (no TLS server), as it is the fallback that is tested.
    let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = plain.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = plain.accept().await {
            let _ = conn.shutdown().await;
        }
    });
    let site = Identity::from_seed(&generate_seed(), None).unwrap();
    let told = Arc::new(Mutex::new(0));
    let notice = told.clone();
    let dialer = LaneDialer::new(CurrentIdentity::new(&site).unwrap(), site.public_key, None, addr)
        .unwrap()
        .on_fallback(Box::new(move || *notice.lock().unwrap() += 1));
    let counters = LaneCounters::default();
    for dial in 1..=4 {
        let (_host, accepted) = lan_pair().await;
        assert!(dialer.carry(accepted, "127.0.0.1:9".parse().unwrap(), &counters).await.is_err());
        assert_eq!(counters.fallback.load(Ordering::Relaxed), dial);
        assert_eq!(*told.lock().unwrap(), u64::from(dial >= u64::from(FALLBACKS_IN_A_ROW)), "after dial {dial}");
    }
    assert_eq!(counters.failed.load(Ordering::Relaxed), 4);
}

/// Dials one lane connection from a LAN host on 127.0.0.1 to `destination` through `gw` and waits for the
/// gateway to have refused it; returns the gateway's log.
async fn refused_by(gw: &Gateway, site: &Identity, destination: &str) -> Vec<String> {
    let dialer = LaneDialer::new(CurrentIdentity::new(site).unwrap(), gw.identity.public_key, None, gw.addr).unwrap();
    let (_host, accepted) = lan_pair().await;
    let _ = dialer.carry(accepted, destination.parse().unwrap(), &LaneCounters::default()).await;
    for _ in 0..100 {
        if gw.limits.counters.refused.load(Ordering::Relaxed) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(gw.limits.counters.refused.load(Ordering::Relaxed), 1);
    assert_eq!(gw.limits.counters.connections.load(Ordering::Relaxed), 0, "nothing connected to");
    gw.log.lock().unwrap().clone()
}

#[tokio::test]
async fn refuses_a_source_address_the_peer_does_not_speak_for() {
    let site = Identity::from_seed(&generate_seed(), None).unwrap();
    let gw =
        gateway_judging(&[site.public_key], LanePolicy::default(), |_, ip| ip == IpAddr::from([10, 9, 9, 9])).await;
    let log = refused_by(&gw, &site, "127.0.0.1:9").await;
    assert!(log.iter().any(|l| l.contains("source 127.0.0.1 is not among the peer's allowed_ips")), "{log:?}");
}

#[tokio::test]
async fn an_acl_rule_refuses_a_connection_before_anything_is_connected_to() {
    use quicether_proto::lane_policy::{AclRule, TCP};
    let site = Identity::from_seed(&generate_seed(), None).unwrap();
    let deny = AclRule {
        allow: false,
        sources: vec!["127.0.0.0/8".parse().unwrap()],
        destinations: vec![],
        protocol: Some(TCP),
        port: Some(22),
    };
    let acl = LanePolicy { rules: vec![deny], ..Default::default() };
    let gw = gateway_judging(&[site.public_key], acl, |_, _| true).await;
    let log = refused_by(&gw, &site, "127.0.0.1:22").await;
    assert!(log.iter().any(|l| l.contains("127.0.0.1 to 127.0.0.1:22: denied by ACL rule 1")), "{log:?}");
}

#[tokio::test]
async fn the_lane_listener_is_mptcp() {
    let listener = mptcp_listener("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut protocol: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into a live c_int with its size.
    let rc = unsafe {
        libc::getsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PROTOCOL,
            (&mut protocol as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0);
    assert_eq!(protocol, IPPROTO_MPTCP);
}

#[test]
fn the_cap_closes_new_connections_and_says_so_once_per_thousand() {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let limits = LaneLimits::new(1, Arc::new(move |line| sink.lock().unwrap().push(line)));
    let first = limits.admit("site");
    assert!(first.is_some());
    for _ in 0..1001 {
        assert!(limits.admit("site").is_none());
    }
    assert_eq!(limits.counters.at_cap.load(Ordering::Relaxed), 1001);
    assert_eq!(lines.lock().unwrap().len(), 2);
    drop(first);
    assert!(limits.admit("site").is_some(), "a closed connection frees its slot");
}

#[test]
fn exit_destinations_exclude_the_gateway_itself() {
    assert!(exit_destination(&"10.0.60.10:80".parse().unwrap()));
    assert!(!exit_destination(&"127.0.0.1:22".parse().unwrap()));
    assert!(!exit_destination(&"[::1]:22".parse().unwrap()));
    assert!(!exit_destination(&"0.0.0.0:80".parse().unwrap()));
    assert!(!exit_destination(&"224.0.0.1:80".parse().unwrap()));
}

/// The cipher suite a lane handshake agrees on between this process's client (its preference, `tls::cipher`)
/// and a server whose provider prefers `server`.
async fn negotiated_with(server: quicether_proto::cipher::Cipher) -> rustls::CipherSuite {
    let site = Identity::from_seed(&generate_seed(), None).unwrap();
    let gw = Identity::from_seed(&generate_seed(), None).unwrap();
    let keys = Arc::new(RwLock::new([site.public_key].into_iter().collect::<HashSet<_>>()));
    let provider = tls::provider_preferring(server);
    let verifier = Arc::new(KnownClientKeys::new(keys, Arc::new(RwLock::new(None)), provider, Box::new(|_, _| {})));
    let acceptor = acceptor(verifier, CurrentIdentity::new(&gw).unwrap()).unwrap();
    let client = tls::client_tls(CurrentIdentity::new(&site).unwrap(), gw.public_key, None, ALPN).unwrap();
    let (near, far) = tokio::io::duplex(64 * 1024);
    let accepted = tokio::spawn(async move { acceptor.accept(far).await.map(|_| ()) });
    let name = rustls::pki_types::ServerName::try_from(tls::SERVER_NAME).unwrap();
    let stream = TlsConnector::from(Arc::new(client)).connect(name, near).await.unwrap();
    accepted.await.unwrap().unwrap();
    stream.get_ref().1.negotiated_cipher_suite().unwrap().suite()
}

#[tokio::test]
async fn a_server_without_aes_instructions_gets_chacha20_and_otherwise_the_clients_preference_wins() {
    use quicether_proto::cipher::Cipher;
    use rustls::CipherSuite::{TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256};
    assert_eq!(negotiated_with(Cipher::ChaCha20Poly1305).await, TLS13_CHACHA20_POLY1305_SHA256);
    let clients = match tls::cipher().0 {
        Cipher::AesGcm => TLS13_AES_256_GCM_SHA384,
        Cipher::ChaCha20Poly1305 => TLS13_CHACHA20_POLY1305_SHA256,
    };
    assert_eq!(negotiated_with(Cipher::AesGcm).await, clients);
}

#[test]
fn a_chacha20_provider_still_offers_what_quic_initial_packets_need() {
    let provider = tls::provider_preferring(quicether_proto::cipher::Cipher::ChaCha20Poly1305);
    let suites: Vec<_> = provider.cipher_suites.iter().map(|s| s.suite()).collect();
    assert_eq!(suites[0], rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
    assert!(suites.contains(&rustls::CipherSuite::TLS13_AES_128_GCM_SHA256));
}
