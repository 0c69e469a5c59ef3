//! Relays run by the user: a member with `relay = true` (gateways by default) forwards opaque QUIC packets
//! between two members of its network that cannot reach each other directly (symmetric NATs). The two
//! members' QUIC connection runs end to end inside the relay's packets: each member sends it over a
//! virtual socket whose datagrams travel in DATAGRAM frames of its own authenticated path to the relay,
//! tagged with the destination member's key; the relay rewrites the tag to the source's key and passes it
//! on. The relay sees keys, lengths and ciphertext, nothing else. Here: the wire format, the relay's
//! per-member limits and the member's decision of when to dial through a relay (no I/O, fake clock).
//!
//! Wire format:
//! ```text
//! RELAY_TO        0x07 | key: [u8; 32] | handle: u32 | flags: u8 | QUIC packet (1..=MAX_RELAYED_PACKET bytes)
//!                 DATAGRAM member → relay; key: the destination member; handle: the destination's path to
//!                 the relay to pass it on by (0: the relay chooses, see below).
//! RELAY_FROM      0x08 | key: [u8; 32] | handle: u32 | flags: u8 | QUIC packet
//!                 DATAGRAM relay → member; key: the source member; handle: the source's path to the relay
//!                 it came on. Two types, not one, so that a node that is both a relay and a member never
//!                 mistakes one direction for the other.
//! flags           bit 0 (DIALED): the sender dialed the QUIC connection the packet belongs to; the other
//!                 bits are zero. Copied through by the relay.
//! RELAY offer     "QER1"   on its own QUIC unidirectional stream of a path: the sender relays for the
//!                          members of its network (sent by a relay when a member's path starts).
//! RELAY withdraw  "QER0"   likewise: the sender no longer relays (relaying turned off at run time).
//! ```
//!
//! Handles make a relayed path per WAN: a member runs one relayed endpoint per WAN it reaches the relay by,
//! sending on that WAN's path only, and the relay sends each packet back by the very path the other end's
//! packets came on. The dialer of a connection knows no handle of the member it dials: it sends 0, the
//! relay takes the member's oldest path (stable, so an Initial and its retransmissions reach the same
//! endpoint), and the dialer learns the handle from the answer. The acceptor answers each dialer's path by
//! its handle. Types 0x05 and 0x06 were the format without handles (one relayed path per relay).

use std::collections::HashMap;

/// Frame types of RELAY datagrams; the bond's frames are 0x01-0x04 (`frame.rs`).
pub const RELAY_TO: u8 = 0x07;
pub const RELAY_FROM: u8 = 0x08;
pub const RELAY_HEADER_LEN: usize = 1 + 32 + 4 + 1;
/// The handle that lets the relay choose the destination's path.
pub const ANY_PATH: u32 = 0;
/// `flags` bit: the sender dialed the connection (else it accepted it).
pub const DIALED: u8 = 0x01;
/// Largest QUIC packet a relay carries: a full 1500-byte Ethernet path's UDP payload. The real bound is
/// the DATAGRAM size of the path it goes on (quinn refuses what does not fit).
pub const MAX_RELAYED_PACKET: usize = 1472;
pub const OFFER: &[u8; 4] = b"QER1";
pub const WITHDRAW: &[u8; 4] = b"QER0";

/// Each member's share of a relay by default (`[network] relay_rate_mbit`): 50 Mbit/s sustained with a
/// 256 KiB burst. A relay is a user's gateway on a home or office uplink; no member may take all of it,
/// and a relayed path is a fallback anyway.
pub const RATE_BYTES_PER_S: u64 = 50_000_000 / 8;
pub const BURST_BYTES: u64 = 256 * 1024;
/// Bytes that may wait in the destination path's send queue before relayed packets are dropped: the
/// destination's own bond traffic shares that queue, and QUIC drops the oldest beyond its bound.
pub const QUEUE_BYTES: u64 = 256 * 1024;
/// Sources tracked by a relay's limiter (bounded memory; a network's size limit).
pub const MAX_TRACKED: usize = 1024;

