//! Relays run by the user (format, limits and dial decision in `quicether_proto::relay`).
//!
//! Relay side: a RELAY_TO datagram from member A on A's path names member B; if relaying is on here, both
//! are members of our network, B has a path up, and A is within its rate and B's queue within its bound,
//! the datagram goes on to B as RELAY_FROM naming A. Nothing else is read: the packet is the QUIC
//! ciphertext of A's and B's own connection.
//!
//! Member side: per relay and per WAN we reach it by, one quinn endpoint over a `VirtualSocket` whose
//! datagrams travel as RELAY datagrams on that WAN's path to the relay, and only on that one: a relayed
//! path per WAN, which goes down with its WAN like a direct one. Each remote of an endpoint (a member we
//! dialed, or one member's path to the relay that dialed us) gets a made-up address (quinn needs one per
//! remote); the socket maps it back to the member's key and path handle. The connections on it are
//! ordinary paths (handshake with key pinning and membership check, path hello, bond) of kind
//! `Relayed { via }`, dialed by `initiator` from each WAN when a member we want has had no path for a
//! while, or only direct ones (then the relayed paths are the fallback: they carry nothing while a direct
//! one is up, and take the traffic as soon as the direct ones are down for the health check).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quicether_proto::nat::Mapping;
use quicether_proto::path_rank::PathKind;
use quicether_proto::relay::{self as wire, DialPlan, Direction, Limiter, PathsToMember, RelayStats, Verdict};
use quinn::udp::{RecvMeta, Transmit};
use tokio::sync::mpsc;

use crate::connect::{accept_loop, net_text, send_hello, start_path, HELLO_TIMEOUT};
use crate::node::{Congestion, RELAY_OVERHEAD};
use crate::peer::{Path, PathRoute, Peer, Shared};
use crate::punch::is_member;
use crate::tls;

/// How often the initiator looks for members to reach through a relay: a small part of `DIAL_AFTER_US`.
const INITIATOR_TICK: Duration = Duration::from_millis(250);
/// Packets waiting for quinn to read them from one relay's virtual socket (bounded; more are dropped).
const INBOUND_QUEUE: usize = 1024;
/// Relays a member keeps offers from (bounded memory).
const MAX_RELAYS: usize = 64;
/// The made-up addresses of members reached through a relay: fd51:7265:6c61:7900::/64 (ULA, "relay").
const VIRTUAL_PREFIX: [u16; 4] = [0xfd51, 0x7265, 0x6c61, 0x7900];

/// What a relayed endpoint needs: the server side (key pinning, membership) of every other socket, and a
/// transport whose packets fit a RELAY datagram on a path to the relay.
pub struct RelayKit {
    pub server_config: quinn::ServerConfig,
    pub transport: Arc<quinn::TransportConfig>,
}

/// One relay as seen from a member over one of its WANs: the endpoint over its virtual socket.
struct RelayClient {
    endpoint: quinn::Endpoint,
    socket: Arc<VirtualSocket>,
}

/// A relay's or a member's key, and one of our WANs.
type KeyAndWan = ([u8; 32], String);

#[derive(Default)]
pub struct RelayDesk {
    /// This node relays for the members of its network.
    pub enabled: AtomicBool,
    /// Members that offered to relay for us.
    offers: Mutex<HashSet<[u8; 32]>>,
    /// Per member: the relays its DHT record names (it is connected to them); kept for the members in the
    /// peer table only, at most `record::MAX_RELAYS` each.
    named: Mutex<HashMap<[u8; 32], Vec<[u8; 32]>>>,
    limiter: Mutex<Limiter>,
    /// Per member and WAN of ours.
    plan: Mutex<DialPlan<KeyAndWan>>,
    pub stats: Mutex<RelayStats>,
    /// Per relay and WAN of ours.
    clients: Mutex<HashMap<KeyAndWan, Arc<RelayClient>>>,
    pub kit: RwLock<Option<RelayKit>>,
}

impl RelayDesk {
    /// Each member's rate through us (bytes/s).
    pub fn rate(&self) -> u64 {
        self.limiter.lock().unwrap().rate()
    }

    fn count(&self, f: impl FnOnce(&mut RelayStats)) {
        f(&mut self.stats.lock().unwrap());
    }
}

/// The name of the relayed "WAN" through relay `via` over our WAN `wan`: `relay-<first 4 bytes>.<wan>`. Both
/// ends of a relayed path name theirs so, so two dials crossing through the same relay between the same
/// two WANs are recognised as duplicates by `Shared::add_path`. A WAN name too long for a label is cut and
/// ends in a hash of the whole (two long names alike at the start stay two).
fn label(via: &[u8; 32], wan: &str) -> String {
    let relay = format!("relay-{}", via[..4].iter().map(|b| format!("{b:02x}")).collect::<String>());
    let room = quicether_proto::peer_text::MAX_LABEL_LEN - relay.len() - 1;
    if wan.len() <= room {
        return format!("{relay}.{wan}");
    }
    // FNV-1a: stable across versions and machines (both ends and every restart must agree).
    let hash = wan.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ b as u32).wrapping_mul(0x0100_0193));
    let kept: String = wan.chars().take(room - 9).collect();
    format!("{relay}.{kept}_{hash:08x}")
}

