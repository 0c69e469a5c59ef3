//! Hole punching between members (format, schedule and limits in `quicether_proto::punch`): the
//! initiator loop asks a relay for each member it should reach but has no path to; a relay forwards the
//! request to its target only if both are members; the target and the initiator then dial each other
//! from every WAN socket at the agreed moment, so each socket's NAT mapping is open when the other's
//! packets come. A path that comes up this way (dialed by a punch, or accepted from a peer we punched
//! towards just now) is of kind `Punched`.
//!
//! Messages travel on their own QUIC unidirectional stream of an authenticated path; `member_news`
//! reads the streams and hands punch messages here.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use quicether_proto::path_rank::PathKind;
use quicether_proto::punch::{
    add_candidate, candidates_digest, decode, encode, offer_delay_ms, request_delay_ms, socket_candidates, Kind,
    Message, PunchBook, PunchStats, Schedule,
};

use quicether_proto::birthday::{open_targets, token, TOKEN_LEN};
use quicether_proto::nat::{classify, Observation};
use quicether_proto::symmetric::{approach, predicted_ports, Approach, NatClass};

use crate::connect::{send_hello, start_path, HELLO_TIMEOUT};
use crate::peer::{Path, PathRoute, Peer, Shared};
use crate::tls;

/// How often the initiator loop looks for members to punch towards.
const INITIATOR_TICK: Duration = Duration::from_secs(1);

/// A local socket punches are sent from: a WAN's (or the listening one on a node without WANs).
#[derive(Clone)]
pub struct PunchSocket {
    pub wan: String,
    pub endpoint: quinn::Endpoint,
    pub backup: bool,
    /// The WAN's address (None: the wildcard listening socket).
    pub local: Option<IpAddr>,
    /// How the WAN's socket is bound (`sockets::bind_wan`): a birthday probe's extra sockets are bound so too.
    pub device: Option<String>,
    pub mark: u32,
    /// The endpoint's own UDP socket (a duplicate of its descriptor), for a birthday probe's packets,
    /// which must leave from the address whose NAT mapping the other side opened towards.
    pub raw: Option<Arc<std::net::UdpSocket>>,
}

/// What a dial needs to show and check in its handshake.
pub struct ClientKit {
    pub identity: Arc<tls::CurrentIdentity>,
    pub transport: Arc<quinn::TransportConfig>,
}

#[derive(Default)]
pub struct PunchDesk {
    pub sockets: RwLock<Vec<PunchSocket>>,
    pub client: RwLock<Option<ClientKit>>,
    pub book: Mutex<PunchBook>,
    pub stats: Mutex<PunchStats>,
    /// Each member's NAT class as its last punch message told, when, and where the relay of that message
    /// saw it (its public address: a birthday probe's aim). Bounded like the book.
    pub classes: Mutex<HashMap<[u8; 32], ToldClass>>,
    /// Members a birthday probe runs with now (`birthday.rs`: one at a time per member).
    pub probing: Mutex<HashSet<[u8; 32]>>,
}

impl PunchDesk {
    fn refused(&self) {
        self.stats.lock().unwrap().refused += 1;
    }

    /// Whether a path from `key` accepted now is the doing of a punch.
    pub fn punched_recently(&self, key: &[u8; 32], now_us: u64) -> bool {
        self.book.lock().unwrap().punched_recently(key, now_us)
    }
}

/// What a member's last punch message told of its NAT.
#[derive(Clone, Copy)]
pub struct ToldClass {
    pub class: NatClass,
    pub at_us: u64,
    /// Where the relay of the message saw the member (the first candidate of an offer).
    pub seen_at: Option<SocketAddr>,
}

/// A member of our network: its certificate was verified when learned (member news, or the handshake
/// it was admitted by), and not revoked since.
pub(crate) fn is_member(shared: &Shared, key: &[u8; 32]) -> bool {
    shared.news.lock().unwrap().certificate(key).is_some() || shared.peer(key).is_some_and(|p| p.member.is_some())
}

fn first_up_path(peer: &Peer) -> Option<Arc<Path>> {
    peer.paths.read().unwrap().iter().find(|p| p.up.load(Ordering::Relaxed)).cloned()
}