/// A member dials through a relay when it has had no path to a member it wants for this long: a direct
/// dial to a public endpoint answers within one RTT, and most punches land within a second of the
/// request (`punch::BASE_LEAD_MS` plus the relay's RTT). Later than that, the relayed path carries the
/// first packets (the issue's goal: the first packet within 2 s) while punching goes on; it stays as the
/// fallback (every pair gets one, see `FALLBACK_AFTER_US`: keepalives through the relay, no data while a
/// direct path is up).
pub const DIAL_AFTER_US: u64 = 1_000_000;
/// No direct path is coming soon (our own NAT maps per destination, so a punch needs luck; or we know no
/// endpoint of the member yet): dial the relay at once, punching going on in parallel.
pub const DIAL_AFTER_UNLIKELY_US: u64 = 0;
/// A relayed dial that failed is tried again after this long, twice as long after each further failure
/// up to `RETRY_MAX_US` (a member that is offline, told of by member news, is not dialed every 5 s forever).
pub const RETRY_US: u64 = 5_000_000;
pub const RETRY_MAX_US: u64 = 60_000_000;
/// A member reached only by direct (or punched) paths gets a relayed one too, this long after: the
/// fallback that takes the traffic when the direct paths die, within the health check's down time (a
/// relayed dial only then would leave the flow without a path for the QUIC idle timeout, the dial plan's
/// wait and a handshake through the relay: seconds). Not at once: a pair still punching or dialing its
/// other WANs is usually direct on every one of them by then, and a relay is only asked for one path.
pub const FALLBACK_AFTER_US: u64 = 2_000_000;

/// Which way a RELAY datagram goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// To the relay, for the member named.
    To,
    /// From the relay, from the member named.
    From,
}

/// A RELAY datagram's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub direction: Direction,
    /// To: the destination member; From: the source member.
    pub key: [u8; 32],
    /// To: the destination's path to pass it on by (`ANY_PATH`: the relay's choice); From: the source's
    /// path it came on.
    pub handle: u32,
    /// The sender dialed the connection the packet belongs to.
    pub dialed: bool,
}

/// A RELAY_TO datagram carrying `packet` for member `dest` by its path `handle`.
pub fn encode_to(dest: &[u8; 32], handle: u32, dialed: bool, packet: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RELAY_HEADER_LEN + packet.len());
    out.push(RELAY_TO);
    out.extend_from_slice(dest);
    out.extend_from_slice(&handle.to_be_bytes());
    out.push(if dialed { DIALED } else { 0 });
    out.extend_from_slice(packet);
    out
}

/// Whether a datagram is a RELAY datagram (else it is the bond's).
pub fn is_relay(datagram: &[u8]) -> bool {
    matches!(datagram.first(), Some(&RELAY_TO | &RELAY_FROM))
}

/// The header and packet of a RELAY datagram; None if it is none, its flags are unknown, or its packet is
/// empty or too long.
pub fn decode(datagram: &[u8]) -> Option<(Header, &[u8])> {
    if !is_relay(datagram)
        || datagram.len() <= RELAY_HEADER_LEN
        || datagram.len() > RELAY_HEADER_LEN + MAX_RELAYED_PACKET
    {
        return None;
    }
    let direction = if datagram[0] == RELAY_TO { Direction::To } else { Direction::From };
    let key: [u8; 32] = datagram[1..33].try_into().ok()?;
    let handle = u32::from_be_bytes(datagram[33..37].try_into().ok()?);
    let dialed = match datagram[37] {
        0 => false,
        DIALED => true,
        _ => return None,
    };
    Some((Header { direction, key, handle, dialed }, &datagram[RELAY_HEADER_LEN..]))
}

/// Turns a RELAY_TO datagram into the RELAY_FROM one the relay passes on, in place: it names the source
/// `source` and its path `source_handle` instead of the destination's; flags and packet are untouched.
pub fn turn_around(datagram: &mut [u8], source: &[u8; 32], source_handle: u32) {
    if datagram.first() == Some(&RELAY_TO) && datagram.len() >= RELAY_HEADER_LEN {
        datagram[0] = RELAY_FROM;
        datagram[1..33].copy_from_slice(source);
        datagram[33..37].copy_from_slice(&source_handle.to_be_bytes());
    }
}

/// The handle a relay gives a member's path: its path id, never `ANY_PATH`.
pub fn handle_of(path_id: u64) -> u32 {
    (path_id % u32::MAX as u64) as u32 + 1
}

/// What a relay does with one RELAY datagram, and why it drops one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Forward,
    /// The source is over its rate (its bucket is empty).
    DropRate,
    /// The destination's send queue is over `QUEUE_BYTES`.
    DropQueue,
}