/// The WAN part of a relayed path's label (what `label` made of `wan`, through whichever relay).
fn wan_part(label: &str) -> &str {
    label.split_once('.').map_or("", |(_, wan)| wan)
}

fn relayed(path: &Path) -> bool {
    matches!(path.route.kind, PathKind::Relayed { .. })
}

/// A path a relay's datagrams can take: up and not itself relayed (relays do not chain).
fn carries_relay(path: &Path) -> bool {
    path.up.load(Ordering::Relaxed) && !relayed(path)
}

/// Our best path to member `key` (lowest RTT) that is up and not itself relayed.
fn path_to(shared: &Shared, key: &[u8; 32]) -> Option<Arc<Path>> {
    let peer = shared.peer(key)?;
    let paths = peer.paths.read().unwrap();
    let usable = paths.iter().filter(|p| carries_relay(p));
    usable.min_by_key(|p| p.srtt_us.load(Ordering::Relaxed)).cloned()
}

/// Our path to relay `via` over our WAN `wan`, if it is up.
fn path_on(shared: &Shared, via: &[u8; 32], wan: &str) -> Option<Arc<Path>> {
    let peer = shared.peer(via)?;
    let paths = peer.paths.read().unwrap();
    paths.iter().find(|p| carries_relay(p) && p.route.local_wan == wan).cloned()
}

/// Relay side: member `key`'s path that `handle` names, up and not relayed. For `ANY_PATH` (a dial from
/// the source's path `source_handle`), one of its non-backup paths (backup ones if it has no other) chosen
/// by that handle: dials from the source's different WANs spread over the member's WANs, and a dial's
/// Initial and its retransmissions reach the same endpoint of the member (not the fastest path, which
/// changes with every RTT sample).
fn path_by_handle(shared: &Shared, key: &[u8; 32], handle: u32, source_handle: u32) -> Option<Arc<Path>> {
    let peer = shared.peer(key)?;
    let paths = peer.paths.read().unwrap();
    let usable = || paths.iter().filter(|p| carries_relay(p));
    if handle != wire::ANY_PATH {
        return usable().find(|p| wire::handle_of(p.id) == handle).cloned();
    }
    let primaries: Vec<&Arc<Path>> = usable().filter(|p| !p.backup).collect();
    let mut candidates = if primaries.is_empty() { usable().collect() } else { primaries };
    candidates.sort_by_key(|p| p.id);
    candidates.get(source_handle as usize % candidates.len().max(1)).map(|p| (*p).clone())
}

/// A RELAY datagram that came on `path` of `peer`. Call from the path reader (the datagram is no bond frame).
pub fn received(shared: &Arc<Shared>, peer: &Arc<Peer>, path: &Path, datagram: Bytes) {
    let desk = &shared.relay;
    let Some((header, packet)) = wire::decode(&datagram) else {
        return desk.count(|s| s.dropped_malformed += 1);
    };
    let key = header.key;
    match header.direction {
        // A relayed path is never a way to a relay: no chains (and no loops) of relays.
        Direction::To if relayed(path) => desk.count(|s| s.dropped_chained += 1),
        Direction::To => forward(shared, peer, path, &header, &datagram),
        Direction::From => {
            // From a relay (a member that is not on a relayed path to us), about a member we may admit.
            let from_relay = is_member(shared, &peer.key) && !relayed(path);
            if !from_relay || key == shared.local_key || !(is_member(shared, &key) || shared.peer(&key).is_some()) {
                return desk.count(|s| s.received_dropped += 1);
            }
            // The relay sends by the path of ours that the sender named (or, for a dial, its choice): the
            // endpoint of the WAN it came over is the one its connection runs on.
            let Some(client) = client(shared, &peer.key, &path.route.local_wan) else {
                return desk.count(|s| s.received_dropped += 1);
            };
            // The packet is the datagram's tail: handed on without a copy.
            let packet = datagram.slice(datagram.len() - packet.len()..);
            let delivered = client.socket.deliver(&key, header.dialed, header.handle, packet);
            desk.count(|s| if delivered { s.received_packets += 1 } else { s.received_dropped += 1 });
        }
    }
}