/// The routes of `peer`'s paths that are not through a relay: while only relayed ones run, punching goes
/// on, so the pair moves to a direct path when the NATs let it; and while one of our WANs has none, that
/// WAN punches, so a multi-WAN site's bond is direct on all of them.
pub(crate) fn direct_routes(peer: &Peer) -> Vec<(String, SocketAddr)> {
    let paths = peer.paths.read().unwrap();
    let direct = paths.iter().filter(|p| !matches!(p.route.kind, PathKind::Relayed { .. }));
    direct.map(|p| (p.route.local_wan.clone(), p.route.remote)).collect()
}

/// Whether each of our punch sockets has a direct path to `peer` (nothing left to punch from our side).
fn every_socket_direct(sockets: &[PunchSocket], peer: &Peer) -> bool {
    let routes = direct_routes(peer);
    sockets.iter().all(|s| routes.iter().any(|(wan, _)| *wan == s.wan))
}

/// Which side of a punch we are: the initiator dials from the sockets that have no direct path to the
/// peer; the target from every socket, to each candidate it has no path to yet.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Initiator,
    Target,
}

/// Takes out of `schedule` what the direct paths to `key` that run now already cover (for `role`).
fn prune(shared: &Shared, key: &[u8; 32], sockets: &[PunchSocket], schedule: &mut Schedule, role: Role) {
    let Some(peer) = shared.peer(key) else { return };
    let routes = direct_routes(&peer);
    for (index, socket) in sockets.iter().enumerate() {
        for (_, remote) in routes.iter().filter(|(wan, _)| *wan == socket.wan) {
            match role {
                Role::Initiator => schedule.handle_socket_connected(index),
                Role::Target => schedule.handle_pair_connected(index, *remote),
            }
        }
    }
}

/// The schedule of a punch towards `key` at `candidates` from all our sockets, starting at `start_us`,
/// less what runs already.
fn schedule(
    shared: &Shared,
    key: &[u8; 32],
    candidates: &[SocketAddr],
    start_us: u64,
    role: Role,
) -> (Vec<PunchSocket>, Schedule) {
    let sockets = shared.punch.sockets.read().unwrap().clone();
    let v4: Vec<bool> = sockets.iter().map(|s| s.endpoint.local_addr().map(|a| a.is_ipv4()).unwrap_or(true)).collect();
    let mut schedule = Schedule::new(&v4, candidates, start_us);
    prune(shared, key, &sockets, &mut schedule, role);
    (sockets, schedule)
}

async fn send(path: &Path, msg: &Message) {
    let Ok(mut stream) = path.conn.open_uni().await else { return };
    if stream.write_all(&encode(msg)).await.is_ok() {
        let _ = stream.finish();
    }
}

