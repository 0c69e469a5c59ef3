//! The receive side of the bond for one peer, without I/O: every datagram that arrives on any of the
//! peer's paths goes in (`handle_datagram`), and what to do about it comes out — inner packets to deliver
//! in sequence order (`take_delivered`), frames to send and requests for the sending half (`poll_output`),
//! and when to call `handle_timeout` next (`poll_timeout`). Time is passed in (`now_us`, microseconds on
//! any monotonic clock), so the whole exchange is unit-tested with a plain counter as the clock.
//!
//! ```text
//! DATA         → reorder buffer (ReorderBuffer) → delivered in order; losses it detects → SendNacks
//! PROBE        → ProbeReply on the same path; the path has passed every sequence before the probe's
//!                next_seq (may release held packets, or declare gaps lost → SendNacks)
//! PROBE_REPLY  → ProbeAnswered: the driver feeds it to that path's health
//! NACK         → Retransmit: the sending half resends those sequence numbers
//! anything else → dropped, counted
//! ```
//!
//! The driver keeps the order of releases: everything `take_delivered` hands out after one call must
//! reach the TUN before what a later call hands out. With several readers on several threads, io does
//! that by taking the peer's delivery lock before it lets go of this machine's lock.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::frame::{encode_nacks, encode_probe_reply, parse, Frame, DATA_HEADER_LEN};
use crate::reorder::{retransmit_wait_for_rtts_us, timeout_for_rtts_us, ReorderBuffer, ReorderStats};

/// What the driver must do for the bond, in the order the machine decided it.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// Send `frame` (a probe's answer) on path `path`: the one the probe came on, so that the prober
    /// measures that path's round trip.
    ProbeReply { path: u64, frame: Bytes },
    /// NACK frames asking the peer to resend DATA frames found lost. Send them on the fastest path: the
    /// reorder buffer waits for the repair only about one fastest RTT plus the slowest path's delay.
    SendNacks(Vec<Vec<u8>>),
    /// The answer to our probe `id` came back on path `path`: feed it to that path's health.
    ProbeAnswered { path: u64, id: u32 },
    /// The peer reports these DATA frames of ours lost: the sending half resends what it remembers of them.
    Retransmit(Vec<u64>),
}

pub struct BondReceiver {
    reorder: ReorderBuffer<Bytes>,
    /// Released in order, not yet taken by the driver.
    delivered: Vec<Bytes>,
    outputs: VecDeque<Output>,
    /// Datagrams that were no frame we know (unknown type, truncated).
    dropped: u64,
    /// What `poll_timeout` last told the driver; a deadline earlier than this needs the timer woken.
    reported_deadline: Option<u64>,
    /// Set when a `handle_*` made the next deadline earlier than `reported_deadline`.
    deadline_moved_earlier: bool,
}

impl BondReceiver {
    /// `max_held`: packets held behind gaps before the oldest gap is skipped (bounded memory). Until
    /// `set_path_rtts` is first called, the gap timeout is the bare margin and NACKs are off.
    pub fn new(max_held: usize) -> Self {
        Self {
            reorder: ReorderBuffer::new(timeout_for_rtts_us(&[]), max_held),
            delivered: Vec::new(),
            outputs: VecDeque::new(),
            dropped: 0,
            reported_deadline: None,
            deadline_moved_earlier: false,
        }
    }

    /// Takes in one datagram that arrived on path `path` at `now_us`.
    pub fn handle_datagram(&mut self, path: u64, datagram: Bytes, now_us: u64) {
        let was_holding = self.reorder.held() > 0;
        match parse(&datagram) {
            Some(Frame::Data { seq, prev_on_path, .. }) => {
                // The inner packet shares the datagram's buffer: no copy on the packet path.
                let packet = datagram.slice(DATA_HEADER_LEN..);
                self.reorder.push_from(path, seq, prev_on_path, packet, now_us, &mut self.delivered);
            }
            Some(Frame::Probe { id, next_seq }) => {
                // The reply goes out before anything the probe releases, as it did when io answered
                // before touching the buffer: it is what the prober measures the path's RTT with.
                let frame = Bytes::copy_from_slice(&encode_probe_reply(id));
                self.outputs.push_back(Output::ProbeReply { path, frame });
                self.reorder.mark_passed(path, next_seq.wrapping_sub(1), now_us, &mut self.delivered);
            }
            Some(Frame::ProbeReply { id }) => self.outputs.push_back(Output::ProbeAnswered { path, id }),
            Some(Frame::Nack { seqs }) => self.outputs.push_back(Output::Retransmit(seqs)),
            None => self.dropped += 1,
        }
        self.queue_nacks();
        self.note_deadline(was_holding, now_us);
    }