/// Relay side: passes a member's RELAY_TO datagram, which came on its path `from`, on to the member it
/// names by the path it names.
fn forward(shared: &Shared, source: &Peer, from: &Path, header: &wire::Header, datagram: &[u8]) {
    let (dest, len) = (header.key, datagram.len());
    let desk = &shared.relay;
    if !desk.enabled.load(Ordering::Relaxed) {
        return desk.count(|s| s.dropped_disabled += 1);
    }
    let members =
        dest != source.key && dest != shared.local_key && is_member(shared, &source.key) && is_member(shared, &dest);
    if !members {
        return desk.count(|s| s.dropped_not_member += 1);
    }
    let from_handle = wire::handle_of(from.id);
    let Some(out) = path_by_handle(shared, &dest, header.handle, from_handle) else {
        return desk.count(|s| s.dropped_no_route += 1);
    };
    let verdict =
        desk.limiter.lock().unwrap().handle_packet(&source.key, len, out.view().queued_bytes, shared.now_us());
    match verdict {
        Verdict::DropRate => return desk.count(|s| s.dropped_rate += 1),
        Verdict::DropQueue => return desk.count(|s| s.dropped_queue += 1),
        Verdict::Forward => {}
    }
    let mut passed_on = BytesMut::from(datagram);
    wire::turn_around(&mut passed_on, &source.key, from_handle);
    if out.conn.send_datagram(passed_on.freeze()).is_ok() {
        desk.count(|s| {
            s.forwarded_packets += 1;
            s.forwarded_bytes += len as u64;
        });
    } else {
        desk.count(|s| s.dropped_no_route += 1);
    }
}

/// Makes the relayed endpoints' configuration (call once, as the node starts). Relayed connections,
/// accepted or dialed, send packets that fit a RELAY datagram: a server side with the direct paths'
/// transport would answer with packets the path to the relay cannot carry.
pub fn install(shared: &Shared, server_config: &quinn::ServerConfig, path_mtu: u16, v4: bool, congestion: Congestion) {
    let mut transport = crate::node::transport_config(path_mtu, v4, congestion);
    let payload = crate::node::udp_payload(path_mtu, v4).saturating_sub(RELAY_OVERHEAD).max(1200) as u16;
    transport.initial_mtu(payload);
    transport.min_mtu(payload);
    let transport = Arc::new(transport);
    let mut server_config = server_config.clone();
    server_config.transport_config(transport.clone());
    *shared.relay.kit.write().unwrap() = Some(RelayKit { server_config, transport });
}

/// Relays for the members of our network from now on, each at most `rate_bytes_per_s`, or stops. A
/// change is told to every member connected now (paths that start later are offered as they start), so
/// members stop dialing through a relay that stopped. Call within the runtime.
pub fn set_enabled(shared: &Arc<Shared>, enabled: bool, rate_bytes_per_s: u64) {
    shared.relay.limiter.lock().unwrap().set_rate(rate_bytes_per_s);
    if shared.relay.enabled.swap(enabled, Ordering::Relaxed) == enabled {
        return;
    }
    for peer in shared.table.read().unwrap().peers() {
        let path = peer.paths.read().unwrap().iter().find(|p| p.up.load(Ordering::Relaxed)).cloned();
        if let Some(path) = path {
            tell(shared, peer, &path, if enabled { wire::OFFER } else { wire::WITHDRAW });
        }
    }
}

/// Relay side: tells a member that starts a path with us that we relay for it (if we do). Call within the
/// runtime, for every path that starts.
pub fn offer(shared: &Arc<Shared>, peer: &Arc<Peer>, path: &Arc<Path>) {
    if shared.relay.enabled.load(Ordering::Relaxed) {
        tell(shared, peer, path, wire::OFFER);
    }
}

/// Sends `message` (an offer or a withdrawal) to a member on a path of its that is not relayed.
fn tell(shared: &Arc<Shared>, peer: &Arc<Peer>, path: &Arc<Path>, message: &'static [u8; 4]) {
    if matches!(path.route.kind, PathKind::Relayed { .. }) || !is_member(shared, &peer.key) {
        return;
    }
    let path = path.clone();
    tokio::spawn(async move {
        let Ok(mut stream) = path.conn.open_uni().await else { return };
        if stream.write_all(message).await.is_ok() {
            let _ = stream.finish();
        }
    });
}

/// Member side: `peer` offered to relay for us (`wire::OFFER`), or withdrew its offer (`wire::WITHDRAW`).
pub fn offered(shared: &Arc<Shared>, peer: &Arc<Peer>, relays: bool) {
    let mut offers = shared.relay.offers.lock().unwrap();
    if !relays {
        offers.remove(&peer.key);
    } else if offers.len() < MAX_RELAYS && is_member(shared, &peer.key) {
        offers.insert(peer.key);
    }
}