/// Our candidates, per socket: its port mapping on the home router if it has one (`portmap.rs`), then
/// (`punch::socket_candidates`) the addresses our peers see it at (its NAT
/// mappings, from their path hello answers, oldest path first), the public ones with its own port (where
/// a new flow's mapping most likely is), its address where it is bound to one; then any other address
/// peers see us at. A socket behind a sequential symmetric NAT offers its predicted ports first
/// (`symmetric::predicted_ports`, after the newest mapping a peer saw). Also our NAT class: the hardest
/// of our sockets' (`nat::classify` of what the peers we dialed saw, `symmetric::NatClass::of`), and the
/// WANs whose NAT is random (where a birthday probe opens its extra sockets).
fn own_candidates(shared: &Shared) -> (Vec<SocketAddr>, NatClass, Vec<String>) {
    // (path id, our WAN, the peer's address, where it saw us, we dialed it)
    let mut observed: Vec<(u64, String, SocketAddr, SocketAddr, bool)> = Vec::new();
    for peer in shared.table.read().unwrap().peers() {
        for path in peer.paths.read().unwrap().iter() {
            if let Some(public) = path.public {
                let route = &path.route;
                observed.push((path.id, route.local_wan.clone(), route.remote, public, route.dialed));
            }
        }
    }
    observed.sort_by_key(|o| o.0);
    let mut candidates = Vec::new();
    let now = shared.now_us();
    let mut class = NatClass::Open;
    let mut random_wans = Vec::new();
    for socket in shared.punch.sockets.read().unwrap().iter() {
        let Ok(bound) = socket.endpoint.local_addr() else { continue };
        let of_socket = || observed.iter().filter(|o| o.1 == socket.wan);
        let seen: Vec<SocketAddr> = of_socket().map(|o| o.3).collect();
        let dialed: Vec<Observation> =
            of_socket().filter(|o| o.4).map(|o| Observation { remote: o.2, observed: o.3 }).collect();
        let local = socket.local.map_or(bound, |ip| SocketAddr::new(ip, bound.port()));
        // A port mapping on the home router ranks first: it lets peers in even through a symmetric NAT,
        // so a mapped socket counts as open whatever its NAT allocates for the flows it starts.
        let mapped = shared.portmap.candidate(&socket.wan, now);
        let socket_class = match mapped {
            Some(mapped) => {
                add_candidate(&mut candidates, mapped);
                NatClass::Open
            }
            None => NatClass::of(classify(local, &dialed)),
        };
        class = class.harder(socket_class);
        if socket_class == NatClass::Random {
            random_wans.push(socket.wan.clone());
        }
        if let (NatClass::Sequential { step }, Some(newest)) = (socket_class, dialed.last()) {
            for port in predicted_ports(newest.observed.port(), step) {
                add_candidate(&mut candidates, SocketAddr::new(newest.observed.ip(), port));
            }
        }
        let host = socket.local.map(|ip| SocketAddr::new(ip, bound.port()));
        for c in socket_candidates(host, bound.port(), &seen) {
            add_candidate(&mut candidates, c);
        }
    }
    for o in observed {
        add_candidate(&mut candidates, o.3);
    }
    (candidates, class, random_wans)
}

/// The approach of a punch with `peer` (`symmetric::approach`), from our class and the one it last told.
fn approach_with(shared: &Shared, peer: &[u8; 32], ours: NatClass) -> Approach {
    let theirs = shared.punch.classes.lock().unwrap().get(peer).map(|told| told.class);
    approach(ours, theirs)
}

/// Our side of a birthday probe, if we can run one.
enum BirthdaySide {
    /// Our NAT is random: extra sockets like this one's listen for the probes.
    Listen(PunchSocket),
    /// Our NAT is open: this socket probes the random side's public address.
    Probe(PunchSocket, Arc<std::net::UdpSocket>, IpAddr),
}

/// The side we take in a birthday probe: as the random side, a socket of a random WAN (a primary one
/// first); as the open side, one of the family of the random side's public address `their_ip` (None
/// without it: nothing to aim at) whose packets can be sent raw.
fn birthday_side(
    shared: &Shared,
    ours: NatClass,
    random_wans: &[String],
    their_ip: Option<IpAddr>,
) -> Option<BirthdaySide> {
    let sockets = shared.punch.sockets.read().unwrap();
    let primary_first = |a: &&PunchSocket, b: &&PunchSocket| a.backup.cmp(&b.backup);
    if ours == NatClass::Random {
        let socket = sockets.iter().filter(|s| random_wans.contains(&s.wan)).min_by(primary_first)?;
        return Some(BirthdaySide::Listen(socket.clone()));
    }
    let ip = their_ip?;
    let fits = |s: &&PunchSocket| s.raw.is_some() && s.endpoint.local_addr().is_ok_and(|a| a.is_ipv4() == ip.is_ipv4());
    let socket = sockets.iter().filter(fits).min_by(primary_first)?;
    Some(BirthdaySide::Probe(socket.clone(), socket.raw.clone()?, ip))
}

