//! Coordinated simultaneous open ("hole punching") between two members that have no path to each other,
//! through a third node both are connected to (the relay of the message only: the path itself is direct).
//!
//! 1. The initiator A sends a *request* to relay R on its authenticated path to R: the target B, A's
//!    candidates (its sockets' addresses as peers see them) and a lead time `delay_ms`. A starts dialing
//!    B's candidates (from its record) from every WAN socket `delay_ms` after sending.
//! 2. R forwards it as an *offer* to B only if both A and B are members of its network and B has a path
//!    up; it names A by the key of the path the request came on (never a key A wrote), adds the address
//!    it sees A at (A's NAT mapping towards the internet), and takes the transit time off the lead
//!    (`offer_delay_ms`), so B starts about when A does.
//! 3. B dials A's candidates from every WAN socket at that moment. Each socket's first packet to the
//!    other side opens its own NAT's mapping; the other side's packets then pass it, and the first pair
//!    that answers completes a normal QUIC handshake (keys pinned to the member's certificate).
//!
//! Each dial is a QUIC handshake, which retransmits its Initial by itself while the other NAT opens; a
//! second round repairs a lost start. Every input from the network is bounded here (counts, lengths,
//! delay) and rate-limited per sender (`PunchBook`) before it can make anyone send a packet.
//!
//! Wire format (integers big-endian; trailing bytes refused):
//! ```text
//!   [4]   magic "QEP1"
//!   u8    type (1 request: key = target; 2 offer: key = initiator)
//!   [32]  key
//!   u16   delay_ms                      at most MAX_DELAY_MS
//!   u8    count                         at most MAX_CANDIDATES
//!   count × ( u8 family (4/6), address, u16 port )
//!   u8    NAT class, i16 step           the sender's (`symmetric::NatClass`: 0 open, 1 sequential with
//!                                       its step, 2 random); the relay passes the requester's on
//!   [16]  birthday nonce                only when the initiator runs a birthday probe with the target
//!                                       (`birthday`): the token of its probes is derived from it; the
//!                                       relay passes it on
//! ```
//!
//! Symmetric NATs (`symmetric`): a sequential side's candidates include its predicted ports; a pair that
//! is random on both sides is not punched at all (`symmetric::approach`); a random side and an open one run
//! the birthday probe (`birthday`) when the initiator asks for it with a nonce.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::symmetric::NatClass;
use crate::wire::{Malformed, Reader, Writer};

pub const MAGIC: &[u8; 4] = b"QEP1";
/// Candidates in one message: a few WANs, each with its host and reflexive address, and the predicted
/// ports of a sequential symmetric NAT (`symmetric::PREDICTION_WINDOW`).
pub const MAX_CANDIDATES: usize = 16;
/// A lead beyond this is not a schedule but a way to make a node dial later: refused.
pub const MAX_DELAY_MS: u16 = 5_000;
pub const MAX_MESSAGE_LEN: usize = 4 + 1 + 32 + 2 + 1 + MAX_CANDIDATES * (1 + 16 + 2) + 1 + 2 + NONCE_LEN;
/// The birthday nonce's length.
pub const NONCE_LEN: usize = 16;
/// The lead the initiator gives on top of twice its RTT to the relay: time for the offer to reach the
/// target and for it to start its dials (tasks, not packets, at that point).
pub const BASE_LEAD_MS: u64 = 100;
/// A second round of dials this long after the first, for pairs with no path yet: the first round's
/// handshakes give up with the idle timeout (3 s), and a start lost on the way is repaired.
pub const ROUND_GAP_US: u64 = 3_000_000;
pub const ROUNDS: u32 = 2;
/// An initiator asks again for the same target at most this often while there is still no direct path
/// (none at all, or only relayed ones: then a punch that works moves the pair off the relay): NAT mappings
/// live ≥ 30 s, so a retry within that finds the side that answered still open. A change of either
/// side's candidates is punched at once instead, though not sooner than `ANSWER_INTERVAL_US` after the
/// last request (the target would not answer it).
pub const RETRY_US: u64 = 10_000_000;
/// A target answers offers from one initiator at most this often (each costs sockets × candidates dials).
pub const ANSWER_INTERVAL_US: u64 = 2_000_000;
/// A relay forwards at most this many requests per second from one member (burst `RELAY_BURST`).
pub const RELAY_PER_SECOND: u64 = 2;
pub const RELAY_BURST: u64 = 8;
/// An accepted path from a peer we punched towards within this long counts as punched.
pub const PUNCHED_WINDOW_US: u64 = ROUND_GAP_US * ROUNDS as u64 + 3_000_000;
/// Nodes tracked per table of `PunchBook`; beyond it the oldest entries go (bounded memory).
pub const MAX_TRACKED: usize = 4096;