impl crate::node::Node {
    /// The relays to name in our DHT record: members that offered to relay for us and that we have a
    /// path to (so a member that reaches one reaches us through it), the fastest `record::MAX_RELAYS`.
    pub fn record_relays(&self) -> Vec<[u8; 32]> {
        let shared = &self.shared;
        let offers: Vec<[u8; 32]> = shared.relay.offers.lock().unwrap().iter().copied().collect();
        let ours: Vec<([u8; 32], u64)> =
            offers.iter().filter_map(|k| path_to(shared, k).map(|p| (*k, p.conn.rtt().as_micros() as u64))).collect();
        wire::record_relays(&ours, quicether_proto::record::MAX_RELAYS)
    }

    /// The relays member `key`'s DHT record names (verified and opened by discovery): a relayed dial to
    /// it goes through one of them when we have a path to one. Ignored for a key not in the peer table.
    pub fn set_named_relays(&self, key: &[u8; 32], relays: &[[u8; 32]]) {
        if self.shared.peer(key).is_none() {
            return;
        }
        let relays = relays.iter().take(quicether_proto::record::MAX_RELAYS).copied().collect();
        self.shared.relay.named.lock().unwrap().insert(*key, relays);
    }
}

/// The endpoint through relay `via` over our WAN `wan`, made on first use. Call within the runtime.
fn client(shared: &Arc<Shared>, via: &[u8; 32], wan: &str) -> Option<Arc<RelayClient>> {
    let mut clients = shared.relay.clients.lock().unwrap();
    let id = (*via, wan.to_string());
    if let Some(c) = clients.get(&id) {
        return Some(c.clone());
    }
    if clients.len() >= MAX_RELAYS {
        return None;
    }
    let server_config = shared.relay.kit.read().unwrap().as_ref()?.server_config.clone();
    let socket = Arc::new(VirtualSocket::new(Arc::downgrade(shared), *via, wan.to_string()));
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        crate::batching::accepting(crate::node::endpoint_config(), shared.udp_payload).ok()?,
        Some(server_config),
        socket.clone(),
        Arc::new(quinn::TokioRuntime),
    )
    .ok()?;
    let kind = Some(PathKind::Relayed { via: *via });
    tokio::spawn(accept_loop(shared.clone(), endpoint.clone(), label(via, wan), kind));
    let c = Arc::new(RelayClient { endpoint, socket });
    clients.insert(id, c.clone());
    Some(c)
}

/// Closes every relayed endpoint (the node is stopping).
pub fn close_all(shared: &Shared) {
    for (_, c) in shared.relay.clients.lock().unwrap().drain() {
        c.endpoint.close(0u32.into(), b"node stopping");
    }
}

/// Whether one of our sockets maps per destination (a symmetric NAT): then a punch needs luck, and the
/// relay is dialed at once.
fn own_nat_symmetric(shared: &Shared) -> bool {
    use quicether_proto::nat::{classify, Observation};
    let sockets = shared.punch.sockets.read().unwrap().clone();
    let mut seen: HashMap<String, Vec<Observation>> = HashMap::new();
    for peer in shared.table.read().unwrap().peers() {
        for path in peer.paths.read().unwrap().iter().filter(|p| p.route.dialed) {
            if let Some(observed) = path.public {
                seen.entry(path.route.local_wan.clone())
                    .or_default()
                    .push(Observation { remote: path.route.remote, observed });
            }
        }
    }
    sockets.iter().any(|s| {
        let Ok(bound) = s.endpoint.local_addr() else { return false };
        let local = s.local.map_or(bound, |ip| SocketAddr::new(ip, bound.port()));
        let observations = seen.get(&s.wan).map(Vec::as_slice).unwrap_or_default();
        matches!(classify(local, observations), Mapping::EndpointDependent(_))
    })
}

/// Our WANs that have a path up to relay `via` (each gets its own relayed paths through it).
fn wans_to(shared: &Shared, via: &[u8; 32]) -> Vec<String> {
    let Some(peer) = shared.peer(via) else { return Vec::new() };
    let mut wans: Vec<String> =
        peer.paths.read().unwrap().iter().filter(|p| carries_relay(p)).map(|p| p.route.local_wan.clone()).collect();
    wans.sort();
    wans.dedup();
    wans
}

