//! The reorder buffer at the receiver: packets of one peer arrive over several paths with different
//! delays; this releases them in bond-sequence order.
//!
//! - In order: released at once. Ahead of a gap: held until the gap fills or the oldest held packet has
//!   waited `timeout` (set from the measured RTT spread between paths, not a constant), or more than
//!   `max_packets` are held. Then the gap is skipped.
//! - A packet whose gap was skipped and that arrives later is still delivered (late beats lost for TCP);
//!   a second copy of a packet already delivered (redundant mode) is dropped.
//! - A sequence number far outside the window (the sender restarted) resynchronises the buffer.
//! - Fast loss detection: each path delivers in order, so once every live path has passed a gap (delivered
//!   a later sequence number, or vouched for it in a probe), the gap is lost and is skipped at once; the
//!   timeout is only the fallback for paths that went quiet.
//! - A known loss can be repaired: the buffer lists it for a NACK (`take_nacks`), and waits up to
//!   `retransmit_wait` for the sender's copy (sent on the fastest path) before skipping it. Outer losses
//!   then cost the inner TCP one short delay instead of a halved window.
//! - The timeout learns: a packet that arrives late after its gap was skipped shows the wait was too
//!   short (queues at the sender are invisible to the receiver's RTT estimates); the timeout grows to
//!   cover it, and decays back slowly.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

/// Sequence numbers further than this from the expected one mean the sender restarted.
pub const RESYNC_DISTANCE: u64 = 1 << 24;
/// How many skipped sequence numbers we remember, to tell late packets from duplicates.
const SKIPPED_MEMORY: usize = 16_384;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReorderStats {
    pub in_order: u64,
    /// Released from the buffer after waiting for an earlier packet.
    pub reordered: u64,
    /// Arrived after their gap was skipped; delivered anyway.
    pub late: u64,
    pub duplicates: u64,
    /// Sequence numbers given up on (lost, or late beyond the timeout, or `overflowed`).
    pub skipped: u64,
    /// Of `skipped`: given up on early because more than `max_packets` were held behind them (the
    /// buffer's bound, its drop counter).
    pub overflowed: u64,
    pub resyncs: u64,
    /// Known losses that arrived after all (retransmitted on request, or just late on their path).
    pub repaired: u64,
}

/// Upper bound of the reorder timeout: beyond it, waiting costs more than a retransmission.
pub const MAX_TIMEOUT_US: u64 = 300_000;
/// A path's progress mark counts while it is this fresh (probes refresh it every 50 ms on a live path).
pub const MARK_FRESH_US: u64 = 200_000;
/// Each decay step keeps this fraction of the learned timeout.
const LEARNED_DECAY: f64 = 0.95;

pub struct ReorderBuffer<T> {
    next: Option<u64>,
    held: BTreeMap<u64, (T, u64)>,
    /// Skipped sequence numbers and when they were skipped.
    skipped: BTreeMap<u64, u64>,
    /// Timeout derived from RTTs (set by the caller).
    base_timeout_us: u64,
    /// Timeout learned from late arrivals.
    learned_timeout_us: u64,
    timeout_us: u64,
    max_packets: usize,
    /// Per path: the highest sequence number it has delivered or vouched for, and when.
    marks: Vec<(u64, u64, u64)>,
    /// Sequence numbers known lost, with when to stop waiting for their retransmission.
    lost: BTreeMap<u64, u64>,
    /// How long to wait for a retransmission of a known loss (0: skip at once, no NACKs).
    retransmit_wait_us: u64,
    /// Losses detected since the last `take_nacks`.
    nacks: Vec<u64>,
    pub stats: ReorderStats,
}

impl<T> ReorderBuffer<T> {
    pub fn new(timeout_us: u64, max_packets: usize) -> Self {
        Self {
            next: None,
            held: BTreeMap::new(),
            skipped: BTreeMap::new(),
            base_timeout_us: timeout_us,
            learned_timeout_us: 0,
            timeout_us,
            max_packets,
            marks: Vec::new(),
            lost: BTreeMap::new(),
            retransmit_wait_us: 0,
            nacks: Vec::new(),
            stats: ReorderStats::default(),
        }
    }