/// Counters of a relay (and of a member's use of relays), shown by `quicether status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Relay side: datagrams and bytes passed on.
    pub forwarded_packets: u64,
    pub forwarded_bytes: u64,
    /// Relay side, drops by cause: relaying is off here; the source or destination is no member of our
    /// network; the destination has no path up; malformed; over the source's rate; destination queue full.
    pub dropped_disabled: u64,
    pub dropped_not_member: u64,
    pub dropped_no_route: u64,
    pub dropped_malformed: u64,
    pub dropped_rate: u64,
    pub dropped_queue: u64,
    /// Relay side: a RELAY_TO that came over a relayed path itself (relays do not chain).
    pub dropped_chained: u64,
    /// Member side: packets sent and received through relays; received ones dropped (from a non-member,
    /// or the virtual socket's queue was full); relayed dials started.
    pub sent_packets: u64,
    pub received_packets: u64,
    pub received_dropped: u64,
    pub dials: u64,
}

impl RelayStats {
    /// (name, value) pairs, for status.
    pub fn fields(&self) -> [(&'static str, u64); 13] {
        [
            ("forwarded_packets", self.forwarded_packets),
            ("forwarded_bytes", self.forwarded_bytes),
            ("dropped_disabled", self.dropped_disabled),
            ("dropped_not_member", self.dropped_not_member),
            ("dropped_no_route", self.dropped_no_route),
            ("dropped_malformed", self.dropped_malformed),
            ("dropped_rate", self.dropped_rate),
            ("dropped_queue", self.dropped_queue),
            ("dropped_chained", self.dropped_chained),
            ("sent_packets", self.sent_packets),
            ("received_packets", self.received_packets),
            ("received_dropped", self.received_dropped),
            ("dials", self.dials),
        ]
    }
}

/// A token bucket in bytes.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: u64,
    at_us: u64,
}

/// The relay's per-member limits: a token bucket per source member, and the destination queue bound.
#[derive(Debug)]
pub struct Limiter {
    rate_bytes_per_s: u64,
    burst_bytes: u64,
    queue_bytes: u64,
    buckets: HashMap<[u8; 32], Bucket>,
}

impl Default for Limiter {
    fn default() -> Self {
        Self::new(RATE_BYTES_PER_S, BURST_BYTES, QUEUE_BYTES)
    }
}

impl Limiter {
    pub fn new(rate_bytes_per_s: u64, burst_bytes: u64, queue_bytes: u64) -> Self {
        Self { rate_bytes_per_s, burst_bytes, queue_bytes, buckets: HashMap::new() }
    }

    /// Decides on a `len`-byte datagram from member `source` whose destination path has `dest_queued`
    /// bytes waiting. A packet dropped for the queue costs its source no tokens.
    pub fn handle_packet(&mut self, source: &[u8; 32], len: usize, dest_queued: u64, now_us: u64) -> Verdict {
        if dest_queued > self.queue_bytes {
            return Verdict::DropQueue;
        }
        if !self.buckets.contains_key(source) {
            // Forget the stalest source: a full bucket is what it would have again after a second idle.
            crate::bounded::make_room(&mut self.buckets, MAX_TRACKED, |b| b.at_us);
        }
        let burst = self.burst_bytes;
        let bucket = self.buckets.entry(*source).or_insert(Bucket { tokens: burst, at_us: now_us });
        let elapsed = now_us.saturating_sub(bucket.at_us);
        let refill = (elapsed as u128 * self.rate_bytes_per_s as u128 / 1_000_000) as u64;
        bucket.tokens = bucket.tokens.saturating_add(refill).min(burst);
        bucket.at_us = now_us.max(bucket.at_us);
        if bucket.tokens < len as u64 {
            return Verdict::DropRate;
        }
        bucket.tokens -= len as u64;
        Verdict::Forward
    }

    /// Each member's rate from now on (bytes/s; 0: none may send).
    pub fn set_rate(&mut self, rate_bytes_per_s: u64) {
        self.rate_bytes_per_s = rate_bytes_per_s;
    }

    pub fn rate(&self) -> u64 {
        self.rate_bytes_per_s
    }

    /// Forgets a member (removed or revoked).
    pub fn forget(&mut self, source: &[u8; 32]) {
        self.buckets.remove(source);
    }
}

/// The paths we have to a member, as the dial plan needs to know them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathsToMember {
    /// A path not through a relay (direct or punched).
    pub direct: bool,
    /// A path through a relay.
    pub relayed: bool,
}