/// Runs for the life of the node: every member we want a path to (it has endpoints, or the daemon added it
/// to be reached without: `member_only`) is dialed through the relay with the lowest RTT that offered to
/// relay for us, from each of our WANs that reaches that relay and has had no relayed path to the member
/// for a while (`DialPlan`: no path at all, or only direct ones, which it falls back from).
pub async fn initiator(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(INITIATOR_TICK).await;
        let peers: Vec<Arc<Peer>> = shared.table.read().unwrap().peers().cloned().collect();
        let try_any = crate::debug::relay_try_any();
        let offers: Vec<[u8; 32]> = if try_any {
            peers.iter().map(|p| p.key).collect()
        } else {
            shared.relay.offers.lock().unwrap().iter().copied().collect()
        };
        let relays: Vec<([u8; 32], u64)> =
            offers.iter().filter_map(|k| path_to(&shared, k).map(|p| (*k, p.conn.rtt().as_micros() as u64))).collect();
        let wans: HashMap<[u8; 32], Vec<String>> = relays.iter().map(|(k, _)| (*k, wans_to(&shared, k))).collect();
        // Per relay, each WAN with what its relayed paths' labels hold of it (`wan_part`).
        let wan_parts: HashMap<[u8; 32], Vec<(&String, String)>> = wans
            .iter()
            .map(|(via, ws)| (*via, ws.iter().map(|w| (w, wan_part(&label(via, w)).to_string())).collect()))
            .collect();
        shared
            .relay
            .plan
            .lock()
            .unwrap()
            .retain(|(k, wan)| peers.iter().any(|p| p.key == *k) && wans.values().any(|w| w.contains(wan)));
        shared.relay.named.lock().unwrap().retain(|k, _| peers.iter().any(|p| p.key == *k));
        let symmetric = own_nat_symmetric(&shared);
        for target in peers {
            // A member the daemon asked us to reach with no endpoint (told of by member news, its record not
            // yet found) has no direct dial coming: it is dialed through a relay at once.
            let no_endpoints = target.endpoints.read().unwrap().is_empty();
            let wanted = if try_any {
                !no_endpoints
            } else {
                is_member(&shared, &target.key) && (!no_endpoints || target.member_only)
            };
            if !wanted {
                continue;
            }
            let named = shared.relay.named.lock().unwrap().get(&target.key).cloned().unwrap_or_default();
            let Some(via) = wire::choose_relay(&target.key, &relays, &named) else {
                continue;
            };
            let (direct, relayed_wans) = {
                let paths = target.paths.read().unwrap();
                // One that is down counts as none: a new dial replaces it (`Shared::add_path`, duplicates).
                let relayed_wans: Vec<String> = paths
                    .iter()
                    .filter(|p| relayed(p) && p.up.load(Ordering::Relaxed))
                    .map(|p| wan_part(&p.route.local_wan).to_string())
                    .collect();
                (paths.iter().any(|p| !relayed(p)), relayed_wans)
            };
            let direct_unlikely = symmetric || no_endpoints;
            for (wan, part) in wan_parts.get(&via).into_iter().flatten() {
                // Through any relay: one relayed path per WAN is the fallback, not one per relay.
                let relayed = relayed_wans.contains(part);
                let paths = PathsToMember { direct, relayed };
                let id = (target.key, (*wan).clone());
                if shared.relay.plan.lock().unwrap().handle_tick(&id, paths, direct_unlikely, shared.now_us()) {
                    shared.relay.count(|s| s.dials += 1);
                    tokio::spawn(dial(shared.clone(), via, id.1, target.key));
                }
            }
        }
    }
}

/// One dial of `key` through relay `via` over our WAN `wan`: a normal handshake with the member's key
/// pinned, then the path hello; the path it makes is of kind `Relayed { via }`. A failure is reported like
/// a WAN's dial failure, the relayed label standing for the WAN.
async fn dial(shared: Arc<Shared>, via: [u8; 32], wan: String, key: [u8; 32]) {
    if let Err(reason) = try_dial(&shared, via, &wan, key).await {
        shared.emit(crate::peer::Event::DialFailed { key, wan: label(&via, &wan), reason });
    }
}