const TYPE_REQUEST: u8 = 1;
const TYPE_OFFER: u8 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Initiator → relay: `key` is the target.
    Request,
    /// Relay → target: `key` is the initiator (as the relay authenticated it).
    Offer,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub kind: Kind,
    pub key: [u8; 32],
    pub delay_ms: u16,
    pub candidates: Vec<SocketAddr>,
    /// How the sender's NAT hands out ports (a request's, passed on in the offer).
    pub class: NatClass,
    /// Present when the initiator runs a birthday probe with the target: the nonce its token comes from.
    pub birthday: Option<[u8; NONCE_LEN]>,
}

/// True if `data` is a punch message (the stream it came on carries nothing else).
pub fn is_punch(data: &[u8]) -> bool {
    data.starts_with(MAGIC)
}

pub fn encode(msg: &Message) -> Vec<u8> {
    let candidates = &msg.candidates[..msg.candidates.len().min(MAX_CANDIDATES)];
    let mut w = Writer::default();
    w.bytes(MAGIC);
    w.u8(match msg.kind {
        Kind::Request => TYPE_REQUEST,
        Kind::Offer => TYPE_OFFER,
    });
    w.bytes(&msg.key);
    w.u16(msg.delay_ms.min(MAX_DELAY_MS));
    w.u8(candidates.len() as u8);
    for c in candidates {
        w.ip(c.ip());
        w.u16(c.port());
    }
    let (class, step) = msg.class.encode();
    w.u8(class);
    w.u16(step as u16);
    if let Some(nonce) = &msg.birthday {
        w.bytes(nonce);
    }
    w.out
}

/// Decodes a message; bounded: length, count and delay are checked before use, and candidates that no
/// one could be reached at (unspecified, port 0, multicast, broadcast) are refused.
pub fn decode(data: &[u8]) -> Result<Message, Malformed> {
    if data.len() > MAX_MESSAGE_LEN {
        return Err("punch message too long");
    }
    let mut r = Reader::new(data);
    if r.bytes(4)? != MAGIC {
        return Err("not a punch message");
    }
    let kind = match r.u8()? {
        TYPE_REQUEST => Kind::Request,
        TYPE_OFFER => Kind::Offer,
        _ => return Err("unknown punch message type"),
    };
    let key = r.array::<32>()?;
    let delay_ms = r.u16()?;
    if delay_ms > MAX_DELAY_MS {
        return Err("punch delay out of range");
    }
    let count = r.u8()? as usize;
    if count > MAX_CANDIDATES {
        return Err("too many candidates");
    }
    let mut candidates = Vec::with_capacity(count);
    for _ in 0..count {
        let addr = SocketAddr::new(r.ip()?, r.u16()?);
        if !dialable(&addr) {
            return Err("candidate cannot be dialed");
        }
        candidates.push(addr);
    }
    let class = NatClass::decode(r.u8()?, r.u16()? as i16).ok_or("unknown NAT class")?;
    let birthday = match r.remaining() {
        0 => None,
        NONCE_LEN => Some(r.array::<NONCE_LEN>()?),
        _ => return Err("trailing bytes"),
    };
    Ok(Message { kind, key, delay_ms, candidates, class, birthday })
}

