//! Relays run by the user (format, limits and dial decision in `quicether_proto::relay`).
//!
//! Relay side: a RELAY_TO datagram from member A on A's path names member B; if relaying is on here, both
//! are members of our network, B has a path up, and A is within its rate and B's queue within its bound,
//! the datagram goes on to B as RELAY_FROM naming A. Nothing else is read: the packet is the QUIC
//! ciphertext of A's and B's own connection.
//!
//! Member side: per relay, one quinn endpoint over a `VirtualSocket` whose datagrams travel as RELAY
//! datagrams on our path to the relay. Each member reached through it gets a made-up address (quinn needs
//! one per remote); the socket maps it back to the member's key. The connections on it are ordinary
//! paths (handshake with key pinning and membership check, path hello, bond) of kind `Relayed { via }`,
//! dialed by `initiator` when a member we want has had no path for a while, or only direct ones (then
//! the relayed path is the fallback: it carries nothing while a direct one is up, and takes the traffic
//! as soon as the direct ones are down for the health check).

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

/// One relay as seen from a member: the endpoint over its virtual socket.
struct RelayClient {
    endpoint: quinn::Endpoint,
    socket: Arc<VirtualSocket>,
}

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
    plan: Mutex<DialPlan>,
    pub stats: Mutex<RelayStats>,
    clients: Mutex<HashMap<[u8; 32], Arc<RelayClient>>>,
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

/// The name of the relayed "WAN" through relay `via` (both ends of a relayed path use it, so two dials
/// crossing through the same relay are recognised as duplicates by `Shared::add_path`).
fn label(via: &[u8; 32]) -> String {
    format!("relay-{}", via[..4].iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// The path a relay's datagrams to member `key` take: its best one that is up and not itself relayed.
fn path_to(shared: &Shared, key: &[u8; 32]) -> Option<Arc<Path>> {
    let peer = shared.peer(key)?;
    let paths = peer.paths.read().unwrap();
    let usable =
        paths.iter().filter(|p| p.up.load(Ordering::Relaxed) && !matches!(p.route.kind, PathKind::Relayed { .. }));
    usable.min_by_key(|p| p.srtt_us.load(Ordering::Relaxed)).cloned()
}

/// A RELAY datagram that came on `path` of `peer`. Call from the path reader (the datagram is no bond frame).
pub fn received(shared: &Arc<Shared>, peer: &Arc<Peer>, path: &Path, datagram: Bytes) {
    let desk = &shared.relay;
    let Some((direction, key, packet)) = wire::decode(&datagram) else {
        return desk.count(|s| s.dropped_malformed += 1);
    };
    match direction {
        // A relayed path is never a way to a relay: no chains (and no loops) of relays.
        Direction::To if matches!(path.route.kind, PathKind::Relayed { .. }) => desk.count(|s| s.dropped_chained += 1),
        Direction::To => forward(shared, peer, key, datagram.len(), &datagram),
        Direction::From => {
            // From a relay (a member that is not on a relayed path to us), about a member we may admit.
            let from_relay = is_member(shared, &peer.key) && !matches!(path.route.kind, PathKind::Relayed { .. });
            if !from_relay || key == shared.local_key || !(is_member(shared, &key) || shared.peer(&key).is_some()) {
                return desk.count(|s| s.received_dropped += 1);
            }
            let Some(client) = client(shared, &peer.key) else {
                return desk.count(|s| s.received_dropped += 1);
            };
            // The packet is the datagram's tail: handed on without a copy.
            let delivered = client.socket.deliver(&key, datagram.slice(datagram.len() - packet.len()..));
            desk.count(|s| if delivered { s.received_packets += 1 } else { s.received_dropped += 1 });
        }
    }
}

/// Relay side: passes a member's RELAY_TO datagram on to the member it names.
fn forward(shared: &Shared, source: &Peer, dest: [u8; 32], len: usize, datagram: &[u8]) {
    let desk = &shared.relay;
    if !desk.enabled.load(Ordering::Relaxed) {
        return desk.count(|s| s.dropped_disabled += 1);
    }
    let members =
        dest != source.key && dest != shared.local_key && is_member(shared, &source.key) && is_member(shared, &dest);
    if !members {
        return desk.count(|s| s.dropped_not_member += 1);
    }
    let Some(out) = path_to(shared, &dest) else {
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
    wire::turn_around(&mut passed_on, &source.key);
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

/// The endpoint through relay `via`, made on first use. Call within the runtime.
fn client(shared: &Arc<Shared>, via: &[u8; 32]) -> Option<Arc<RelayClient>> {
    let mut clients = shared.relay.clients.lock().unwrap();
    if let Some(c) = clients.get(via) {
        return Some(c.clone());
    }
    if clients.len() >= MAX_RELAYS {
        return None;
    }
    let server_config = shared.relay.kit.read().unwrap().as_ref()?.server_config.clone();
    let socket = Arc::new(VirtualSocket::new(Arc::downgrade(shared), *via));
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        crate::node::endpoint_config(),
        Some(server_config),
        socket.clone(),
        Arc::new(quinn::TokioRuntime),
    )
    .ok()?;
    tokio::spawn(accept_loop(shared.clone(), endpoint.clone(), label(via), Some(PathKind::Relayed { via: *via })));
    let c = Arc::new(RelayClient { endpoint, socket });
    clients.insert(*via, c.clone());
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

/// Runs for the life of the node: every member we want a path to (it has endpoints, or the daemon added it
/// to be reached without: `member_only`) and have had no relayed path to for a while (`DialPlan`: none at
/// all, or only direct ones, which it falls back from) is dialed through the relay with the lowest RTT that
/// offered to relay for us.
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
        shared.relay.plan.lock().unwrap().retain(|k| peers.iter().any(|p| p.key == *k));
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
            let paths = {
                let paths = target.paths.read().unwrap();
                let relayed = |p: &Arc<Path>| matches!(p.route.kind, PathKind::Relayed { .. });
                PathsToMember { direct: paths.iter().any(|p| !relayed(p)), relayed: paths.iter().any(relayed) }
            };
            let direct_unlikely = symmetric || no_endpoints;
            if shared.relay.plan.lock().unwrap().handle_tick(&target.key, paths, direct_unlikely, shared.now_us()) {
                shared.relay.count(|s| s.dials += 1);
                tokio::spawn(dial(shared.clone(), via, target.key));
            }
        }
    }
}

/// One dial of `key` through relay `via`: a normal handshake with the member's key pinned, then the path
/// hello; the path it makes is of kind `Relayed { via }`. A failure is reported like a WAN's dial failure,
/// the relay's label standing for the WAN.
async fn dial(shared: Arc<Shared>, via: [u8; 32], key: [u8; 32]) {
    if let Err(reason) = try_dial(&shared, via, key).await {
        shared.emit(crate::peer::Event::DialFailed { key, wan: label(&via), reason });
    }
}

async fn try_dial(shared: &Arc<Shared>, via: [u8; 32], key: [u8; 32]) -> Result<(), String> {
    let client = client(shared, &via).ok_or("no endpoint through the relay")?;
    let addr = client.socket.addr_of(&key).ok_or("too many members through the relay")?;
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
    let wan = label(&via);
    let answer = match tokio::time::timeout(HELLO_TIMEOUT, send_hello(&conn, &wan, false)).await {
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
    start_path(shared, &peer, conn, route, false, None, None);
    Ok(())
}

/// Made-up addresses for the members reached through one relay, both ways; bounded.
#[derive(Default)]
struct AddressBook {
    by_key: HashMap<[u8; 32], SocketAddr>,
    by_addr: HashMap<SocketAddr, [u8; 32]>,
}

impl AddressBook {
    fn addr_of(&mut self, key: &[u8; 32]) -> Option<SocketAddr> {
        if let Some(a) = self.by_key.get(key) {
            return Some(*a);
        }
        let n = self.by_key.len();
        if n >= quicether_proto::relay::MAX_TRACKED {
            return None;
        }
        let [a, b, c, d] = VIRTUAL_PREFIX;
        let ip = Ipv6Addr::new(a, b, c, d, 0, 0, (n >> 16) as u16, n as u16 + 1);
        let addr = SocketAddr::new(ip.into(), 1);
        self.by_key.insert(*key, addr);
        self.by_addr.insert(addr, *key);
        Some(addr)
    }
}

/// A UDP socket for quinn whose datagrams go through a relay: sent as RELAY_TO on our path to it, received
/// from the path reader as RELAY_FROM (`received`).
pub struct VirtualSocket {
    shared: Weak<Shared>,
    via: [u8; 32],
    book: Mutex<AddressBook>,
    inbound_tx: mpsc::Sender<(SocketAddr, Bytes)>,
    inbound: Mutex<mpsc::Receiver<(SocketAddr, Bytes)>>,
}

impl fmt::Debug for VirtualSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VirtualSocket({})", label(&self.via))
    }
}