async fn try_dial(shared: &Arc<Shared>, via: [u8; 32], wan: &str, key: [u8; 32]) -> Result<(), String> {
    let client = client(shared, &via, wan).ok_or("no endpoint through the relay")?;
    let addr = client.socket.dial_addr(&key);
    // A relayed path over a backup WAN is a backup path too.
    let backup = path_on(shared, &via, wan).is_some_and(|p| p.backup);
    let config = {
        let kit = shared.punch.client.read().unwrap();
        let relay_kit = shared.relay.kit.read().unwrap();
        let (Some(kit), Some(relay_kit)) = (kit.as_ref(), relay_kit.as_ref()) else {
            return Err("node not started".into());
        };
        let quic = tls::quic_client_config(kit.identity.clone(), key, Some(shared.trust.clone()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        config.transport_config(relay_kit.transport.clone());
        config
    };
    let conn =
        client.endpoint.connect_with(config, addr, tls::SERVER_NAME).map_err(net_text)?.await.map_err(net_text)?;
    let wan = label(&via, wan);
    let answer = match tokio::time::timeout(HELLO_TIMEOUT, send_hello(&conn, &wan, backup)).await {
        Ok(answer) => answer?,
        Err(_) => return Err("no answer to the path hello".into()),
    };
    let peer = match shared.peer(&key) {
        Some(peer) => peer,
        None => shared.peer_of_accepted(&conn).inspect_err(|_| conn.close(1u32.into(), b"unknown peer"))?,
    };
    let route = PathRoute {
        kind: PathKind::Relayed { via },
        local_wan: wan,
        peer_wan: answer.peer_wan,
        remote: addr,
        dialed: true,
    };
    // Not our public address: the one it saw is made up (`VirtualSocket`), and NAT classification and
    // punch candidates must not take it.
    start_path(shared, &peer, conn, route, backup, None, None);
    Ok(())
}

/// Who a made-up address stands for, besides the member: one dial of ours to it (by number), or one of
/// its paths to the relay (by handle) that dialed us.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Remote {
    Dialed(u32),
    Dialer(u32),
}

/// Dials to one member kept (their addresses and the handle of the member's path that answered each).
const DIALS_KEPT: usize = 4;

/// Made-up addresses for the remotes of one relayed endpoint, both ways; bounded: when full, the one
/// unused longest goes (a member's path to the relay that went and came back has a new handle).
#[derive(Default)]
struct AddressBook {
    by_remote: HashMap<([u8; 32], Remote), SocketAddr>,
    /// Member, remote and the use count when last used.
    by_addr: HashMap<SocketAddr, ([u8; 32], Remote, u64)>,
    /// Per member we dialed: our last `DIALS_KEPT` dials, oldest first, each with the handle of the
    /// member's path that answered it (where the relay is to send ours; none yet: the relay chooses).
    dials: HashMap<[u8; 32], Vec<(u32, Option<u32>)>>,
    uses: u64,
    made: u32,
    dialed: u32,
}

impl AddressBook {
    fn addr_of(&mut self, key: &[u8; 32], remote: Remote) -> SocketAddr {
        self.uses += 1;
        if let Some(a) = self.by_remote.get(&(*key, remote)).copied() {
            if let Some(entry) = self.by_addr.get_mut(&a) {
                entry.2 = self.uses;
            }
            return a;
        }
        if self.by_addr.len() >= quicether_proto::relay::MAX_TRACKED {
            let stalest = self.by_addr.iter().min_by_key(|(_, (_, _, used))| *used).map(|(a, e)| (*a, e.0, e.1));
            if let Some((addr, old_key, old_remote)) = stalest {
                self.forget(addr, old_key, old_remote);
            }
        }
        self.made = self.made.wrapping_add(1);
        let [a, b, c, d] = VIRTUAL_PREFIX;
        let ip = Ipv6Addr::new(a, b, c, d, 0, 0, (self.made >> 16) as u16, self.made as u16);
        let addr = SocketAddr::new(ip.into(), 1);
        self.by_remote.insert((*key, remote), addr);
        self.by_addr.insert(addr, (*key, remote, self.uses));
        addr
    }

    fn forget(&mut self, addr: SocketAddr, key: [u8; 32], remote: Remote) {
        self.by_addr.remove(&addr);
        self.by_remote.remove(&(key, remote));
        if let (Remote::Dialed(n), Some(dials)) = (remote, self.dials.get_mut(&key)) {
            dials.retain(|(dial, _)| *dial != n);
        }
    }

    /// A new dial of member `key`: its own address, so that what comes for an older dial (a connection the
    /// member still holds on another of its paths) never takes its place.
    fn dial(&mut self, key: &[u8; 32]) -> SocketAddr {
        self.dialed = self.dialed.wrapping_add(1);
        let dials = self.dials.entry(*key).or_default();
        dials.push((self.dialed, None));
        if dials.len() > DIALS_KEPT {
            let (oldest, _) = dials.remove(0);
            if let Some(addr) = self.by_remote.get(&(*key, Remote::Dialed(oldest))).copied() {
                self.forget(addr, *key, Remote::Dialed(oldest));
            }
        }
        self.addr_of(key, Remote::Dialed(self.dialed))
    }

    /// The remote that a packet from member `key`'s path `handle`, for a connection we dialed, comes from.
    /// A handshake packet (`long_header`) answers our newest dial, which learns the handle from it; any
    /// other goes to the dial its handle answered, else to the newest (the member's path to the relay
    /// came back with a new handle). None: we never dialed it.
    fn answer_to(&mut self, key: &[u8; 32], handle: u32, long_header: bool) -> Option<Remote> {
        let dials = self.dials.get_mut(key)?;
        if !long_header {
            if let Some((n, _)) = dials.iter().find(|(_, answered)| *answered == Some(handle)) {
                return Some(Remote::Dialed(*n));
            }
        }
        let newest = dials.last_mut()?;
        newest.1 = Some(handle);
        Some(Remote::Dialed(newest.0))
    }

    /// Where a packet to `addr` goes: the member, the handle of its path to send by, and whether we
    /// dialed the connection.
    fn route_of(&mut self, addr: &SocketAddr) -> Option<([u8; 32], u32, bool)> {
        self.uses += 1;
        let (key, remote, used) = self.by_addr.get_mut(addr)?;
        *used = self.uses;
        Some(match *remote {
            Remote::Dialed(n) => {
                let dials = self.dials.get(key).map(Vec::as_slice).unwrap_or_default();
                let answered = dials.iter().find(|(dial, _)| *dial == n).and_then(|(_, handle)| *handle);
                (*key, answered.unwrap_or(wire::ANY_PATH), true)
            }
            Remote::Dialer(handle) => (*key, handle, false),
        })
    }
}

/// A UDP socket for quinn whose datagrams go through a relay over one of our WANs: sent as RELAY_TO on our
/// path to the relay over that WAN, received from the path reader as RELAY_FROM (`received`).
pub struct VirtualSocket {
    shared: Weak<Shared>,
    via: [u8; 32],
    wan: String,
    book: Mutex<AddressBook>,
    inbound_tx: mpsc::Sender<(SocketAddr, Bytes)>,
    inbound: Mutex<mpsc::Receiver<(SocketAddr, Bytes)>>,
}

impl fmt::Debug for VirtualSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VirtualSocket({})", label(&self.via, &self.wan))
    }
}