/// An address a packet could reach a node at.
pub fn dialable(addr: &SocketAddr) -> bool {
    let ip = addr.ip();
    let broadcast = matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast());
    addr.port() != 0 && !ip.is_unspecified() && !ip.is_multicast() && !broadcast
}

/// Adds `addr` to `candidates` unless it is there, undialable, or the list is full.
pub fn add_candidate(candidates: &mut Vec<SocketAddr>, addr: SocketAddr) {
    if dialable(&addr) && !candidates.contains(&addr) && candidates.len() < MAX_CANDIDATES {
        candidates.push(addr);
    }
}

/// The candidates of one local socket, best first: the first address a peer saw it at, then each public
/// address seen with the socket's own port (`port`), then its host address (`host`, if it is bound to
/// one), then the other addresses peers saw.
///
/// Why the own port: what peers saw are the mappings of flows under way (our paths to them), and a NAT
/// keeps a flow's mapping as long as the flow lasts, even after its own behaviour changed (a symmetric
/// NAT relaxed to a cone one, or replaced): a new flow, which a punch is, gets a fresh mapping that none
/// of them shows. NATs that map endpoint-independently mostly keep the inner port when it is free, so the
/// public address with our own port is where that fresh mapping most likely is. It costs one dial per
/// punch where it is wrong (a symmetric NAT drops it), and makes a relaxed NAT punchable at once.
pub fn socket_candidates(host: Option<SocketAddr>, port: u16, observed: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    if let Some(&first) = observed.first() {
        add_candidate(&mut out, first);
    }
    for seen in observed {
        add_candidate(&mut out, SocketAddr::new(seen.ip(), port));
    }
    if let Some(host) = host {
        add_candidate(&mut out, host);
    }
    for &seen in observed {
        add_candidate(&mut out, seen);
    }
    out
}

/// A digest of a punch's two candidate sets (ours and the target's), in any order, and of our NAT class:
/// a request is sent again at once when it changes (`PunchBook::initiate`), so a class we have just
/// learned reaches the other side soon (a pair random on both sides stops probing at once).
pub fn candidates_digest(ours: &[SocketAddr], theirs: &[SocketAddr], class: NatClass) -> u64 {
    use std::hash::{Hash, Hasher};
    let (mut ours, mut theirs) = (ours.to_vec(), theirs.to_vec());
    ours.sort();
    theirs.sort();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (ours, theirs, class.encode()).hash(&mut hasher);
    hasher.finish()
}

/// The lead an initiator gives (ms): twice its RTT to the relay (there and on to the target, taken as
/// alike) plus `BASE_LEAD_MS`, capped.
pub fn request_delay_ms(rtt_to_relay_us: u64) -> u16 {
    (BASE_LEAD_MS + 2 * rtt_to_relay_us / 1000).min(MAX_DELAY_MS as u64) as u16
}

/// The lead a relay forwards: the request's, less the time the request took to come (half the RTT to
/// the initiator) and the offer will take to arrive (half the RTT to the target), so both start together.
pub fn offer_delay_ms(request_delay_ms: u16, rtt_to_initiator_us: u64, rtt_to_target_us: u64) -> u16 {
    let transit_ms = (rtt_to_initiator_us + rtt_to_target_us) / 2 / 1000;
    request_delay_ms.saturating_sub(transit_ms.min(u16::MAX as u64) as u16)
}

/// One dial of a punch: from local socket `socket` (an index into the caller's list) to `candidate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attempt {
    pub socket: usize,
    pub candidate: SocketAddr,
}

/// The schedule of one punch: every (local socket, remote candidate) pair of the same address family,
/// each socket being the one whose NAT mapping the dial opens, first at `start_us`, then again every
/// `ROUND_GAP_US` until `ROUNDS` rounds are done or the caller reports a path (`handle_connected`).
#[derive(Debug)]
pub struct Schedule {
    pairs: Vec<Attempt>,
    next_round_us: u64,
    rounds_left: u32,
}

