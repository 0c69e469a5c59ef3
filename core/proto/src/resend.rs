//! The resend memory of one peer: what its paths sent lately, so that a DATA frame can be sent again on
//! another path when the receiver reports it lost (NACK) or when the path it went on fails. Pure: the
//! caller passes `now_us` and stores any item type (`Bytes` in io).
//!
//! A NACK names bond sequence numbers; finding one is a hash lookup, not a scan of every path's record
//! (with 8 MB per path that was thousands of entries per NACKed sequence, under the paths lock). A failed
//! path's recent frames are found by a scan of the window, which only happens when a path fails.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// Hashes a sequence number with one multiplication (Fibonacci hashing): the map is touched for every
/// packet sent, and its keys are our own sequence numbers, which no one chooses to collide (SipHash's
/// protection against chosen keys buys nothing here).
#[derive(Default)]
struct SeqHasher(u64);

impl Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// How far back the memory reaches: more than the longest time a failure goes unnoticed (down after
/// max(3 × RTT, 300 ms), probes every 50 ms) plus one RTT of packets in flight.
pub const RESEND_WINDOW_US: u64 = 600_000;
/// Memory bound per peer (~0.6 s of 300 Mbit/s; the oldest go first beyond it).
pub const RESEND_MAX_BYTES: usize = 24 << 20;

struct Entry<T> {
    at_us: u64,
    path: u64,
    seq: u64,
    len: usize,
    /// None once taken for a failed path's resend (a newer entry records where it went then).
    item: Option<T>,
}

pub struct ResendMemory<T> {
    entries: VecDeque<Entry<T>>,
    /// Position of `entries[0]` counted from the first entry ever: positions stay valid as the front goes.
    first_position: u64,
    /// The newest entry for each sequence number.
    by_seq: HashMap<u64, u64, BuildHasherDefault<SeqHasher>>,
    bytes: usize,
    window_us: u64,
    max_bytes: usize,
    /// Frames forgotten before the end of the window because the byte bound was reached: a NACK or a
    /// failed path could no longer have them resent (the limit's drop counter).
    evicted_over_bytes: u64,
}

impl<T> Default for ResendMemory<T> {
    fn default() -> Self {
        Self::with_limits(RESEND_WINDOW_US, RESEND_MAX_BYTES)
    }
}