impl VirtualSocket {
    fn new(shared: Weak<Shared>, via: [u8; 32], wan: String) -> Self {
        let (inbound_tx, inbound) = mpsc::channel(INBOUND_QUEUE);
        Self { shared, via, wan, book: Mutex::default(), inbound_tx, inbound: Mutex::new(inbound) }
    }

    /// The address to dial member `key` at (a new one for each dial).
    fn dial_addr(&self, key: &[u8; 32]) -> SocketAddr {
        self.book.lock().unwrap().dial(key)
    }

    /// Hands quinn a packet from member `key`'s path `handle` (`dialed`: the member dialed the connection
    /// it belongs to); false if dropped (queue full, or an answer to a dial we did not make).
    fn deliver(&self, key: &[u8; 32], dialed: bool, handle: u32, packet: Bytes) -> bool {
        let addr = {
            let mut book = self.book.lock().unwrap();
            let remote = if dialed {
                Remote::Dialer(handle)
            } else {
                let long_header = packet.first().is_some_and(|b| b & 0x80 != 0);
                let Some(remote) = book.answer_to(key, handle, long_header) else { return false };
                remote
            };
            book.addr_of(key, remote)
        };
        self.inbound_tx.try_send((addr, packet)).is_ok()
    }
}

/// Sending never blocks: a datagram that finds no path to the relay is lost, as on a real socket.
#[derive(Debug)]
struct AlwaysWritable;