impl Schedule {
    /// `sockets`: whether each local socket is IPv4 (a v4 socket cannot dial a v6 candidate).
    pub fn new(sockets_v4: &[bool], candidates: &[SocketAddr], start_us: u64) -> Self {
        let mut pairs = Vec::new();
        for (socket, &v4) in sockets_v4.iter().enumerate() {
            for &candidate in candidates.iter().take(MAX_CANDIDATES) {
                if candidate.is_ipv4() == v4 && dialable(&candidate) {
                    pairs.push(Attempt { socket, candidate });
                }
            }
        }
        let rounds_left = if pairs.is_empty() { 0 } else { ROUNDS };
        Schedule { pairs, next_round_us: start_us, rounds_left }
    }

    /// When `poll` next has dials to start; None when the schedule is over.
    pub fn next_at(&self) -> Option<u64> {
        (self.rounds_left > 0).then_some(self.next_round_us)
    }

    /// The dials to start now (a whole round, once it is due).
    pub fn poll(&mut self, now_us: u64) -> Vec<Attempt> {
        if self.rounds_left == 0 || now_us < self.next_round_us {
            return Vec::new();
        }
        self.rounds_left -= 1;
        self.next_round_us = now_us + ROUND_GAP_US;
        self.pairs.clone()
    }

    /// A path to the peer is up: no more rounds.
    pub fn handle_connected(&mut self) {
        self.rounds_left = 0;
    }

    /// Local socket `socket` has a direct path to the peer: its dials stop, the other sockets' go on (each
    /// WAN of a multi-WAN site punches its own NAT, so the bond gets a direct path on every one of them).
    /// The initiator calls this: it asked for the punch for its sockets that had no direct path.
    pub fn handle_socket_connected(&mut self, socket: usize) {
        self.drop_pairs(|a| a.socket == socket);
    }

    /// Local socket `socket` has a path to `remote` already: no dial of that pair. The target calls this:
    /// its socket with a path to one of the initiator's WANs still dials the initiator's other WANs, whose
    /// punch needs the packets it sends to open its NAT for them.
    pub fn handle_pair_connected(&mut self, socket: usize, remote: SocketAddr) {
        self.drop_pairs(|a| a.socket == socket && a.candidate == remote);
    }

    fn drop_pairs(&mut self, connected: impl Fn(&Attempt) -> bool) {
        self.pairs.retain(|a| !connected(a));
        if self.pairs.is_empty() {
            self.rounds_left = 0;
        }
    }
}

/// A token bucket: `per_second` tokens a second, at most `burst`.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens_milli: u64,
    at_us: u64,
}

/// A request we sent: when, and for which candidates (`candidates_digest`).
#[derive(Clone, Copy, Debug)]
struct Initiated {
    at_us: u64,
    candidates: u64,
}

/// Who punched when, on one node: what it may initiate, answer and forward. Bounded memory.
#[derive(Debug, Default)]
pub struct PunchBook {
    /// Targets we asked a relay for (initiator side).
    initiated: HashMap<[u8; 32], Initiated>,
    /// Initiators whose offer we answered, when (target side).
    answered: HashMap<[u8; 32], u64>,
    /// Per requesting member: its forwarding budget (relay side).
    relayed: HashMap<[u8; 32], Bucket>,
}

fn bound<V>(map: &mut HashMap<[u8; 32], V>, at: impl Fn(&V) -> u64) {
    crate::bounded::make_room(map, MAX_TRACKED, at);
}

/// Whether `key`'s last time in `map` is at least `interval_us` ago (or it has none); records `now_us` if so.
fn due_again(map: &mut HashMap<[u8; 32], u64>, key: &[u8; 32], now_us: u64, interval_us: u64) -> bool {
    if map.get(key).is_some_and(|&at| now_us < at + interval_us) {
        return false;
    }
    bound(map, |&at| at);
    map.insert(*key, now_us);
    true
}