impl<T> ResendMemory<T> {
    pub fn with_limits(window_us: u64, max_bytes: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            first_position: 0,
            by_seq: HashMap::default(),
            bytes: 0,
            window_us,
            max_bytes,
            evicted_over_bytes: 0,
        }
    }

    /// Remembers `item` (`len` bytes) sent as sequence `seq` on path `path` at `now_us`, and forgets what
    /// is older than the window or beyond the byte bound.
    pub fn record(&mut self, now_us: u64, path: u64, seq: u64, len: usize, item: T) {
        let position = self.first_position + self.entries.len() as u64;
        self.entries.push_back(Entry { at_us: now_us, path, seq, len, item: Some(item) });
        self.by_seq.insert(seq, position);
        self.bytes += len;
        while let Some(front) = self.entries.front() {
            let in_window = now_us.saturating_sub(front.at_us) <= self.window_us;
            if in_window && self.bytes <= self.max_bytes {
                break;
            }
            if in_window {
                self.evicted_over_bytes += 1;
            }
            let front = self.entries.pop_front().expect("non-empty");
            self.bytes -= front.len;
            if self.by_seq.get(&front.seq) == Some(&self.first_position) {
                self.by_seq.remove(&front.seq);
            }
            self.first_position += 1;
        }
    }

    /// The newest copy of sequence `seq` still remembered, and the path it went on.
    pub fn find(&self, seq: u64) -> Option<(u64, &T)> {
        let position = *self.by_seq.get(&seq)?;
        let entry = self.entries.get((position - self.first_position) as usize)?;
        entry.item.as_ref().map(|item| (entry.path, item))
    }

    /// Takes what path `path` sent since `since_us` (oldest first, with its sequence number), to send it
    /// on other paths.
    pub fn take_sent_by(&mut self, path: u64, since_us: u64) -> Vec<(u64, T)> {
        self.entries
            .iter_mut()
            .filter(|e| e.path == path && e.at_us >= since_us)
            .filter_map(|e| Some((e.seq, e.item.take()?)))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Frames forgotten within the window because the byte bound was reached.
    pub fn evicted_over_bytes(&self) -> u64 {
        self.evicted_over_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_by_sequence_the_newest_copy() {
        let mut m = ResendMemory::default();
        m.record(1_000, 7, 100, 10, "a on 7");
        m.record(1_001, 8, 101, 10, "b on 8");
        // Redundant mode or a resend: the same sequence again, on another path.
        m.record(1_002, 9, 100, 10, "a on 9");
        assert_eq!(m.find(100), Some((9, &"a on 9")));
        assert_eq!(m.find(101), Some((8, &"b on 8")));
        assert_eq!(m.find(102), None);
    }

    #[test]
    fn forgets_by_age_and_by_size() {
        let mut m = ResendMemory::with_limits(600_000, 25);
        m.record(0, 1, 1, 10, 1);
        m.record(1, 1, 2, 10, 2);
        m.record(2, 1, 3, 10, 3);
        // 30 bytes > 25: the oldest went.
        assert_eq!((m.find(1), m.len(), m.bytes()), (None, 2, 20));
        assert_eq!(m.find(2), Some((1, &2)));
        assert_eq!(m.evicted_over_bytes(), 1, "forgotten early: counted");
        // Past the window everything older than 600 ms goes: that is the window, not a drop.
        m.record(600_003, 1, 4, 1, 4);
        assert_eq!((m.find(2), m.find(3), m.find(4)), (None, None, Some((1, &4))));
        assert_eq!(m.len(), 1);
        assert_eq!(m.evicted_over_bytes(), 1);
    }

    #[test]
    fn an_expired_copy_does_not_hide_a_newer_one() {
        let mut m = ResendMemory::with_limits(100, usize::MAX);
        m.record(0, 1, 5, 1, "old");
        m.record(50, 2, 5, 1, "new");
        m.record(120, 2, 6, 1, "later"); // "old" expires; the index still points at "new"
        assert_eq!(m.find(5), Some((2, &"new")));
    }

    #[test]
    fn a_failed_path_gives_up_what_it_sent_lately_once() {
        let mut m = ResendMemory::default();
        m.record(100, 1, 1, 1, 'a');
        m.record(200, 2, 2, 1, 'b');
        m.record(300, 1, 3, 1, 'c');
        m.record(400, 1, 4, 1, 'd');
        assert_eq!(m.take_sent_by(1, 250), vec![(3, 'c'), (4, 'd')]);
        assert_eq!(m.take_sent_by(1, 250), Vec::<(u64, char)>::new(), "taken once");
        assert_eq!(m.find(3), None);
        assert_eq!(m.find(1), Some((1, &'a')), "older than the failure window: still findable by NACK");
        assert_eq!(m.find(2), Some((2, &'b')), "other paths untouched");
    }

    #[test]
    fn a_taken_frame_that_no_path_could_carry_is_found_again_once_put_back() {
        // The driver takes a failed path's frames, finds every other queue full, and records the rest
        // again as the failed path's: a NACK can still have them resent.
        let mut m = ResendMemory::default();
        m.record(100, 1, 1, 1, 'a');
        m.record(200, 1, 2, 1, 'b');
        let taken = m.take_sent_by(1, 0);
        assert_eq!(m.find(2), None);
        for (seq, item) in taken {
            m.record(300, 1, seq, 1, item);
        }
        assert_eq!((m.find(1), m.find(2)), (Some((1, &'a')), Some((1, &'b'))));
    }

    #[test]
    fn a_flood_within_the_window_stays_at_the_byte_bound_and_counts_what_it_forgot() {
        // 1 s of 1 Gbit/s (1400-byte frames, one every 11.2 µs) into the default memory: far more than
        // its 24 MiB fit in the 600 ms window.
        let mut m = ResendMemory::default();
        let frames = 89_286u64;
        for seq in 0..frames {
            m.record(seq * 11, 1, seq, 1400, seq);
            assert!(m.bytes() <= RESEND_MAX_BYTES);
        }
        let kept = (RESEND_MAX_BYTES / 1400) as u64;
        assert_eq!(m.len() as u64, kept);
        // What fits spans ~200 ms, less than the window: everything else went for the byte bound.
        assert_eq!(m.evicted_over_bytes(), frames - kept);
    }

    #[test]
    fn positions_stay_valid_over_many_entries() {
        let mut m = ResendMemory::with_limits(1_000, usize::MAX);
        for seq in 0..100_000u64 {
            m.record(seq, seq % 3, seq, 1, seq);
            if seq >= 10 {
                assert_eq!(m.find(seq - 10), Some(((seq - 10) % 3, &(seq - 10))));
            }
        }
        assert!(m.len() <= 1_001);
        assert_eq!(m.find(0), None);
    }
}