    /// Releases what timed out by `now_us` (gaps given up on, repairs no longer waited for).
    pub fn handle_timeout(&mut self, now_us: u64) {
        self.reorder.poll(now_us, &mut self.delivered);
        self.queue_nacks();
    }

    /// Path `path` closed: its progress no longer counts when deciding that every path has passed a gap.
    pub fn handle_path_closed(&mut self, path: u64) {
        self.reorder.forget_path(path);
    }

    /// Re-derives the gap timeout and the wait for retransmissions from the smoothed RTTs of the paths
    /// that are up (none: NACKs off), and decays the timeout learned from late packets by one step; the
    /// decay rate assumes a call about every 100 ms.
    pub fn set_path_rtts(&mut self, rtts_us: &[u64]) {
        self.reorder.set_timeout_us(timeout_for_rtts_us(rtts_us));
        self.reorder.set_retransmit_wait_us(retransmit_wait_for_rtts_us(rtts_us));
    }

    /// When `handle_timeout` must be called next: the earliest gap or repair deadline; None while
    /// nothing waits. Costs a look at every held packet: drivers call it from their timer, not per packet
    /// (see `timeout_moved_earlier`).
    pub fn poll_timeout(&mut self) -> Option<u64> {
        self.reported_deadline = self.reorder.next_deadline_us();
        self.deadline_moved_earlier = false;
        self.reported_deadline
    }

    /// True once after a `handle_*` made the next deadline earlier than what `poll_timeout` last said
    /// (the first packet held behind a gap, a loss declared at the head): the driver wakes its timer so
    /// that it asks `poll_timeout` again. Cheap enough to ask after every datagram.
    pub fn timeout_moved_earlier(&mut self) -> bool {
        std::mem::take(&mut self.deadline_moved_earlier)
    }

    /// Moves the inner packets released so far, in sequence order, onto the end of `out`.
    pub fn take_delivered(&mut self, out: &mut Vec<Bytes>) {
        out.append(&mut self.delivered);
    }