/// A member's decision of when to dial a member through a relay: once it has wanted a path to it and had
/// none for `DIAL_AFTER_US` (at once if no direct path is likely soon), or had only direct ones for
/// `FALLBACK_AFTER_US` (the fallback), then after `RETRY_US`, doubling to `RETRY_MAX_US`, while no
/// relayed path is there.
///
/// `K` names what is dialed: a member, or (a member's relayed path per WAN) a member and one of our WANs.
#[derive(Debug)]
pub struct DialPlan<K = [u8; 32]> {
    /// Per member: since when it has had no relayed path (µs), when we last dialed it through a relay, and
    /// the wait before the next dial.
    wanted: HashMap<K, (u64, Option<u64>, u64)>,
}

impl<K> Default for DialPlan<K> {
    fn default() -> Self {
        Self { wanted: HashMap::new() }
    }
}

impl<K: std::hash::Hash + Eq + Clone> DialPlan<K> {
    /// Called on every tick for each member we want a path to, with the paths we have to it. A relayed
    /// path is kept once there, direct paths or not: it is the fallback. True: dial it through a relay now.
    /// `direct_unlikely`: no direct path is coming soon (our NAT maps per destination, or we know no
    /// endpoint of the member), so the relay is dialed at once.
    pub fn handle_tick(&mut self, key: &K, paths: PathsToMember, direct_unlikely: bool, now_us: u64) -> bool {
        if paths.relayed {
            self.wanted.remove(key);
            return false;
        }
        if !self.wanted.contains_key(key) && self.wanted.len() >= MAX_TRACKED {
            return false;
        }
        let (since, last, retry) = self.wanted.entry(key.clone()).or_insert((now_us, None, RETRY_US));
        let wait = match (paths.direct, direct_unlikely) {
            (true, _) => FALLBACK_AFTER_US,
            (false, true) => DIAL_AFTER_UNLIKELY_US,
            (false, false) => DIAL_AFTER_US,
        };
        let due = match last {
            None => now_us >= *since + wait,
            Some(at) => now_us >= *at + *retry,
        };
        if due {
            if last.is_some() {
                *retry = (*retry * 2).min(RETRY_MAX_US);
            }
            *last = Some(now_us);
        }
        due
    }

    /// Forgets members no longer wanted (removed from the peer table, or a WAN gone).
    pub fn retain(&mut self, keep: impl Fn(&K) -> bool) {
        self.wanted.retain(|k, _| keep(k));
    }
}

/// The relay to dial member `target` through: among `ours` (the relays that offered to relay for us and
/// that we have a path to, with its RTT), one that `named` lists (the relays `target`'s DHT record says it
/// can be reached through: it is connected to them), else any (it may be connected to it all the same);
/// the lowest RTT first. Never `target` itself.
pub fn choose_relay(target: &[u8; 32], ours: &[([u8; 32], u64)], named: &[[u8; 32]]) -> Option<[u8; 32]> {
    let usable = || ours.iter().filter(|(k, _)| k != target);
    let best = |it: &mut dyn Iterator<Item = &([u8; 32], u64)>| it.min_by_key(|(_, rtt)| *rtt).map(|(k, _)| *k);
    best(&mut usable().filter(|(k, _)| named.contains(k))).or_else(|| best(&mut usable()))
}