/// Starts our side of a birthday probe with `peer` at `start_us`, with `token` (`birthday::token` of the
/// request's nonce and both keys); `open_side` are the other side's addresses, best first (for the random
/// side's opening packets).
fn start_birthday(
    shared: &Arc<Shared>,
    peer: [u8; 32],
    side: BirthdaySide,
    token: [u8; TOKEN_LEN],
    open_side: &[SocketAddr],
    start_us: u64,
) {
    shared.punch.stats.lock().unwrap().attempts += 1;
    if let Some(p) = shared.peer(&peer) {
        p.punch_attempts.fetch_add(1, Ordering::Relaxed);
    }
    let shared = shared.clone();
    match side {
        BirthdaySide::Listen(socket) => {
            let v4 = socket.endpoint.local_addr().map(|a| a.is_ipv4()).unwrap_or(true);
            let targets = open_targets(open_side, v4);
            tokio::spawn(crate::birthday::listen(shared, peer, socket, targets, token, start_us));
        }
        BirthdaySide::Probe(socket, raw, ip) => {
            tokio::spawn(crate::birthday::probe(shared, peer, socket, raw, ip, token, start_us));
        }
    }
}

/// Runs for the life of the node: every member in the table that one of our WAN sockets has no direct path
/// to (none at all, only relayed ones, or direct ones from our other WANs only) and that we have endpoints
/// of or a relayed path to is punched towards through a member we are connected to: every
/// `punch::RETRY_US` per target, and at once when our candidates or its endpoints change.
pub async fn initiator(shared: Arc<Shared>) {
    if crate::debug::punch_disabled() {
        return;
    }
    loop {
        tokio::time::sleep(INITIATOR_TICK).await;
        let peers: Vec<Arc<Peer>> = shared.table.read().unwrap().peers().cloned().collect();
        let relays: Vec<(Arc<Peer>, Arc<Path>)> = peers
            .iter()
            .filter(|p| is_member(&shared, &p.key))
            .filter_map(|p| first_up_path(p).map(|path| (p.clone(), path)))
            .filter(|(_, path)| !matches!(path.route.kind, PathKind::Relayed { .. }))
            .collect();
        let sockets = shared.punch.sockets.read().unwrap().clone();
        for target in &peers {
            if every_socket_direct(&sockets, target) || !is_member(&shared, &target.key) {
                continue;
            }
            // A member we reach through a relay only is punched towards even when we know no endpoint of
            // it (it dialed us through the relay, so we never looked it up): its side dials our
            // candidates, which is what a NAT of ours that has become punchable needs.
            let mut endpoints = target.endpoints.read().unwrap().clone();
            // Where our direct paths from other WANs reach it: a member that dialed us first (we never
            // looked it up) is there, through its NAT's mapping, which the punch of our other WANs needs.
            for (_, remote) in direct_routes(target) {
                add_candidate(&mut endpoints, remote);
            }
            // With no endpoint and no path, only a member the daemon asked us to reach (told of by member
            // news): the request carries our candidates, which its side dials, and it punches towards us too.
            if endpoints.is_empty() && target.paths.read().unwrap().is_empty() && !target.member_only {
                continue;
            }
            // The relay with the lowest RTT: the offer reaches the target soonest.
            let Some((_, relay_path)) =
                relays.iter().filter(|(p, _)| p.key != target.key).min_by_key(|(_, path)| path.conn.rtt())
            else {
                continue;
            };
            let now = shared.now_us();
            let (candidates, class, random_wans) = own_candidates(&shared);
            let digest = candidates_digest(&candidates, &endpoints, class);
            if !shared.punch.book.lock().unwrap().initiate(&target.key, digest, now) {
                continue;
            }
            let approach = approach_with(&shared, &target.key, class);
            let delay_ms = request_delay_ms(relay_path.conn.rtt().as_micros() as u64);
            let start_us = now + delay_ms as u64 * 1000;
            let (sockets, dials) = schedule(&shared, &target.key, &endpoints, start_us, Role::Initiator);
            // A birthday probe: the target takes part only if the request carries its nonce.
            let seen_at = shared.punch.classes.lock().unwrap().get(&target.key).and_then(|told| told.seen_at);
            let birthday = match approach {
                Approach::Birthday if !crate::birthday::running(&shared, &target.key) => {
                    birthday_side(&shared, class, &random_wans, seen_at.map(|a| a.ip()))
                        .map(|side| (side, crate::birthday::random_nonce()))
                }
                _ => None,
            };
            let request = Message {
                kind: Kind::Request,
                key: target.key,
                delay_ms,
                candidates,
                class,
                birthday: birthday.as_ref().map(|(_, nonce)| *nonce),
            };
            let relay_path = relay_path.clone();
            tokio::spawn(async move { send(&relay_path, &request).await });
            // The request goes in any case: it tells the target our class, so that it does not probe either.
            match approach {
                // Both NATs random: nothing to aim at, the relay carries the pair.
                Approach::RelayOnly => {
                    shared.punch.stats.lock().unwrap().skipped += 1;
                    continue;
                }
                // Our NAT is random: we dial once the target has told its class.
                Approach::Wait => continue,
                Approach::Dial | Approach::Birthday => {}
            }
            if let Some((side, nonce)) = birthday {
                // The other side's addresses: where the relay of its last message saw it first.
                let open_side: Vec<SocketAddr> = seen_at.into_iter().chain(endpoints.iter().copied()).collect();
                let token = token(&nonce, &shared.local_key, &target.key);
                start_birthday(&shared, target.key, side, token, &open_side, start_us);
                continue;
            }
            // Without a birthday probe (an approach other than it, or nothing to probe with) its pair
            // dials the candidates.
            shared.punch.stats.lock().unwrap().attempts += 1;
            target.punch_attempts.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(run_schedule(shared.clone(), target.key, sockets, dials, Role::Initiator));
        }
    }
}