    /// The next thing to send or to tell the sending half, oldest first.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    pub fn reorder_stats(&self) -> ReorderStats {
        self.reorder.stats
    }

    /// The gap timeout in force (RTT-derived, or learned from late packets if that is longer).
    pub fn timeout_us(&self) -> u64 {
        self.reorder.timeout_us()
    }

    /// Packets held behind gaps.
    pub fn held(&self) -> usize {
        self.reorder.held()
    }

    /// Datagrams dropped as no frame we know.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn queue_nacks(&mut self) {
        let seqs = self.reorder.take_nacks();
        if !seqs.is_empty() {
            self.outputs.push_back(Output::SendNacks(encode_nacks(&seqs)));
        }
    }

    /// Flags the timer if the next deadline may now be earlier than the one it sleeps for. Only two things
    /// make it earlier: the first packet held (its gap times out `timeout` from now; later packets held
    /// behind it arrive later) and a known loss at the head (its repair deadline). Releases and a longer
    /// learned timeout only move it later, which costs the timer one early wake-up at most.
    fn note_deadline(&mut self, was_holding: bool, now_us: u64) {
        let gap = (!was_holding && self.reorder.held() > 0).then(|| now_us + self.reorder.timeout_us());
        let earliest = match (gap, self.reorder.repair_deadline_us()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if earliest.is_some_and(|t| self.reported_deadline.is_none_or(|r| t < r)) {
            self.deadline_moved_earlier = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{encode_data_header, encode_probe, NACK};

    /// A DATA frame whose inner packet is the sequence number's bytes (tells deliveries apart).
    fn data(seq: u64, prev_on_path: Option<u64>) -> Bytes {
        let mut d = encode_data_header(seq, prev_on_path).to_vec();
        d.extend_from_slice(&seq.to_be_bytes());
        Bytes::from(d)
    }

    fn delivered(b: &mut BondReceiver) -> Vec<u64> {
        let mut out = Vec::new();
        b.take_delivered(&mut out);
        out.iter().map(|p| u64::from_be_bytes(p[..].try_into().unwrap())).collect()
    }

    fn outputs(b: &mut BondReceiver) -> Vec<Output> {
        std::iter::from_fn(|| b.poll_output()).collect()
    }

    #[test]
    fn in_order_data_is_delivered_at_once() {
        let mut b = BondReceiver::new(100);
        b.handle_datagram(1, data(10, None), 0);
        b.handle_datagram(2, data(11, None), 5);
        b.handle_datagram(1, data(12, Some(10)), 9);
        assert_eq!(delivered(&mut b), vec![10, 11, 12]);
        assert_eq!(outputs(&mut b), vec![]);
        assert_eq!(b.poll_timeout(), None);
        assert!(!b.timeout_moved_earlier());
        assert_eq!(b.reorder_stats().in_order, 3);
    }

    #[test]
    fn a_gap_is_held_nacked_once_and_released_on_timeout() {
        let mut b = BondReceiver::new(100);
        // Gap timeout 20 ms spread + 5 ms margin; repairs waited for 5 + 30 + 5 ms.
        b.set_path_rtts(&[10_000, 30_000]);
        assert_eq!(b.timeout_us(), 25_000);
        b.handle_datagram(1, data(10, None), 0);
        assert_eq!(delivered(&mut b), vec![10]);
        // Path 1 sent 11 before 12 and 11 never came: lost, asked for at once.
        b.handle_datagram(1, data(12, Some(11)), 1_000);
        assert_eq!(delivered(&mut b), Vec::<u64>::new());
        assert_eq!(outputs(&mut b), vec![Output::SendNacks(encode_nacks(&[11]))]);
        assert!(b.timeout_moved_earlier(), "the first held packet needs the timer");
        b.handle_datagram(1, data(13, Some(12)), 2_000);
        assert_eq!(outputs(&mut b), vec![], "NACKed once");
        assert_eq!(b.poll_timeout(), Some(26_000), "the gap timeout comes before the repair deadline (41 ms)");
        b.handle_timeout(25_999);
        assert_eq!(delivered(&mut b), Vec::<u64>::new());
        b.handle_timeout(26_000);
        assert_eq!(delivered(&mut b), vec![12, 13]);
        assert_eq!(b.reorder_stats().skipped, 1);
        assert_eq!(b.poll_timeout(), None);
        // The repair comes after all: late beats lost.
        b.handle_datagram(2, data(11, None), 30_000);
        assert_eq!(delivered(&mut b), vec![11]);
        assert_eq!(b.reorder_stats().late, 1);
    }

    #[test]
    fn a_probe_is_answered_on_its_path_and_releases_what_the_path_passed() {
        let mut b = BondReceiver::new(100);
        b.handle_datagram(1, data(10, None), 0);
        b.handle_datagram(2, data(11, None), 0);
        // 12 went on path 2, which says nothing more for now; path 1 goes on with 13.
        b.handle_datagram(1, data(13, None), 1_000);
        assert_eq!(delivered(&mut b), vec![10, 11]);
        assert_eq!(outputs(&mut b), vec![]);
        // Path 2 has sent everything before 14: 12 can only have been lost (NACKs off: skipped at once).
        b.handle_datagram(2, Bytes::copy_from_slice(&encode_probe(77, 14)), 2_000);
        assert_eq!(
            outputs(&mut b),
            vec![Output::ProbeReply { path: 2, frame: Bytes::copy_from_slice(&encode_probe_reply(77)) }]
        );
        assert_eq!(delivered(&mut b), vec![13]);
        assert_eq!(b.reorder_stats().skipped, 1);
        assert_eq!(b.poll_timeout(), None);
    }

    #[test]
    fn a_probe_reply_is_handed_to_the_paths_health() {
        let mut b = BondReceiver::new(100);
        b.handle_datagram(3, Bytes::copy_from_slice(&encode_probe_reply(5)), 0);
        assert_eq!(outputs(&mut b), vec![Output::ProbeAnswered { path: 3, id: 5 }]);
    }

    #[test]
    fn a_nack_asks_the_sending_half_to_retransmit() {
        let mut b = BondReceiver::new(100);
        for frame in encode_nacks(&[5, 6]) {
            b.handle_datagram(1, Bytes::from(frame), 0);
        }
        assert_eq!(outputs(&mut b), vec![Output::Retransmit(vec![5, 6])]);
        assert_eq!(b.dropped(), 0);
    }

    #[test]
    fn garbage_is_counted_as_dropped() {
        let mut b = BondReceiver::new(100);
        for junk in [&[][..], &[0x45, 0, 0, 0], &[NACK, 0, 2, 1], &[crate::frame::DATA, 1, 2]] {
            b.handle_datagram(1, Bytes::copy_from_slice(junk), 0);
        }
        assert_eq!(b.dropped(), 4);
        assert_eq!(outputs(&mut b), vec![]);
        assert_eq!(delivered(&mut b), Vec::<u64>::new());
        assert_eq!(b.poll_timeout(), None);
    }

    #[test]
    fn poll_timeout_reports_the_earliest_deadline() {
        let mut b = BondReceiver::new(100);
        b.set_path_rtts(&[10_000, 20_000]); // gap timeout 15 ms
                                            // Path 2 stays behind at 10, so no gap counts as passed by every path: only timeouts release.
        b.handle_datagram(2, data(10, None), 0);
        b.handle_datagram(1, data(12, None), 1_000);
        b.handle_datagram(1, data(14, None), 3_000);
        assert_eq!(b.poll_timeout(), Some(16_000), "from the oldest held packet");
        assert!(!b.timeout_moved_earlier(), "poll_timeout told the driver already");
        b.handle_datagram(1, data(16, None), 4_000);
        assert!(!b.timeout_moved_earlier(), "a later held packet does not move the deadline");
        b.handle_timeout(15_999);
        assert_eq!(delivered(&mut b), vec![10]);
        b.handle_timeout(16_000);
        assert_eq!(delivered(&mut b), vec![12]);
        assert_eq!(b.poll_timeout(), Some(18_000), "the next gap's own wait, from 14's arrival");
        b.handle_timeout(19_000);
        assert_eq!(delivered(&mut b), vec![14, 16]);
        assert_eq!(b.reorder_stats().skipped, 3);
        assert_eq!(b.poll_timeout(), None);
        b.handle_datagram(1, data(18, None), 20_000);
        assert!(b.timeout_moved_earlier(), "held again while the timer sleeps without a deadline");
        assert_eq!(b.poll_timeout(), Some(35_000));
    }

    #[test]
    fn a_nacked_loss_is_repaired_before_the_gap_times_out() {
        let mut b = BondReceiver::new(100);
        b.set_path_rtts(&[10_000, 30_000]); // gap timeout 25 ms, repairs waited for 40 ms
        b.handle_datagram(1, data(10, None), 0);
        b.handle_datagram(1, data(12, Some(11)), 1_000);
        assert_eq!(outputs(&mut b), vec![Output::SendNacks(encode_nacks(&[11]))]);
        assert_eq!(b.poll_timeout(), Some(26_000));
        // The sender's copy, on the path where it arrives first.
        b.handle_datagram(2, data(11, None), 15_000);
        assert_eq!(delivered(&mut b), vec![10, 11, 12]);
        assert_eq!((b.reorder_stats().repaired, b.reorder_stats().skipped), (1, 0));
        assert_eq!(b.poll_timeout(), None);
    }

    #[test]
    fn a_closed_path_no_longer_holds_gaps_open() {
        let mut b = BondReceiver::new(100);
        b.handle_datagram(1, data(10, None), 0);
        b.handle_datagram(2, data(11, None), 0);
        b.handle_datagram(1, data(13, None), 1_000);
        assert_eq!(delivered(&mut b), vec![10, 11]);
        // Path 2 has only vouched for 11: 12 may still be on it. Then it closes.
        b.handle_path_closed(2);
        b.handle_datagram(1, data(14, None), 2_000);
        assert_eq!(delivered(&mut b), vec![13, 14], "path 1 alone has passed 12");
    }
}