impl PunchBook {
    /// Whether to ask a relay to punch towards `target` now, with candidates whose digest is
    /// `candidates`: no request for it in the last `RETRY_US`, or the candidates changed since the last
    /// one and that is at least `ANSWER_INTERVAL_US` ago. Records it if so.
    pub fn initiate(&mut self, target: &[u8; 32], candidates: u64, now_us: u64) -> bool {
        if let Some(last) = self.initiated.get(target) {
            let changed = last.candidates != candidates && now_us >= last.at_us + ANSWER_INTERVAL_US;
            if now_us < last.at_us + RETRY_US && !changed {
                return false;
            }
        } else {
            bound(&mut self.initiated, |i| i.at_us);
        }
        self.initiated.insert(*target, Initiated { at_us: now_us, candidates });
        true
    }

    /// Whether to answer an offer from `initiator` now (none answered in the last `ANSWER_INTERVAL_US`).
    pub fn answer(&mut self, initiator: &[u8; 32], now_us: u64) -> bool {
        due_again(&mut self.answered, initiator, now_us, ANSWER_INTERVAL_US)
    }

    /// Whether a relay may forward one more request of `requester` now (its token bucket).
    pub fn forward(&mut self, requester: &[u8; 32], now_us: u64) -> bool {
        let full = RELAY_BURST * 1000;
        if !self.relayed.contains_key(requester) {
            bound(&mut self.relayed, |b| b.at_us);
        }
        let bucket = self.relayed.entry(*requester).or_insert(Bucket { tokens_milli: full, at_us: now_us });
        let earned = now_us.saturating_sub(bucket.at_us) * RELAY_PER_SECOND / 1000;
        // Time is taken off only for what it earned, so frequent calls do not round the refill away.
        bucket.at_us += earned * 1000 / RELAY_PER_SECOND;
        bucket.tokens_milli += earned;
        if bucket.tokens_milli >= full {
            bucket.tokens_milli = full;
            bucket.at_us = now_us;
        }
        if bucket.tokens_milli < 1000 {
            return false;
        }
        bucket.tokens_milli -= 1000;
        true
    }

    /// Whether we punched towards `key` (either side) recently enough that a path it accepts now is
    /// the punch's doing.
    pub fn punched_recently(&self, key: &[u8; 32], now_us: u64) -> bool {
        [self.initiated.get(key).map(|i| i.at_us), self.answered.get(key).copied()]
            .into_iter()
            .flatten()
            .any(|at| now_us < at + PUNCHED_WINDOW_US)
    }
}