impl quinn::UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl quinn::AsyncUdpSocket for VirtualSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let Some(shared) = self.shared.upgrade() else { return Ok(()) };
        let Some((key, handle, dialed)) = self.book.lock().unwrap().route_of(&transmit.destination) else {
            return Ok(());
        };
        // This WAN's path only: when it is down, so is every relayed path over it (the others go on).
        let Some(path) = path_on(&shared, &self.via, &self.wan) else { return Ok(()) };
        let segment = transmit.segment_size.unwrap_or(transmit.contents.len()).max(1);
        let mut sent = 0;
        for packet in transmit.contents.chunks(segment) {
            if path.conn.send_datagram(Bytes::from(wire::encode_to(&key, handle, dialed, packet))).is_ok() {
                sent += 1;
            }
        }
        shared.relay.count(|s| s.sent_packets += sent);
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut inbound = self.inbound.lock().unwrap();
        let mut filled = 0;
        while filled < bufs.len().min(meta.len()) {
            let next = if filled == 0 {
                match inbound.poll_recv(cx) {
                    Poll::Ready(Some(item)) => item,
                    Poll::Ready(None) | Poll::Pending => return Poll::Pending,
                }
            } else {
                match inbound.try_recv() {
                    Ok(item) => item,
                    Err(_) => break,
                }
            };
            let (addr, packet) = next;
            let len = packet.len().min(bufs[filled].len());
            bufs[filled][..len].copy_from_slice(&packet[..len]);
            meta[filled] = RecvMeta { addr, len, stride: len, ecn: None, dst_ip: None };
            filled += 1;
        }
        Poll::Ready(Ok(filled))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        let [a, b, c, d] = VIRTUAL_PREFIX;
        Ok(SocketAddr::new(Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0).into(), 1))
    }

    fn may_fragment(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::{label, wan_part, AddressBook, Remote, DIALS_KEPT};
    use quicether_proto::relay::ANY_PATH;

    #[test]
    fn each_remote_through_a_relay_has_one_made_up_address_both_ways() {
        let mut book = AddressBook::default();
        let dialed = book.dial(&[1; 32]);
        let dialer = book.addr_of(&[1; 32], Remote::Dialer(7));
        let other = book.addr_of(&[2; 32], Remote::Dialer(7));
        assert!(dialed != dialer && dialer != other && dialed != other);
        assert_eq!(book.addr_of(&[1; 32], Remote::Dialer(7)), dialer, "the same remote keeps its address");
        // A member we dialed: sent for the relay to choose until its answer names the path that took it.
        assert_eq!(book.route_of(&dialed), Some(([1; 32], ANY_PATH, true)));
        let answered = book.answer_to(&[1; 32], 9, true).unwrap();
        assert_eq!(book.addr_of(&[1; 32], answered), dialed);
        assert_eq!(book.route_of(&dialed), Some(([1; 32], 9, true)));
        // A member's path that dialed us: answered by its handle.
        assert_eq!(book.route_of(&dialer), Some(([1; 32], 7, false)));
        assert_eq!(book.route_of(&"[fd00::1]:1".parse().unwrap()), None);
        assert_eq!(book.answer_to(&[2; 32], 9, true), None, "an answer to a dial we never made");
    }

    #[test]
    fn what_comes_for_an_older_dial_never_takes_the_newest_ones_place() {
        let mut book = AddressBook::default();
        let first = book.dial(&[1; 32]);
        assert_eq!(book.answer_to(&[1; 32], 5, true), Some(Remote::Dialed(1)));
        // Our path over the member's WAN 5 went down; we dial again and the member answers from WAN 6.
        let second = book.dial(&[1; 32]);
        assert_ne!(first, second);
        assert_eq!(book.answer_to(&[1; 32], 6, true), Some(Remote::Dialed(2)), "a handshake: the newest dial");
        // WAN 5 came back: the member's old connection on it still sends, to the first dial's address (which
        // quinn no longer knows: it resets it); the second dial still sends to WAN 6.
        assert_eq!(book.answer_to(&[1; 32], 5, false), Some(Remote::Dialed(1)));
        assert_eq!(book.route_of(&second), Some(([1; 32], 6, true)));
        // The member's path to the relay came back with a new handle: the newest dial follows it.
        assert_eq!(book.answer_to(&[1; 32], 8, false), Some(Remote::Dialed(2)));
        assert_eq!(book.route_of(&second), Some(([1; 32], 8, true)));
        // A handshake answering the second dial from the same path as the first does not go to the first.
        let third = book.dial(&[1; 32]);
        assert_eq!(book.answer_to(&[1; 32], 5, true), Some(Remote::Dialed(3)));
        assert_eq!(book.addr_of(&[1; 32], Remote::Dialed(3)), third);
        // Only the last few dials are kept.
        for _ in 0..DIALS_KEPT {
            book.dial(&[1; 32]);
        }
        assert_eq!(book.dials[&[1; 32]].len(), DIALS_KEPT);
        assert_eq!(book.route_of(&first), None, "the oldest dial's address is gone");
        assert_eq!(book.by_addr.len(), book.by_remote.len());
    }

    #[test]
    fn a_full_address_book_forgets_the_remote_unused_longest() {
        let mut book = AddressBook::default();
        let kept = book.dial(&[1; 32]);
        let max = quicether_proto::relay::MAX_TRACKED as u32;
        for handle in 1..max {
            book.addr_of(&[2; 32], Remote::Dialer(handle));
            book.route_of(&kept); // in use all along
        }
        assert_eq!(book.by_addr.len(), max as usize);
        let newest = book.addr_of(&[3; 32], Remote::Dialer(1));
        assert_eq!(book.by_addr.len(), max as usize, "bounded");
        assert_eq!(book.route_of(&kept), Some(([1; 32], ANY_PATH, true)), "the remote in use stays");
        assert!(!book.by_remote.contains_key(&([2; 32], Remote::Dialer(1))), "the stalest went");
        assert_ne!(newest, kept);
        assert_eq!(book.by_addr.len(), book.by_remote.len());
    }

    #[test]
    fn the_relayed_wan_label_names_the_relay_and_our_wan() {
        assert_eq!(label(&[0xab; 32], "wan0"), "relay-abababab.wan0");
        assert_eq!(wan_part(&label(&[0xab; 32], "wan.0")), "wan.0");
        let long = label(&[0; 32], "a-very-long-wan-name-indeed-yes");
        assert_eq!(long.len(), quicether_proto::peer_text::MAX_LABEL_LEN);
        assert!(quicether_proto::peer_text::is_safe_label(&long));
        assert_eq!(wan_part(&long), wan_part(&label(&[1; 32], "a-very-long-wan-name-indeed-yes")), "any relay");
        let other = label(&[0; 32], "a-very-long-wan-name-indeed-no");
        assert_ne!(long, other, "long names alike at the start stay apart");
        assert_eq!(label(&[0; 32], "seventeen-chars-x"), "relay-00000000.seventeen-chars-x", "fits: kept whole");
    }
}