    /// How long a known loss waits for its retransmission; 0 turns NACKs off.
    pub fn set_retransmit_wait_us(&mut self, wait_us: u64) {
        self.retransmit_wait_us = wait_us;
    }

    /// Sequence numbers found lost since the last call: ask the sender for them.
    pub fn take_nacks(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.nacks)
    }

    fn declare_lost(&mut self, seq: u64, now_us: u64) {
        let Some(next) = self.next else { return };
        if seq < next || self.held.contains_key(&seq) || self.lost.contains_key(&seq) {
            return;
        }
        self.lost.insert(seq, now_us + self.retransmit_wait_us);
        if self.retransmit_wait_us > 0 {
            self.nacks.push(seq);
        }
        // Bounded like the rest: the oldest entries go first.
        while self.lost.len() > self.max_packets {
            self.lost.pop_first();
        }
    }

    /// Sets the RTT-derived timeout and decays the learned one one step; call periodically.
    pub fn set_timeout_us(&mut self, timeout_us: u64) {
        self.base_timeout_us = timeout_us;
        self.learned_timeout_us = (self.learned_timeout_us as f64 * LEARNED_DECAY) as u64;
        self.timeout_us = self.base_timeout_us.max(self.learned_timeout_us).min(MAX_TIMEOUT_US);
    }

    fn learn_from_late(&mut self, skipped_at_us: u64, now_us: u64) {
        // It needed this much more than the timeout it got; add a quarter for next time.
        let needed = self.timeout_us + now_us.saturating_sub(skipped_at_us);
        self.learned_timeout_us = self.learned_timeout_us.max(needed + needed / 4).min(MAX_TIMEOUT_US);
        self.timeout_us = self.base_timeout_us.max(self.learned_timeout_us).min(MAX_TIMEOUT_US);
    }

    pub fn timeout_us(&self) -> u64 {
        self.timeout_us
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Records that `path` has passed `seq` (delivered it, or a probe said every earlier one was sent),
    /// and skips gaps every live path has passed.
    pub fn mark_passed(&mut self, path: u64, seq: u64, now_us: u64, out: &mut Vec<T>) {
        match self.marks.iter_mut().find(|m| m.0 == path) {
            Some(mark) => {
                mark.1 = mark.1.max(seq);
                mark.2 = now_us;
            }
            None => self.marks.push((path, seq, now_us)),
        }
        self.skip_lost(now_us, out);
    }

    /// Forgets a closed path's progress.
    pub fn forget_path(&mut self, path: u64) {
        self.marks.retain(|m| m.0 != path);
    }

    /// Gaps every live path has passed are lost: declared so (to be repaired or skipped).
    fn skip_lost(&mut self, now_us: u64, out: &mut Vec<T>) {
        let passed = self.marks.iter().filter(|m| now_us <= m.2 + MARK_FRESH_US).map(|m| m.1).min();
        let (Some(passed), Some(next)) = (passed, self.next) else { return };
        let gap_end = self.held.range(..=passed).next_back().map(|(&s, _)| s).unwrap_or(next).min(passed + 1);
        if gap_end.saturating_sub(next) > self.max_packets as u64 {
            // A gap this wide is not worth repairing packet by packet.
            self.skip_gap(now_us, out);
            return;
        }
        for seq in next..gap_end {
            self.declare_lost(seq, now_us);
        }
        self.skip_known_lost(now_us, out);
    }

    /// Accepts packet `seq` from `path` arriving at `now_us`; `prev_on_path` is the packet sent before it
    /// on the same path: if that one has not arrived, it was lost (paths deliver in order) and is not
    /// waited for. Pushes what may be delivered now, in order, onto `out`.
    pub fn push_from(
        &mut self,
        path: u64,
        seq: u64,
        prev_on_path: Option<u64>,
        item: T,
        now_us: u64,
        out: &mut Vec<T>,
    ) {
        if let Some(prev) = prev_on_path {
            let last_seen = self.marks.iter().find(|m| m.0 == path).map(|m| m.1);
            if last_seen.is_none_or(|l| prev > l) {
                self.declare_lost(prev, now_us);
            }
        }
        self.push(seq, item, now_us, out);
        self.mark_passed(path, seq, now_us, out);
        self.skip_known_lost(now_us, out);
    }

    /// Skips the gap at the head while it consists of known losses whose wait for a retransmission is over.
    fn skip_known_lost(&mut self, now_us: u64, out: &mut Vec<T>) {
        while let Some(next) = self.next {
            match self.lost.get(&next) {
                Some(&give_up) if give_up <= now_us => {
                    self.lost.remove(&next);
                }
                _ => break,
            }
            self.skipped.insert(next, now_us);
            self.stats.skipped += 1;
            self.next = Some(next + 1);
            self.release_run(out);
        }
        if let Some(next) = self.next {
            // Forget lost marks the window has passed.
            while self.lost.first_key_value().is_some_and(|(&s, _)| s < next) {
                self.lost.pop_first();
            }
        }
    }

    /// Accepts packet `seq` arriving at `now_us`; pushes what may be delivered now, in order, onto `out`.
    pub fn push(&mut self, seq: u64, item: T, now_us: u64, out: &mut Vec<T>) {
        if self.lost.remove(&seq).is_some() {
            self.stats.repaired += 1;
        }
        let next = *self.next.get_or_insert(seq);
        if seq.abs_diff(next) > RESYNC_DISTANCE {
            self.stats.resyncs += 1;
            self.flush(out);
            self.skipped.clear();
            self.next = Some(seq);
            return self.push(seq, item, now_us, out);
        }
        if seq < next {
            if let Some(skipped_at) = self.skipped.remove(&seq) {
                self.stats.late += 1;
                self.learn_from_late(skipped_at, now_us);
                out.push(item);
            } else {
                self.stats.duplicates += 1;
            }
            return;
        }
        if seq == next {
            self.stats.in_order += 1;
            out.push(item);
            self.next = Some(next + 1);
            self.release_run(out);
        } else if let Entry::Vacant(slot) = self.held.entry(seq) {
            slot.insert((item, now_us));
            if self.held.len() > self.max_packets {
                self.stats.overflowed += self.skip_gap(now_us, out);
            }
        } else {
            self.stats.duplicates += 1;
        }
    }

    /// Releases what the timeout allows at `now_us`.
    pub fn poll(&mut self, now_us: u64, out: &mut Vec<T>) {
        self.skip_known_lost(now_us, out);
        while let Some(deadline) = self.gap_deadline_us() {
            if deadline > now_us {
                break;
            }
            self.skip_gap(now_us, out);
            self.skip_known_lost(now_us, out);
        }
    }

    /// When `poll` next has something to do, if anything is held.
    pub fn next_deadline_us(&self) -> Option<u64> {
        match (self.gap_deadline_us(), self.repair_deadline_us()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When `poll` stops waiting for the retransmission of the known loss at the head, if there is one.
    /// Cheap (one lookup), unlike `next_deadline_us`, which looks at every held packet.
    pub fn repair_deadline_us(&self) -> Option<u64> {
        self.next.and_then(|n| self.lost.get(&n).copied())
    }

    /// When the fallback timeout gives up on the head gap.
    fn gap_deadline_us(&self) -> Option<u64> {
        // Packets are held in sequence order, and the one right after the gap has waited longest
        // in practice; use the oldest arrival among held packets to be safe.
        self.held.values().map(|(_, at)| *at).min().map(|at| at + self.timeout_us)
    }

    fn release_run(&mut self, out: &mut Vec<T>) {
        while let Some(next) = self.next {
            match self.held.remove(&next) {
                Some((item, _)) => {
                    self.stats.reordered += 1;
                    out.push(item);
                    self.next = Some(next + 1);
                }
                None => break,
            }
        }
    }

    /// Gives up on the gap before the first held packet; how many sequence numbers it skipped.
    fn skip_gap(&mut self, now_us: u64, out: &mut Vec<T>) -> u64 {
        let (Some(next), Some((&first, _))) = (self.next, self.held.first_key_value()) else {
            return 0;
        };
        for seq in next..first {
            self.skipped.insert(seq, now_us);
            self.stats.skipped += 1;
        }
        while self.skipped.len() > SKIPPED_MEMORY {
            self.skipped.pop_first();
        }
        self.next = Some(first);
        self.release_run(out);
        first - next
    }

    /// Delivers everything held, in order.
    pub fn flush(&mut self, out: &mut Vec<T>) {
        while !self.held.is_empty() {
            self.skip_gap(0, out);
        }
    }
}

/// Added to the waits derived from RTTs below, for jitter and the timer's granularity.
const RTT_MARGIN_US: u64 = 5_000;

/// Reorder timeout for paths with these smoothed RTTs: the one-way delay spread (half the RTT spread,
/// doubled for safety as queues vary) plus a margin for jitter, capped so a real loss never stalls long.
pub fn timeout_for_rtts_us(rtts_us: &[u64]) -> u64 {
    let (Some(min), Some(max)) = (rtts_us.iter().min(), rtts_us.iter().max()) else {
        return RTT_MARGIN_US;
    };
    ((max - min) + RTT_MARGIN_US).min(MAX_TIMEOUT_US)
}

/// How long a known loss waits for its repair: the NACK crosses the fastest path back (half its RTT), the
/// sender puts the copy on the path where it arrives first, which its scheduler keeps within about the
/// slowest path's RTT (queues included); plus a margin. No paths, no wait (NACKs off).
pub fn retransmit_wait_for_rtts_us(rtts_us: &[u64]) -> u64 {
    let (Some(min), Some(max)) = (rtts_us.iter().min(), rtts_us.iter().max()) else {
        return 0;
    };
    (min / 2 + max + RTT_MARGIN_US).min(MAX_TIMEOUT_US)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(b: &mut ReorderBuffer<u64>, seq: u64, now: u64) -> Vec<u64> {
        let mut out = Vec::new();
        b.push(seq, seq, now, &mut out);
        out
    }

    #[test]
    fn in_order_passes_and_gaps_wait_until_filled() {
        let mut b = ReorderBuffer::new(10_000, 100);
        assert_eq!(push(&mut b, 100, 0), vec![100]);
        assert_eq!(push(&mut b, 102, 1), Vec::<u64>::new());
        assert_eq!(push(&mut b, 103, 2), Vec::<u64>::new());
        assert_eq!(push(&mut b, 101, 3), vec![101, 102, 103]);
        assert_eq!(b.stats.reordered, 2);
        assert_eq!(b.held(), 0);
    }

    #[test]
    fn gap_is_skipped_after_timeout_and_late_packet_still_delivered() {
        let mut b = ReorderBuffer::new(10_000, 100);
        push(&mut b, 0, 0);
        push(&mut b, 2, 1_000);
        let mut out = Vec::new();
        b.poll(10_999, &mut out);
        assert!(out.is_empty());
        assert_eq!(b.next_deadline_us(), Some(11_000));
        b.poll(11_000, &mut out);
        assert_eq!(out, vec![2]);
        assert_eq!(b.stats.skipped, 1);
        assert_eq!(push(&mut b, 1, 12_000), vec![1], "late beats lost");
        assert_eq!(b.stats.late, 1);
        assert_eq!(push(&mut b, 1, 12_001), Vec::<u64>::new(), "a second copy is a duplicate");
        assert_eq!(b.stats.duplicates, 1);
    }

    #[test]
    fn duplicates_from_redundant_paths_are_dropped() {
        let mut b = ReorderBuffer::new(10_000, 100);
        assert_eq!(push(&mut b, 5, 0), vec![5]);
        assert_eq!(push(&mut b, 5, 1), Vec::<u64>::new());
        push(&mut b, 7, 2);
        assert_eq!(push(&mut b, 7, 3), Vec::<u64>::new());
        assert_eq!(b.stats.duplicates, 2);
    }

    #[test]
    fn memory_is_bounded() {
        let mut b = ReorderBuffer::new(u64::MAX / 4, 8);
        push(&mut b, 0, 0);
        let mut released = Vec::new();
        for seq in 2..20 {
            released.extend(push(&mut b, seq, seq));
        }
        assert!(b.held() <= 8);
        assert_eq!(released.first(), Some(&2), "overflow skips the gap instead of growing");
        assert_eq!((b.stats.overflowed, b.stats.skipped), (1, 1), "sequence 1, given up on for the bound");
    }

    #[test]
    fn a_long_gap_with_a_flood_behind_it_stays_at_the_bound() {
        // The production bound (core/io REORDER_MAX_PACKETS), 1400-byte packets, a timeout that never
        // fires: every 4097th packet held skips the gap before it; memory stays at 4096 packets.
        const MAX: usize = 4096;
        let mut b: ReorderBuffer<Vec<u8>> = ReorderBuffer::new(u64::MAX / 4, MAX);
        let mut out = Vec::new();
        b.push(0, vec![0; 1400], 0, &mut out);
        let mut delivered = out.len();
        // Every other sequence number is missing: each gap is one packet.
        for seq in (2..200_000u64).step_by(2) {
            out.clear();
            b.push(seq, vec![0; 1400], seq, &mut out);
            delivered += out.len();
            assert!(b.held() <= MAX);
        }
        assert_eq!(b.stats.overflowed, b.stats.skipped);
        assert_eq!(delivered as u64 + b.held() as u64, 100_000);
        assert_eq!(b.stats.overflowed, (delivered - 1) as u64, "one gap skipped per packet released");
        assert!(b.skipped.len() <= SKIPPED_MEMORY, "the memory of skipped numbers is bounded too");
    }

    #[test]
    fn sender_restart_resynchronises() {
        let mut b = ReorderBuffer::new(10_000, 100);
        push(&mut b, 1 << 40, 0);
        assert_eq!(push(&mut b, 7, 1), vec![7]);
        assert_eq!(push(&mut b, 8, 2), vec![8]);
        assert_eq!(b.stats.resyncs, 1);
    }

    #[test]
    fn gap_passed_by_every_path_is_skipped_without_waiting() {
        let mut b = ReorderBuffer::new(1_000_000, 100);
        let mut out = Vec::new();
        b.push_from(1, 10, None, 10, 0, &mut out);
        b.push_from(2, 11, None, 11, 0, &mut out);
        // 12 was sent on path 1 and lost; path 1 then delivers 13 (without saying what came before).
        b.push_from(1, 13, None, 13, 1, &mut out);
        assert_eq!(out, vec![10, 11]);
        // Path 2's probe vouches it has sent everything before 14: 12 can only have been lost.
        b.mark_passed(2, 13, 2, &mut out);
        assert_eq!(out, vec![10, 11, 13]);
        assert_eq!(b.stats.skipped, 1);
    }

    #[test]
    fn quiet_paths_do_not_block_loss_detection_forever() {
        let mut b = ReorderBuffer::new(1_000_000, 100);
        let mut out = Vec::new();
        b.push_from(1, 0, None, 0, 0, &mut out);
        b.push_from(2, 0, None, 0, 0, &mut out);
        let later = MARK_FRESH_US + 1;
        b.push_from(1, 2, None, 2, later, &mut out); // path 2 has been silent for longer than a mark lives
        assert_eq!(out, vec![0, 2]);
    }

    #[test]
    fn a_packet_whose_successor_on_its_path_arrived_is_known_lost_at_once() {
        let mut b = ReorderBuffer::new(1_000_000, 100);
        let mut out = Vec::new();
        b.push_from(1, 10, None, 10, 0, &mut out);
        b.push_from(2, 11, None, 11, 0, &mut out);
        // Path 1 carried 12 (lost) then 14; path 2 carries 13 later. 14 says "before me on path 1: 12".
        b.push_from(1, 14, Some(12), 14, 1, &mut out);
        assert_eq!(out, vec![10, 11], "13 is still on its way on path 2");
        b.push_from(2, 13, Some(11), 13, 2, &mut out);
        assert_eq!(out, vec![10, 11, 13, 14], "12 is not waited for");
        assert_eq!(b.stats.skipped, 1);
        // Should 12 turn up after all (reordered inside a path), it is delivered late.
        b.push_from(1, 12, None, 12, 3, &mut out);
        assert_eq!(out.last(), Some(&12));
    }

    #[test]
    fn known_losses_are_nacked_and_wait_for_their_retransmission() {
        let mut b = ReorderBuffer::new(1_000_000, 100);
        b.set_retransmit_wait_us(20_000);
        let mut out = Vec::new();
        b.push_from(1, 10, None, 10, 0, &mut out);
        b.push_from(1, 12, Some(11), 12, 1_000, &mut out);
        assert_eq!(b.take_nacks(), vec![11]);
        assert_eq!(out, vec![10], "11 is waited for");
        assert_eq!(b.next_deadline_us(), Some(21_000));
        b.push_from(2, 11, None, 11, 15_000, &mut out); // the retransmission
        assert_eq!(out, vec![10, 11, 12]);
        assert_eq!((b.stats.repaired, b.stats.skipped), (1, 0));
        // A loss whose retransmission does not come is skipped when the wait is over.
        b.push_from(1, 14, Some(13), 14, 30_000, &mut out);
        assert_eq!(b.take_nacks(), vec![13]);
        b.poll(49_999, &mut out);
        assert_eq!(out.last(), Some(&12));
        b.poll(50_000, &mut out);
        assert_eq!(out.last(), Some(&14));
        assert_eq!(b.stats.skipped, 1);
    }

    #[test]
    fn late_arrivals_teach_a_longer_timeout_which_decays() {
        let mut b = ReorderBuffer::new(10_000, 100);
        push(&mut b, 0, 0);
        push(&mut b, 2, 0);
        let mut out = Vec::new();
        b.poll(10_000, &mut out);
        assert_eq!(out, vec![2]);
        push(&mut b, 1, 30_000); // 20 ms after it was given up on
        assert!(b.timeout_us() >= 30_000, "{}", b.timeout_us());
        let learned = b.timeout_us();
        for _ in 0..100 {
            b.set_timeout_us(10_000);
        }
        assert!(b.timeout_us() < learned);
        assert_eq!(b.timeout_us(), 10_000, "decays back to the RTT-based timeout");
    }

    #[test]
    fn timeout_follows_rtt_spread() {
        assert_eq!(timeout_for_rtts_us(&[10_000]), 5_000);
        assert_eq!(timeout_for_rtts_us(&[10_000, 60_000]), 55_000);
        assert_eq!(timeout_for_rtts_us(&[10_000, 2_000_000]), 300_000);
    }

    #[test]
    fn retransmit_wait_covers_the_nack_and_the_slowest_path() {
        assert_eq!(retransmit_wait_for_rtts_us(&[]), 0, "no path: no NACKs");
        assert_eq!(retransmit_wait_for_rtts_us(&[10_000]), 5_000 + 10_000 + 5_000);
        assert_eq!(retransmit_wait_for_rtts_us(&[60_000, 10_000, 30_000]), 5_000 + 60_000 + 5_000);
        assert_eq!(retransmit_wait_for_rtts_us(&[10_000, 2_000_000]), MAX_TIMEOUT_US);
    }
}
