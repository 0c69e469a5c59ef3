//! The send side of the bond for one peer, without I/O: it numbers inner packets (one bond sequence per
//! peer), frames them as DATA for the path the scheduler chose, remembers what quinn took (the resend
//! memory), and says what to send again when the peer reports frames lost (NACK) or a path fails. Time is
//! passed in (`now_us`), so the whole exchange is unit-tested with a plain counter as the clock.
//!
//! ```text
//! inner packet → take_seq → frame_data(path) → driver hands it to quinn → handle_sent (remembered)
//! NACK         → handle_nacks → Resend list → driver: path where each arrives first → handle_sent
//! path failed  → handle_path_failed → Resend list → driver: same, never on the failed path
//! ```
//!
//! Which path carries a packet or a resend is the scheduler's decision (`scheduler::choose`) on views of
//! the paths' queues, which only the driver can read; this machine decides what the bytes are. It keeps
//! no timers: the resend memory forgets old frames as new ones are recorded.
//!
//! Locking, for drivers that share it between threads behind one lock: numbering and framing is one short
//! critical section, recording another; neither should hold the lock across the hand-over to quinn (a
//! NACK or a failed path's resend would wait for another path's connection). `Resend::into_datagram`
//! makes the resend copy outside the lock too.

use bytes::{BufMut, Bytes, BytesMut};

use crate::frame::{clear_data_gap, encode_data_header, encode_probe, DATA_HEADER_LEN};
use crate::reorder::RESYNC_DISTANCE;
use crate::resend::{ResendMemory, RESEND_MAX_BYTES, RESEND_WINDOW_US};

/// A DATA frame to send again, on another path than the one that lost it.
#[derive(Debug)]
pub struct Resend {
    pub seq: u64,
    /// The frame as it was last sent (its gap field names that path's previous frame).
    sent: Bytes,
}

impl Resend {
    /// The frame to send: the one sent before, its gap field cleared (the previous frame it names was on
    /// the first path and says nothing about the new one; the receiver would wait for a gap that is not
    /// there). Copies only if the old frame is still shared (quinn's queue, the resend memory, the other
    /// frames framed into the same buffer).
    pub fn into_datagram(self) -> Bytes {
        let mut frame = self.sent.try_into_mut().unwrap_or_else(|shared| BytesMut::from(&shared[..]));
        clear_data_gap(&mut frame);
        frame.freeze()
    }
}

pub struct BondSender {
    /// Bond sequence number of the next inner packet.
    next_seq: u64,
    /// Every number below this was handed to quinn (or refused by it) on each of its paths: what probes
    /// carry. A driver that takes the numbers of a batch before handing its frames over must not have a
    /// probe, queued on a path in between, claim the batch's frames on that path came before it.
    handed_seq: u64,
    /// (path, sequence number of the last DATA frame framed for it); a few paths per peer: a scan beats
    /// a hash. A path is here from its first frame until `handle_path_closed`.
    last_on_path: Vec<(u64, u64)>,
    memory: ResendMemory<Bytes>,
}

impl BondSender {
    /// `random`: any random number; the sequence starts at a random point (far from 0, the receiver's
    /// resync distance away from wrapping), so that a peer that sees us restart recognises a new sender.
    pub fn new(random: u64) -> Self {
        Self::with_resend_limits(random, RESEND_WINDOW_US, RESEND_MAX_BYTES)
    }

    /// As `new`, with the resend memory reaching back `window_us` and holding at most `max_bytes`.
    pub fn with_resend_limits(random: u64, window_us: u64, max_bytes: usize) -> Self {
        let first = random % (u64::MAX / 2) + RESYNC_DISTANCE;
        Self {
            next_seq: first,
            handed_seq: first,
            last_on_path: Vec::new(),
            memory: ResendMemory::with_limits(window_us, max_bytes),
        }
    }