/// The relays to name in our DHT record (`record::MAX_RELAYS` at most): those of `ours` (offered, path up)
/// with the lowest RTT, in key order so an unchanged set publishes nothing new.
pub fn record_relays(ours: &[([u8; 32], u64)], max: usize) -> Vec<[u8; 32]> {
    let mut by_rtt = ours.to_vec();
    by_rtt.sort_by_key(|(k, rtt)| (*rtt, *k));
    let mut keys: Vec<[u8; 32]> = by_rtt.into_iter().take(max).map(|(k, _)| k).collect();
    keys.sort();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 32] = [1; 32];
    const B: [u8; 32] = [2; 32];

    #[test]
    fn a_relay_datagram_reads_back_and_bad_ones_are_refused() {
        let d = encode_to(&B, ANY_PATH, true, b"quic packet");
        let to = Header { direction: Direction::To, key: B, handle: ANY_PATH, dialed: true };
        assert_eq!(decode(&d), Some((to, &b"quic packet"[..])));
        let mut passed_on = d.clone();
        turn_around(&mut passed_on, &A, 7);
        let from = Header { direction: Direction::From, key: A, handle: 7, dialed: true };
        assert_eq!(decode(&passed_on), Some((from, &b"quic packet"[..])));
        let mut twice = passed_on.clone();
        turn_around(&mut twice, &B, 9);
        assert_eq!(twice, passed_on, "a RELAY_FROM datagram is never turned around again");
        let answer = encode_to(&A, 7, false, b"answer");
        assert_eq!(decode(&answer).map(|(h, _)| (h.handle, h.dialed)), Some((7, false)));
        assert_eq!(decode(&encode_to(&B, 1, false, b"")), None, "empty packet");
        assert_eq!(decode(&d[..RELAY_HEADER_LEN - 1]), None, "truncated header");
        assert_eq!(decode(&encode_to(&B, 1, false, &[0; MAX_RELAYED_PACKET + 1])), None, "too long");
        assert!(decode(&encode_to(&B, 1, false, &[0; MAX_RELAYED_PACKET])).is_some());
        let mut unknown_flags = d.clone();
        unknown_flags[37] = 0x02;
        assert_eq!(decode(&unknown_flags), None, "flags this version does not know");
        assert_eq!(decode(&[0x01; 40]), None, "a bond frame");
        assert_eq!(decode(&[0x05; 60]), None, "the old format without handles");
        assert!(!is_relay(&[]));
    }

    #[test]
    fn path_handles_are_never_the_any_path_handle() {
        assert_eq!(handle_of(0), 1);
        assert_ne!(handle_of(u32::MAX as u64 - 1), ANY_PATH);
        assert_ne!(handle_of(u32::MAX as u64), ANY_PATH);
        assert_ne!(handle_of(u64::MAX), ANY_PATH);
        assert_ne!(handle_of(5), handle_of(6));
    }

    #[test]
    fn each_member_gets_its_rate_and_others_are_not_throttled() {
        // 1000 bytes/s, burst 3000.
        let mut limiter = Limiter::new(1000, 3000, 10_000);
        let mut forwarded = 0;
        for _ in 0..10 {
            if limiter.handle_packet(&A, 1000, 0, 0) == Verdict::Forward {
                forwarded += 1;
            }
        }
        assert_eq!(forwarded, 3, "the burst, then nothing");
        assert_eq!(limiter.handle_packet(&B, 1000, 0, 0), Verdict::Forward, "another member has its own bucket");
        assert_eq!(limiter.handle_packet(&A, 1000, 0, 500_000), Verdict::DropRate, "half a second: 500 bytes");
        assert_eq!(limiter.handle_packet(&A, 1000, 0, 1_000_000), Verdict::Forward, "a second: 1000 bytes");
        // Idle for long: back to the burst, not beyond.
        let later = 100_000_000;
        let burst: Vec<_> = (0..4).map(|_| limiter.handle_packet(&A, 1000, 0, later)).collect();
        assert_eq!(burst, vec![Verdict::Forward, Verdict::Forward, Verdict::Forward, Verdict::DropRate]);
        // A clock that goes back does not mint tokens.
        assert_eq!(limiter.handle_packet(&A, 1000, 0, 0), Verdict::DropRate);
    }

    #[test]
    fn a_full_destination_queue_drops_without_costing_the_source() {
        let mut limiter = Limiter::new(1000, 1000, 10_000);
        assert_eq!(limiter.handle_packet(&A, 1000, 10_001, 0), Verdict::DropQueue);
        assert_eq!(limiter.handle_packet(&A, 1000, 10_000, 0), Verdict::Forward, "the bucket was untouched");
    }

    #[test]
    fn the_limiter_tracks_a_bounded_number_of_sources() {
        let mut limiter = Limiter::new(1000, 1000, 10_000);
        for i in 0..(MAX_TRACKED as u32 + 10) {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            limiter.handle_packet(&key, 1, 0, i as u64);
        }
        assert_eq!(limiter.buckets.len(), MAX_TRACKED);
        limiter.forget(&[0; 32]);
    }

    const NONE: PathsToMember = PathsToMember { direct: false, relayed: false };
    const DIRECT: PathsToMember = PathsToMember { direct: true, relayed: false };
    const RELAYED: PathsToMember = PathsToMember { direct: false, relayed: true };
    const BOTH: PathsToMember = PathsToMember { direct: true, relayed: true };

    #[test]
    fn a_member_without_a_path_is_dialed_through_a_relay_after_a_wait_then_retried() {
        let mut plan = DialPlan::default();
        assert!(!plan.handle_tick(&A, NONE, false, 0));
        assert!(!plan.handle_tick(&A, NONE, false, DIAL_AFTER_US - 1));
        assert!(plan.handle_tick(&A, NONE, false, DIAL_AFTER_US));
        assert!(!plan.handle_tick(&A, NONE, false, DIAL_AFTER_US + 1), "one dial, not one per tick");
        assert!(plan.handle_tick(&A, NONE, false, DIAL_AFTER_US + RETRY_US), "retried while none is up");
        // Each further failure doubles the wait, up to the maximum.
        let mut at = DIAL_AFTER_US + RETRY_US;
        for wait in [2 * RETRY_US, 4 * RETRY_US, 8 * RETRY_US, RETRY_MAX_US, RETRY_MAX_US] {
            assert!(!plan.handle_tick(&A, NONE, false, at + wait - 1));
            assert!(plan.handle_tick(&A, NONE, false, at + wait), "after {wait} µs");
            at += wait;
        }
        // A relayed path came up: nothing more, and the wait starts over if it goes.
        assert!(!plan.handle_tick(&A, RELAYED, false, at + 1));
        assert!(!plan.handle_tick(&A, NONE, false, at + 2));
        assert!(plan.handle_tick(&A, NONE, false, at + 2 + DIAL_AFTER_US));
        assert!(plan.handle_tick(&A, NONE, false, at + 2 + DIAL_AFTER_US + RETRY_US), "the backoff starts over");
    }

    #[test]
    fn a_member_reached_directly_gets_a_relayed_fallback_and_keeps_it() {
        let mut plan = DialPlan::default();
        assert!(!plan.handle_tick(&A, DIRECT, false, 0));
        assert!(!plan.handle_tick(&A, DIRECT, false, FALLBACK_AFTER_US - 1), "the direct paths settle first");
        assert!(plan.handle_tick(&A, DIRECT, false, FALLBACK_AFTER_US));
        assert!(!plan.handle_tick(&A, DIRECT, false, FALLBACK_AFTER_US + 1), "one dial, not one per tick");
        assert!(plan.handle_tick(&A, DIRECT, false, FALLBACK_AFTER_US + RETRY_US), "a failed dial is retried");
        // Both up: the relayed path stays, nothing is dialed; once the direct ones go, nothing either.
        assert!(!plan.handle_tick(&A, BOTH, false, 30_000_000));
        assert!(!plan.handle_tick(&A, RELAYED, false, 31_000_000));
        // A member that had no path and then got a direct one is dialed without waiting again.
        assert!(!plan.handle_tick(&B, NONE, false, 0));
        assert!(plan.handle_tick(&B, DIRECT, false, FALLBACK_AFTER_US));
    }

    #[test]
    fn behind_a_symmetric_nat_the_relay_is_dialed_at_once() {
        let mut plan = DialPlan::default();
        assert!(plan.handle_tick(&B, NONE, true, 7));
        plan.retain(|k| *k != B);
        assert!(plan.wanted.is_empty());
    }

    #[test]
    fn a_relay_the_member_names_is_chosen_over_a_faster_one_it_does_not() {
        let (r1, r2, r3) = ([11; 32], [12; 32], [13; 32]);
        let ours = [(r1, 5_000), (r2, 40_000)];
        // B's record names r2 (and r3, which we have no path to): r2, though r1 is faster.
        assert_eq!(choose_relay(&B, &ours, &[r3, r2]), Some(r2));
        // Names none of ours: the fastest of ours, as without a record.
        assert_eq!(choose_relay(&B, &ours, &[r3]), Some(r1));
        assert_eq!(choose_relay(&B, &ours, &[]), Some(r1));
        // Never the target itself, named or not; none at all without a relay.
        assert_eq!(choose_relay(&r1, &ours, &[r1]), Some(r2));
        assert_eq!(choose_relay(&B, &[], &[r1]), None);
    }

    #[test]
    fn the_record_names_the_fastest_relays_in_a_stable_order() {
        let ours = [([9; 32], 30), ([1; 32], 20), ([5; 32], 10)];
        assert_eq!(record_relays(&ours, 2), vec![[1; 32], [5; 32]]);
        assert_eq!(record_relays(&ours, 4), vec![[1; 32], [5; 32], [9; 32]]);
        assert!(record_relays(&[], 4).is_empty());
    }
}