/// Counters of one node's punching, for status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PunchStats {
    /// Punches this node took part in (as initiator or target).
    pub attempts: u64,
    /// Punched paths that came up.
    pub successes: u64,
    /// Requests this node forwarded as a relay, and punch messages it refused (malformed, non-member,
    /// over the rate, target not connected).
    pub forwarded: u64,
    pub refused: u64,
    /// Punches not tried because both sides' NATs allocate ports at random (`symmetric::approach`): the
    /// relay carries those pairs, and no probe is sent.
    pub skipped: u64,
    /// Birthday probes (`birthday`): packets this node sent as the probing (open) side, extra sockets it
    /// opened as the random side, and how its probes ended (either side: a hit, or the time cap passed).
    pub probes_sent: u64,
    pub probe_sockets: u64,
    pub probe_hits: u64,
    pub probe_misses: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_message_reads_back_and_damage_is_refused() {
        let msg = Message {
            kind: Kind::Request,
            key: [3; 32],
            delay_ms: 250,
            candidates: vec![addr("198.51.100.7:4433"), addr("[2001:db8::1]:9")],
            class: NatClass::Sequential { step: -2 },
            birthday: None,
        };
        let data = encode(&msg);
        assert!(is_punch(&data));
        assert_eq!(decode(&data), Ok(msg.clone()));
        assert_eq!(decode(&data[..data.len() - 1]).unwrap_err(), "truncated");
        assert_eq!(decode(&[data.as_slice(), &[0]].concat()), Err("trailing bytes"));
        let mut bad_type = data.clone();
        bad_type[4] = 9;
        assert_eq!(decode(&bad_type), Err("unknown punch message type"));
        let mut long_delay = data.clone();
        long_delay[37..39].copy_from_slice(&(MAX_DELAY_MS + 1).to_be_bytes());
        assert_eq!(decode(&long_delay), Err("punch delay out of range"));
        let mut many = data.clone();
        many[39] = (MAX_CANDIDATES + 1) as u8;
        assert_eq!(decode(&many), Err("too many candidates"));
        let zero_port = Message { candidates: vec![addr("198.51.100.7:0")], ..msg.clone() };
        assert_eq!(decode(&encode(&zero_port)), Err("candidate cannot be dialed"));
        assert_eq!(decode(b"QEN1"), Err("not a punch message"));
        assert_eq!(decode(&[0; MAX_MESSAGE_LEN + 1]), Err("punch message too long"));
        let mut bad_class = data.clone();
        let at = bad_class.len() - 3;
        bad_class[at] = 7;
        assert_eq!(decode(&bad_class), Err("unknown NAT class"));
        let with_nonce = Message { birthday: Some([5; NONCE_LEN]), ..msg.clone() };
        assert_eq!(decode(&encode(&with_nonce)), Ok(with_nonce.clone()), "the birthday nonce reads back");
        let nonce_cut = encode(&with_nonce);
        assert_eq!(decode(&nonce_cut[..nonce_cut.len() - 1]), Err("trailing bytes"), "a cut nonce is refused");
        let max = Message {
            candidates: vec![addr("[2001:db8::1]:9"); MAX_CANDIDATES],
            birthday: Some([5; NONCE_LEN]),
            ..msg.clone()
        };
        assert_eq!(encode(&max).len(), MAX_MESSAGE_LEN);
    }

    #[test]
    fn encode_leaves_out_what_decode_would_refuse() {
        let many: Vec<SocketAddr> = (1..=20).map(|p| SocketAddr::new([192, 0, 2, 1].into(), p)).collect();
        let msg = Message {
            kind: Kind::Offer,
            key: [1; 32],
            delay_ms: u16::MAX,
            candidates: many,
            class: NatClass::Random,
            birthday: None,
        };
        let back = decode(&encode(&msg)).unwrap();
        assert_eq!(back.candidates.len(), MAX_CANDIDATES);
        assert_eq!(back.delay_ms, MAX_DELAY_MS);
    }

    #[test]
    fn candidates_are_deduplicated_bounded_and_dialable() {
        let mut c = Vec::new();
        add_candidate(&mut c, addr("192.0.2.1:5"));
        add_candidate(&mut c, addr("192.0.2.1:5"));
        add_candidate(&mut c, addr("0.0.0.0:5"));
        add_candidate(&mut c, addr("255.255.255.255:5"));
        add_candidate(&mut c, addr("224.0.0.1:5"));
        assert_eq!(c, vec![addr("192.0.2.1:5")]);
        for p in 10..30 {
            add_candidate(&mut c, SocketAddr::new([192, 0, 2, 1].into(), p));
        }
        assert_eq!(c.len(), MAX_CANDIDATES);
    }

    #[test]
    fn both_sides_start_together_after_the_relay_takes_off_the_transit() {
        // 20 ms to the relay from A, 60 ms from the relay to B.
        let lead = request_delay_ms(20_000);
        assert_eq!(lead, 140);
        // A starts at 140 ms after sending; the offer reaches B at 10 + 30 = 40 ms; B waits 100 ms.
        assert_eq!(offer_delay_ms(lead, 20_000, 60_000), 100);
        // A relay far away leaves no lead: B starts at once.
        assert_eq!(offer_delay_ms(lead, 400_000, 400_000), 0);
        assert_eq!(request_delay_ms(10_000_000), MAX_DELAY_MS);
    }

    #[test]
    fn a_schedule_dials_each_socket_to_each_candidate_of_its_family_in_rounds() {
        let candidates = [addr("198.51.100.7:4433"), addr("10.0.0.7:4433"), addr("[2001:db8::1]:4433")];
        // Two v4 WAN sockets and one v6.
        let mut s = Schedule::new(&[true, true, false], &candidates, 1_000);
        assert_eq!(s.next_at(), Some(1_000));
        assert!(s.poll(999).is_empty(), "nothing before the agreed moment");
        let first = s.poll(1_000);
        assert_eq!(first.len(), 5);
        assert!(first.contains(&Attempt { socket: 1, candidate: addr("10.0.0.7:4433") }));
        assert!(first.contains(&Attempt { socket: 2, candidate: addr("[2001:db8::1]:4433") }));
        assert!(!first.iter().any(|a| a.socket == 2 && a.candidate.is_ipv4()));
        assert!(s.poll(1_000 + ROUND_GAP_US - 1).is_empty());
        assert_eq!(s.poll(1_000 + ROUND_GAP_US), first, "a second round, the same pairs");
        assert!(s.poll(1_000 + 10 * ROUND_GAP_US).is_empty(), "{ROUNDS} rounds at most");
        assert_eq!(s.next_at(), None);
    }

    #[test]
    fn a_schedule_stops_once_connected_and_is_empty_without_pairs() {
        let mut s = Schedule::new(&[true], &[addr("198.51.100.7:1")], 0);
        assert_eq!(s.poll(0).len(), 1);
        s.handle_connected();
        assert_eq!(s.next_at(), None);
        assert!(s.poll(ROUND_GAP_US).is_empty());
        let none = Schedule::new(&[false], &[addr("198.51.100.7:1")], 0);
        assert_eq!(none.next_at(), None);
    }

    #[test]
    fn each_socket_dials_until_it_has_a_direct_path_of_its_own() {
        let candidates = [addr("198.51.100.7:4433"), addr("198.51.100.8:4433")];
        let mut s = Schedule::new(&[true, true], &candidates, 0);
        // Initiator: WAN 0 reached the peer by a plain dial; WAN 1 still punches, to every candidate.
        s.handle_socket_connected(0);
        let round = s.poll(0);
        assert_eq!(round.len(), 2);
        assert!(round.iter().all(|a| a.socket == 1));
        // Target: its socket with a path to one of the initiator's WANs dials only the other one.
        let mut t = Schedule::new(&[true], &candidates, 0);
        t.handle_pair_connected(0, addr("198.51.100.7:4433"));
        assert_eq!(t.poll(0), vec![Attempt { socket: 0, candidate: addr("198.51.100.8:4433") }]);
        t.handle_pair_connected(0, addr("198.51.100.8:4433"));
        assert_eq!(t.next_at(), None, "nothing left to dial: the schedule is over");
        s.handle_socket_connected(1);
        assert_eq!(s.next_at(), None);
    }

    #[test]
    fn initiating_and_answering_are_paced_per_peer() {
        let mut book = PunchBook::default();
        let (a, b) = ([1; 32], [2; 32]);
        assert!(book.initiate(&a, 1, 0));
        assert!(!book.initiate(&a, 1, RETRY_US - 1));
        assert!(book.initiate(&b, 1, 1), "another target is not held back");
        assert!(book.initiate(&a, 1, RETRY_US));
        assert!(book.answer(&a, 0));
        assert!(!book.answer(&a, ANSWER_INTERVAL_US - 1));
        assert!(book.answer(&a, ANSWER_INTERVAL_US));
        assert!(book.punched_recently(&a, ANSWER_INTERVAL_US + PUNCHED_WINDOW_US - 1));
        assert!(!book.punched_recently(&a, RETRY_US + PUNCHED_WINDOW_US));
        assert!(!book.punched_recently(&[9; 32], 0));
    }

    #[test]
    fn changed_candidates_are_punched_at_once_but_not_faster_than_the_target_answers() {
        let mut book = PunchBook::default();
        let a = [1; 32];
        let before = candidates_digest(&[addr("203.0.113.9:41000")], &[addr("198.51.100.7:4433")], NatClass::Open);
        let after = candidates_digest(
            &[addr("203.0.113.9:41000"), addr("203.0.113.9:4433")],
            &[addr("198.51.100.7:4433")],
            NatClass::Open,
        );
        assert_ne!(before, after);
        assert_eq!(
            candidates_digest(&[addr("192.0.2.1:1"), addr("192.0.2.1:2")], &[], NatClass::Open),
            candidates_digest(&[addr("192.0.2.1:2"), addr("192.0.2.1:1")], &[], NatClass::Open),
            "the order does not matter"
        );
        assert_ne!(
            candidates_digest(&[addr("192.0.2.1:1")], &[], NatClass::Open),
            candidates_digest(&[], &[addr("192.0.2.1:1")], NatClass::Open)
        );
        assert_ne!(
            candidates_digest(&[], &[], NatClass::Open),
            candidates_digest(&[], &[], NatClass::Random),
            "a class learned is told at once"
        );
        assert!(book.initiate(&a, before, 0));
        assert!(!book.initiate(&a, before, ANSWER_INTERVAL_US), "the same candidates wait for the timer");
        assert!(!book.initiate(&a, after, ANSWER_INTERVAL_US - 1), "the target would not answer yet");
        assert!(book.initiate(&a, after, ANSWER_INTERVAL_US));
        assert!(!book.initiate(&a, after, 2 * ANSWER_INTERVAL_US));
        assert!(book.initiate(&a, after, ANSWER_INTERVAL_US + RETRY_US), "and the timer goes on");
    }

    #[test]
    fn a_socket_offers_its_public_address_with_its_own_port_for_a_fresh_mapping() {
        let host = Some(addr("172.16.1.2:4433"));
        // A symmetric NAT gave the flows to two peers ports of their own; since relaxed, a new flow would
        // keep port 4433.
        let seen = [addr("10.1.0.1:41000"), addr("10.1.0.1:52000")];
        assert_eq!(
            socket_candidates(host, 4433, &seen),
            vec![addr("10.1.0.1:41000"), addr("10.1.0.1:4433"), addr("172.16.1.2:4433"), addr("10.1.0.1:52000")]
        );
        // A port-keeping NAT: the guess is the address seen, once.
        assert_eq!(
            socket_candidates(host, 4433, &[addr("10.1.0.1:4433")]),
            vec![addr("10.1.0.1:4433"), addr("172.16.1.2:4433")]
        );
        assert_eq!(socket_candidates(None, 4433, &[]), Vec::<SocketAddr>::new());
        let many: Vec<SocketAddr> = (1..=20).map(|i| SocketAddr::new([10, 1, 0, i].into(), 1000)).collect();
        assert_eq!(socket_candidates(host, 4433, &many).len(), MAX_CANDIDATES);
    }

    #[test]
    fn a_relay_forwards_a_burst_then_at_its_rate_per_member() {
        let mut book = PunchBook::default();
        let (a, b) = ([1; 32], [2; 32]);
        let forwarded = (0..20).filter(|_| book.forward(&a, 0)).count();
        assert_eq!(forwarded, RELAY_BURST as usize);
        assert!(book.forward(&b, 0), "another member has its own budget");
        assert!(!book.forward(&a, 1_000_000 / RELAY_PER_SECOND - 1));
        assert!(book.forward(&a, 1_000_000 / RELAY_PER_SECOND));
        // Idle for long: the budget refills to the burst, no further.
        let refilled = (0..20).filter(|_| book.forward(&a, 1_000_000_000)).count();
        assert_eq!(refilled, RELAY_BURST as usize);
    }

    #[test]
    fn the_book_is_bounded() {
        let mut book = PunchBook::default();
        for i in 0..(MAX_TRACKED + 10) as u64 {
            let mut key = [0; 32];
            key[..8].copy_from_slice(&i.to_be_bytes());
            book.initiate(&key, 0, i);
            book.forward(&key, i);
        }
        assert!(book.initiated.len() <= MAX_TRACKED && book.relayed.len() <= MAX_TRACKED);
    }
}