/// A punch message that came on `path` of `peer` (an authenticated node; still only a claim of it).
pub fn received(shared: &Arc<Shared>, peer: &Arc<Peer>, path: &Arc<Path>, data: &[u8]) {
    let Ok(msg) = decode(data) else {
        return shared.punch.refused();
    };
    match msg.kind {
        Kind::Request => forward(shared, peer, path, msg),
        Kind::Offer => answer(shared, msg),
    }
}

/// Relay side: passes a member's request on to the member it names, as an offer from the requester.
fn forward(shared: &Arc<Shared>, requester: &Arc<Peer>, path: &Arc<Path>, msg: Message) {
    let target_key = msg.key;
    let allowed = target_key != requester.key
        && target_key != shared.local_key
        && is_member(shared, &requester.key)
        && is_member(shared, &target_key);
    let target_path = shared.peer(&target_key).and_then(|p| first_up_path(&p));
    let (true, Some(target_path)) = (allowed, target_path) else {
        return shared.punch.refused();
    };
    if !shared.punch.book.lock().unwrap().forward(&requester.key, shared.now_us()) {
        return shared.punch.refused();
    }
    // Where we see the requester first: its mapping towards us is the likeliest one to be open.
    let mut candidates = Vec::new();
    add_candidate(&mut candidates, path.conn.remote_address());
    for c in msg.candidates {
        add_candidate(&mut candidates, c);
    }
    let delay_ms =
        offer_delay_ms(msg.delay_ms, path.conn.rtt().as_micros() as u64, target_path.conn.rtt().as_micros() as u64);
    let birthday = msg.birthday;
    let offer = Message { kind: Kind::Offer, key: requester.key, delay_ms, candidates, class: msg.class, birthday };
    shared.punch.stats.lock().unwrap().forwarded += 1;
    tokio::spawn(async move { send(&target_path, &offer).await });
}