impl VirtualSocket {
    fn new(shared: Weak<Shared>, via: [u8; 32]) -> Self {
        let (inbound_tx, inbound) = mpsc::channel(INBOUND_QUEUE);
        Self { shared, via, book: Mutex::default(), inbound_tx, inbound: Mutex::new(inbound) }
    }

    fn addr_of(&self, key: &[u8; 32]) -> Option<SocketAddr> {
        self.book.lock().unwrap().addr_of(key)
    }

    /// Hands quinn a packet from member `key`; false if dropped (queue full, or too many members).
    fn deliver(&self, key: &[u8; 32], packet: Bytes) -> bool {
        let Some(addr) = self.addr_of(key) else { return false };
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
        let Some(key) = self.book.lock().unwrap().by_addr.get(&transmit.destination).copied() else {
            return Ok(());
        };
        let Some(path) = path_to(&shared, &self.via) else { return Ok(()) };
        let segment = transmit.segment_size.unwrap_or(transmit.contents.len()).max(1);
        let mut sent = 0;
        for packet in transmit.contents.chunks(segment) {
            if path.conn.send_datagram(Bytes::from(wire::encode_to(&key, packet))).is_ok() {
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
    use super::{label, AddressBook};

    #[test]
    fn each_member_through_a_relay_has_one_made_up_address_both_ways_and_the_book_is_bounded() {
        let mut book = AddressBook::default();
        let a = book.addr_of(&[1; 32]).unwrap();
        let b = book.addr_of(&[2; 32]).unwrap();
        assert_ne!(a, b);
        assert_eq!(book.addr_of(&[1; 32]), Some(a), "the same member keeps its address");
        assert_eq!(book.by_addr[&b], [2; 32]);
        for i in 2..quicether_proto::relay::MAX_TRACKED as u32 {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            key[31] = 9;
            assert!(book.addr_of(&key).is_some());
        }
        assert_eq!(book.addr_of(&[3; 32]), None, "no more members than the limit");
        assert_eq!(book.by_addr.len(), book.by_key.len());
    }

    #[test]
    fn the_relayed_wan_label_names_the_relay() {
        assert_eq!(label(&[0xab; 32]), "relay-abababab");
        assert!(quicether_proto::peer_text::safe_label(label(&[0; 32]).as_bytes()) == label(&[0; 32]));
    }
}