    /// Takes the bond sequence number for one inner packet. Take it only once the packet will go out
    /// (after the scheduler chose a path): a number taken and never sent is a gap the receiver waits for.
    /// Every copy of the packet (redundant mode) carries the same number.
    pub fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        seq
    }

    /// The number the next packet will get (probes carry it: the path has passed every earlier one).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The DATA frame carrying inner `packet` as sequence `seq` on path `path`. It names the previous
    /// sequence number framed for this path, so the receiver tells a loss on this path at once; the
    /// frame counts as this path's previous one from now on, whether quinn takes it or not.
    pub fn frame_data(&mut self, path: u64, seq: u64, packet: &[u8]) -> Bytes {
        let mut datagram = BytesMut::with_capacity(DATA_HEADER_LEN + packet.len());
        self.write_frame(path, seq, packet, &mut datagram);
        datagram.freeze()
    }

    /// As `frame_data`, written at the end of `frames` and split off it: frames written into one buffer
    /// share its allocation (reserve their bytes first), and the clones for quinn and the resend memory
    /// only count references to it. The allocation is freed when its last frame is.
    pub fn frame_data_into(&mut self, path: u64, seq: u64, packet: &[u8], frames: &mut BytesMut) -> Bytes {
        self.write_frame(path, seq, packet, frames);
        frames.split().freeze()
    }

    fn write_frame(&mut self, path: u64, seq: u64, packet: &[u8], out: &mut BytesMut) {
        let prev = match self.last_on_path.iter_mut().find(|(p, _)| *p == path) {
            Some((_, last)) => Some(std::mem::replace(last, seq)),
            None => {
                self.last_on_path.push((path, seq));
                None
            }
        };
        out.put_slice(&encode_data_header(seq, prev));
        out.put_slice(packet);
    }

    /// The frames of every number below `seq` were handed to quinn (those it refused are gone for good).
    pub fn handed_over(&mut self, seq: u64) {
        self.handed_seq = self.handed_seq.max(seq);
    }

    /// A probe for path health with id `id`, carrying the first sequence number not yet handed over: the
    /// path has passed every earlier one.
    pub fn probe(&self, id: u32) -> Bytes {
        Bytes::copy_from_slice(&encode_probe(id, self.handed_seq))
    }

    /// DATA frame `seq` (`datagram`, from `frame_data` or a `Resend`) was handed to quinn on path `path`
    /// at `now_us`: remembered for a while, to send again if it is reported lost or the path fails. Call
    /// it only for what quinn took: a frame it refused cannot be lost on the way.
    pub fn handle_sent(&mut self, path: u64, seq: u64, datagram: Bytes, now_us: u64) {
        self.memory.record(now_us, path, seq, datagram.len(), datagram);
    }

    /// The peer reports these sequence numbers lost (its NACK): what is still remembered of them, one
    /// resend per sequence number (the newest copy, whichever path it went on). Unknown and forgotten
    /// ones are skipped: too old to help, or never sent.
    pub fn handle_nacks(&mut self, seqs: &[u64]) -> Vec<Resend> {
        seqs.iter()
            .filter_map(|&seq| self.memory.find(seq).map(|(_, sent)| Resend { seq, sent: sent.clone() }))
            .collect()
    }

    /// Path `path` failed at `now_us`: what it sent in the last `window_us`, oldest first, to send again on
    /// other paths (the receiver fills its gaps with them or delivers them late; copies it already has are
    /// dropped). Given up once: a second failure report returns nothing more. Older frames stay findable
    /// by NACK.
    pub fn handle_path_failed(&mut self, path: u64, window_us: u64, now_us: u64) -> Vec<Resend> {
        let since = now_us.saturating_sub(window_us);
        self.memory.take_sent_by(path, since).into_iter().map(|(seq, sent)| Resend { seq, sent }).collect()
    }

    /// Path `path` is gone and gets no more frames: forget its previous sequence number (bounded memory
    /// as paths come and go). What it sent stays in the resend memory.
    pub fn handle_path_closed(&mut self, path: u64) {
        self.last_on_path.retain(|(p, _)| *p != path);
    }

    /// Frames and bytes in the resend memory.
    pub fn remembered(&self) -> (usize, usize) {
        (self.memory.len(), self.memory.bytes())
    }

    /// Frames the resend memory forgot early, for its byte bound (`ResendMemory::evicted_over_bytes`).
    pub fn resend_evicted(&self) -> u64 {
        self.memory.evicted_over_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{parse, Frame};

    const PATH_A: u64 = 1;
    const PATH_B: u64 = 2;

    /// (seq, previous on the path, inner packet) of a DATA frame.
    fn data(frame: &[u8]) -> (u64, Option<u64>, Vec<u8>) {
        match parse(frame) {
            Some(Frame::Data { seq, prev_on_path, packet }) => (seq, prev_on_path, packet.to_vec()),
            other => panic!("not DATA: {other:?}"),
        }
    }

    /// Numbers, frames and records `packet` on `path` at `now_us`, as a driver whose send succeeded.
    fn send(s: &mut BondSender, path: u64, packet: &[u8], now_us: u64) -> u64 {
        let seq = s.take_seq();
        let frame = s.frame_data(path, seq, packet);
        s.handle_sent(path, seq, frame, now_us);
        seq
    }

    fn seqs(resends: &[Resend]) -> Vec<u64> {
        resends.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn numbers_packets_and_names_each_paths_previous_frame() {
        let mut s = BondSender::new(0);
        let first = s.take_seq();
        assert_eq!(first, RESYNC_DISTANCE, "starts away from 0");
        assert_eq!(data(&s.frame_data(PATH_A, first, b"p0")), (first, None, b"p0".to_vec()));
        let second = s.take_seq();
        assert_eq!(second, first + 1);
        assert_eq!(data(&s.frame_data(PATH_B, second, b"p1")), (second, None, b"p1".to_vec()), "B's first");
        let third = s.take_seq();
        assert_eq!(data(&s.frame_data(PATH_A, third, b"p2")).1, Some(first), "A's previous, not B's");
        // Redundant mode: one number, a copy per path, each naming its own path's previous frame.
        let fourth = s.take_seq();
        assert_eq!(data(&s.frame_data(PATH_A, fourth, b"p3")).1, Some(third));
        assert_eq!(data(&s.frame_data(PATH_B, fourth, b"p3")).1, Some(second));
        assert_eq!(s.next_seq(), fourth + 1);
        // A probe names only numbers whose frames were handed over: one queued before them on a path must
        // not make the receiver count them as lost there.
        assert_eq!(parse(&s.probe(9)), Some(Frame::Probe { id: 9, next_seq: first }));
        s.handed_over(fourth + 1);
        assert_eq!(parse(&s.probe(9)), Some(Frame::Probe { id: 9, next_seq: fourth + 1 }));
        s.handed_over(third);
        assert_eq!(parse(&s.probe(9)), Some(Frame::Probe { id: 9, next_seq: fourth + 1 }), "never back");
        // A closed path is forgotten: a path with the same id (ids are not reused in io) starts afresh.
        s.handle_path_closed(PATH_A);
        let fifth = s.take_seq();
        assert_eq!(data(&s.frame_data(PATH_A, fifth, b"p4")).1, None);
        assert_eq!(data(&s.frame_data(PATH_B, fifth, b"p4")).1, Some(fourth));
    }

    #[test]
    fn frames_of_a_batch_share_one_buffer_and_read_as_single_ones() {
        let (mut batched, mut single) = (BondSender::new(5), BondSender::new(5));
        let packets: [&[u8]; 3] = [b"first", b"second", b"third"];
        let mut frames = BytesMut::with_capacity(packets.iter().map(|p| DATA_HEADER_LEN + p.len()).sum());
        let start = frames.as_ptr() as usize;
        let mut offset = 0;
        for (i, packet) in packets.iter().enumerate() {
            let path = if i == 1 { PATH_B } else { PATH_A };
            let (a, b) = (batched.take_seq(), single.take_seq());
            let frame = batched.frame_data_into(path, a, packet, &mut frames);
            assert_eq!(frame, single.frame_data(path, b, packet), "frame {i}");
            assert_eq!(frame.as_ptr() as usize, start + offset, "frame {i} written into the batch's buffer");
            offset += frame.len();
            batched.handle_sent(path, a, frame, 0);
        }
        assert_eq!(frames.capacity(), 0, "the reservation was used up exactly");
        assert_eq!(data(&batched.handle_nacks(&[batched.next_seq() - 1])[0].sent).2, b"third".to_vec());
    }

    #[test]
    fn a_random_start_stays_clear_of_wrapping() {
        let s = BondSender::new(u64::MAX);
        assert!(s.next_seq() >= RESYNC_DISTANCE && s.next_seq() < u64::MAX / 2 + RESYNC_DISTANCE);
    }

    #[test]
    fn a_nacked_frame_comes_back_once_with_its_gap_cleared() {
        let mut s = BondSender::new(0);
        let a = send(&mut s, PATH_A, b"first", 0);
        let b = send(&mut s, PATH_A, b"second", 10);
        let resends = s.handle_nacks(&[b]);
        assert_eq!(seqs(&resends), vec![b]);
        let datagram = resends.into_iter().next().unwrap().into_datagram();
        assert_eq!(data(&datagram), (b, None, b"second".to_vec()), "it named {a} on path A: cleared");
        // Sent in redundant mode on both paths: still one resend per NACKed number.
        let c = s.take_seq();
        for path in [PATH_A, PATH_B] {
            let frame = s.frame_data(path, c, b"both");
            s.handle_sent(path, c, frame, 20);
        }
        assert_eq!(seqs(&s.handle_nacks(&[c])), vec![c]);
        // The memory's copy is unchanged by the resend copy.
        assert_eq!(data(&s.handle_nacks(&[b]).pop().unwrap().sent).1, Some(a));
    }

    #[test]
    fn unknown_unsent_and_expired_numbers_give_nothing() {
        let mut s = BondSender::with_resend_limits(0, 600_000, usize::MAX);
        let old = send(&mut s, PATH_A, b"old", 0);
        // Framed but refused by quinn: never recorded.
        let refused = s.take_seq();
        let _ = s.frame_data(PATH_A, refused, b"refused");
        assert!(s.handle_nacks(&[refused, refused + 100]).is_empty());
        assert_eq!(seqs(&s.handle_nacks(&[old])), vec![old]);
        // A frame sent past the window pushes the old one out.
        let new = send(&mut s, PATH_B, b"new", 600_001);
        assert_eq!(seqs(&s.handle_nacks(&[old, new])), vec![new]);
    }

    #[test]
    fn a_failed_paths_recent_frames_come_back_once_and_older_ones_do_not() {
        let mut s = BondSender::new(0);
        let old = send(&mut s, PATH_A, b"old", 0);
        let recent = send(&mut s, PATH_A, b"recent", 450_000);
        let other = send(&mut s, PATH_B, b"other path", 460_000);
        let latest = send(&mut s, PATH_A, b"latest", 500_000);
        let resends = s.handle_path_failed(PATH_A, 200_000, 600_000);
        assert_eq!(seqs(&resends), vec![recent, latest], "since 400 ms, oldest first, path A only");
        let resent = resends.into_iter().last().unwrap().into_datagram();
        assert_eq!(data(&resent), (latest, None, b"latest".to_vec()), "gap cleared");
        assert!(s.handle_path_failed(PATH_A, 200_000, 600_000).is_empty(), "given up once");
        assert_eq!(seqs(&s.handle_nacks(&[old, other])), vec![old, other], "the rest stays findable");
        // The driver resent `latest` on B: that copy is B's now, and B's failure brings it back.
        s.handle_sent(PATH_B, latest, resent, 610_000);
        assert_eq!(seqs(&s.handle_path_failed(PATH_B, 200_000, 620_000)), vec![other, latest]);
    }

    #[test]
    fn the_memory_bound_drops_the_oldest() {
        let frame_len = DATA_HEADER_LEN + 100;
        let mut s = BondSender::with_resend_limits(0, 600_000, 2 * frame_len);
        let sent: Vec<u64> = (0..3).map(|i| send(&mut s, PATH_A, &[0; 100], i)).collect();
        assert_eq!(s.remembered(), (2, 2 * frame_len));
        assert_eq!(s.resend_evicted(), 1);
        assert_eq!(seqs(&s.handle_nacks(&sent)), sent[1..].to_vec());
    }
}