/// Target side: dials the initiator's candidates from every socket at the agreed moment.
fn answer(shared: &Arc<Shared>, msg: Message) {
    let initiator = msg.key;
    if initiator == shared.local_key || !is_member(shared, &initiator) {
        return shared.punch.refused();
    }
    if crate::debug::punch_disabled() {
        return;
    }
    let now = shared.now_us();
    {
        let mut classes = shared.punch.classes.lock().unwrap();
        quicether_proto::bounded::make_room(&mut classes, quicether_proto::punch::MAX_TRACKED, |told| told.at_us);
        // The relay put where it sees the initiator first.
        let seen_at = msg.candidates.first().copied();
        classes.insert(initiator, ToldClass { class: msg.class, at_us: now, seen_at });
    }
    let (_, ours, random_wans) = own_candidates(shared);
    let approach = approach_with(shared, &initiator, ours);
    if approach == Approach::RelayOnly {
        shared.punch.stats.lock().unwrap().skipped += 1;
        return; // both NATs random: no probe, no dial (the initiator does not dial either)
    }
    let start_us = now + msg.delay_ms as u64 * 1000;
    if let (Approach::Birthday, Some(nonce)) = (approach, msg.birthday) {
        let their_ip = msg.candidates.first().map(|a| a.ip());
        if let Some(side) = birthday_side(shared, ours, &random_wans, their_ip) {
            if crate::birthday::running(shared, &initiator) {
                return; // the probe of an earlier offer is still under way
            }
            if !shared.punch.book.lock().unwrap().answer(&initiator, now) {
                return shared.punch.refused();
            }
            let token = token(&nonce, &initiator, &shared.local_key);
            return start_birthday(shared, initiator, side, token, &msg.candidates, start_us);
        }
    }
    let (sockets, dials) = schedule(shared, &initiator, &msg.candidates, start_us, Role::Target);
    if dials.next_at().is_none() {
        return; // paths to every candidate came up meanwhile (its own dials, or an earlier punch)
    }
    if !shared.punch.book.lock().unwrap().answer(&initiator, now) {
        return shared.punch.refused();
    }
    shared.punch.stats.lock().unwrap().attempts += 1;
    if let Some(peer) = shared.peer(&initiator) {
        peer.punch_attempts.fetch_add(1, Ordering::Relaxed);
    }
    tokio::spawn(run_schedule(shared.clone(), initiator, sockets, dials, Role::Target));
}

/// Dials `key` from `sockets` in the rounds of `schedule`, until the direct paths that come up cover it.
async fn run_schedule(
    shared: Arc<Shared>,
    key: [u8; 32],
    sockets: Vec<PunchSocket>,
    mut schedule: Schedule,
    role: Role,
) {
    while let Some(at) = schedule.next_at() {
        tokio::time::sleep(Duration::from_micros(at.saturating_sub(shared.now_us()))).await;
        prune(&shared, &key, &sockets, &mut schedule, role);
        for attempt in schedule.poll(shared.now_us()) {
            let socket = sockets[attempt.socket].clone();
            tokio::spawn(punch_dial(shared.clone(), socket, attempt.candidate, key));
        }
    }
}

/// One dial of a punch: a normal handshake with the member's key pinned (and its certificate checked),
/// from the socket that owns the NAT mapping; the path it makes is of kind `Punched`.
pub(crate) async fn punch_dial(shared: Arc<Shared>, socket: PunchSocket, addr: SocketAddr, key: [u8; 32]) {
    let config = {
        let kit = shared.punch.client.read().unwrap();
        let Some(kit) = kit.as_ref() else { return };
        let Ok(quic) = tls::quic_client_config(kit.identity.clone(), key, Some(shared.trust.clone())) else {
            return;
        };
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        config.transport_config(kit.transport.clone());
        config
    };
    let Ok(connecting) = socket.endpoint.connect_with(config, addr, tls::SERVER_NAME) else { return };
    let Ok(conn) = connecting.await else { return };
    let Ok(Ok(answer)) = tokio::time::timeout(HELLO_TIMEOUT, send_hello(&conn, &socket.wan, socket.backup)).await
    else {
        return;
    };
    // A member we had not added (it punched towards us first) becomes a peer by its certificate.
    let peer = match shared.peer(&key) {
        Some(peer) => peer,
        None => match shared.peer_of_accepted(&conn) {
            Ok(peer) => peer,
            Err(_) => return conn.close(1u32.into(), b"unknown peer"),
        },
    };
    let route = PathRoute {
        kind: PathKind::Punched,
        local_wan: socket.wan.clone(),
        peer_wan: answer.peer_wan,
        remote: addr,
        dialed: true,
    };
    // The path lives on its own tasks (counted in `start_path`); a duplicate of a path already up closes.
    start_path(&shared, &peer, conn, route, socket.backup, socket.local, answer.observed);
}
