//! Path health: probes on every path, and the up/down decision with damping.
//!
//! A probe goes out every `PROBE_INTERVAL_US`; the peer answers on the same path. A path with no reply
//! for `max(3 × RTT, MIN_DOWN_AFTER_US)` is down for scheduling at once. It comes back after
//! `required_good` consecutive replies; a path that goes down again within `FLAP_WINDOW_US` of coming
//! up needs twice as many next time (damping), up to `MAX_REQUIRED_GOOD`.
//!
//! Silence is only what the path and the peer are to blame for. A path saturated by traffic delays or
//! drops its probes behind its own queue, yet QUIC acks for its packets keep arriving: an ack is as good
//! a sign of life as a probe reply (`note_acked`), so a busy path stays up. And a node starved of CPU (its
//! timer fires late) has not heard what arrived meanwhile: the time it was not polling does not count as
//! the peer's silence.

use std::collections::VecDeque;

/// Probe spacing: fine enough to notice a dead path within the 300 ms budget.
pub const PROBE_INTERVAL_US: u64 = 50_000;
/// Floor of the silence that marks a path down: covers a couple of lost probes on a lossy link.
pub const MIN_DOWN_AFTER_US: u64 = 200_000;
pub const INITIAL_REQUIRED_GOOD: u32 = 3;
pub const MAX_REQUIRED_GOOD: u32 = 24;
/// A down→up→down within this long counts as a flap.
pub const FLAP_WINDOW_US: u64 = 10_000_000;
/// Probes unanswered after this long count as lost.
const PROBE_LOST_AFTER_US: u64 = 1_000_000;
/// Loss estimate smoothing: weight of the newest probe outcome.
const LOSS_EWMA: f64 = 1.0 / 32.0;
/// A poll this much later than the one before means this node was not running (CPU starvation, a
/// suspended process): the gap is not counted as silence.
const STALL_US: u64 = 3 * PROBE_INTERVAL_US;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathState {
    Up,
    Down,
}

pub struct PathHealth {
    state: PathState,
    srtt_us: Option<u64>,
    last_reply_us: u64,
    last_probe_us: Option<u64>,
    last_poll_us: Option<u64>,
    last_up_us: u64,
    next_id: u32,
    outstanding: VecDeque<(u32, u64)>,
    good_streak: u32,
    required_good: u32,
    loss: f64,
}

impl PathHealth {
    /// A path that just completed its handshake: up, as the handshake itself was a reply.
    pub fn new(now_us: u64, handshake_rtt_us: u64) -> Self {
        Self {
            state: PathState::Up,
            srtt_us: Some(handshake_rtt_us),
            last_reply_us: now_us,
            last_probe_us: None,
            last_poll_us: None,
            last_up_us: now_us,
            next_id: 0,
            outstanding: VecDeque::new(),
            good_streak: 0,
            required_good: INITIAL_REQUIRED_GOOD,
            loss: 0.0,
        }
    }

    pub fn state(&self) -> PathState {
        self.state
    }

    /// Probe loss, smoothed, 0.0–1.0.
    pub fn loss(&self) -> f64 {
        self.loss
    }

    pub fn down_after_us(&self) -> u64 {
        (3 * self.srtt_us.unwrap_or(0)).max(MIN_DOWN_AFTER_US)
    }

    /// Returns the id of a probe to send now, if one is due.
    pub fn poll_probe(&mut self, now_us: u64) -> Option<u32> {
        if self.last_probe_us.is_some_and(|t| now_us < t + PROBE_INTERVAL_US) {
            return None;
        }
        self.last_probe_us = Some(now_us);
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.outstanding.push_back((id, now_us));
        while self.outstanding.front().is_some_and(|&(_, t)| now_us > t + PROBE_LOST_AFTER_US) {
            self.outstanding.pop_front();
            self.loss = self.loss * (1.0 - LOSS_EWMA) + LOSS_EWMA;
        }
        Some(id)
    }

    /// A reply to probe `id` arrived; returns the new state if it changed.
    pub fn handle_reply(&mut self, id: u32, now_us: u64) -> Option<PathState> {
        let pos = self.outstanding.iter().position(|&(i, _)| i == id)?;
        let (_, sent) = self.outstanding.remove(pos)?;
        let sample = now_us.saturating_sub(sent);
        self.srtt_us = Some(match self.srtt_us {
            Some(s) => (7 * s + sample) / 8,
            None => sample,
        });
        self.loss *= 1.0 - LOSS_EWMA;
        self.last_reply_us = now_us;
        if self.state == PathState::Down {
            self.good_streak += 1;
            if self.good_streak >= self.required_good {
                self.state = PathState::Up;
                self.last_up_us = now_us;
                return Some(PathState::Up);
            }
        }
        None
    }

    /// QUIC acked, at `acked_us`, packets sent on this path: the peer got them and its answer came back.
    /// Keeps an up path up (its probes may be stuck behind its own traffic); it does not bring a down path
    /// back, which takes `required_good` probe replies.
    pub fn note_acked(&mut self, acked_us: u64) {
        if self.state == PathState::Up {
            self.last_reply_us = self.last_reply_us.max(acked_us);
        }
    }

    /// Checks for silence; returns the new state if the path just went down.
    pub fn poll_state(&mut self, now_us: u64) -> Option<PathState> {
        if let Some(last_poll) = self.last_poll_us.filter(|&t| now_us > t + STALL_US) {
            // This node was stalled since its last poll: what arrived meanwhile is not yet read.
            self.last_reply_us = self.last_reply_us.max(last_poll) + (now_us - last_poll);
        }
        self.last_poll_us = Some(now_us);
        if self.state == PathState::Up && now_us > self.last_reply_us + self.down_after_us() {
            self.state = PathState::Down;
            self.good_streak = 0;
            if now_us < self.last_up_us + FLAP_WINDOW_US && self.last_up_us > 0 {
                self.required_good = (self.required_good * 2).min(MAX_REQUIRED_GOOD);
            }
            return Some(PathState::Down);
        }
        if self.state == PathState::Down && now_us > self.last_reply_us + self.down_after_us() {
            // Replies stopped again while recovering: start the streak over.
            self.good_streak = 0;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs probes every interval from `from` to `to`, answering each after `rtt` if `answer`.
    fn run(h: &mut PathHealth, from: u64, to: u64, rtt: u64, answer: bool) -> Vec<(u64, PathState)> {
        let mut changes = Vec::new();
        let mut pending: Vec<(u32, u64)> = Vec::new();
        let mut t = from;
        while t <= to {
            if let Some(id) = h.poll_probe(t) {
                if answer {
                    pending.push((id, t + rtt));
                }
            }
            pending.retain(|&(id, at)| {
                if at <= t {
                    if let Some(s) = h.handle_reply(id, t) {
                        changes.push((t, s));
                    }
                    false
                } else {
                    true
                }
            });
            if let Some(s) = h.poll_state(t) {
                changes.push((t, s));
            }
            t += 1_000;
        }
        changes
    }

    #[test]
    fn silence_marks_down_within_300ms_and_replies_bring_it_back() {
        let mut h = PathHealth::new(0, 20_000);
        assert!(run(&mut h, 0, 1_000_000, 20_000, true).is_empty());
        let down = run(&mut h, 1_001_000, 2_000_000, 20_000, false);
        assert_eq!(down.len(), 1);
        let (at, state) = down[0];
        assert_eq!(state, PathState::Down);
        // The last reply arrived at most one probe interval + RTT before the cut.
        assert!(at - 1_000_000 <= 300_000, "down after {} µs", at - 1_000_000);
        let up = run(&mut h, 2_001_000, 3_000_000, 20_000, true);
        assert_eq!(up.len(), 1);
        assert_eq!(up[0].1, PathState::Up);
        assert!(up[0].0 - 2_001_000 <= 4 * PROBE_INTERVAL_US);
    }

    #[test]
    fn long_rtt_paths_get_longer_silence_allowance() {
        let mut h = PathHealth::new(0, 150_000);
        run(&mut h, 0, 2_000_000, 150_000, true);
        assert!(h.down_after_us() >= 400_000);
    }

    #[test]
    fn flapping_needs_more_good_replies_each_time() {
        let mut h = PathHealth::new(0, 10_000);
        let mut t = 0;
        let mut recoveries = Vec::new();
        for _ in 0..3 {
            run(&mut h, t, t + 500_000, 10_000, false);
            let start = t + 501_000;
            let up = run(&mut h, start, start + 3_000_000, 10_000, true);
            recoveries.push(up.first().expect("comes back").0 - start);
            t = start + 3_001_000;
        }
        assert!(recoveries[0] < recoveries[1] && recoveries[1] < recoveries[2], "{recoveries:?}");
    }

    #[test]
    fn acks_keep_a_busy_path_up_but_do_not_bring_a_down_one_back() {
        let mut h = PathHealth::new(0, 10_000);
        // Probes go unanswered for 2 s (stuck behind the path's queue), but acks arrive every 10 ms.
        let mut t = 0;
        while t <= 2_000_000 {
            h.poll_probe(t);
            if t % 10_000 == 0 {
                h.note_acked(t);
            }
            assert_eq!(h.poll_state(t), None, "down at {t} µs");
            t += 1_000;
        }
        // The acks stop too: down within the usual allowance.
        let down = run(&mut h, 2_001_000, 3_000_000, 10_000, false);
        assert_eq!(down.len(), 1);
        assert!(down[0].0 - 2_000_000 <= 300_000, "{down:?}");
        // Acks alone do not bring it back.
        for t in (3_001_000..4_000_000).step_by(10_000) {
            h.note_acked(t);
            assert_eq!(h.poll_state(t), None);
        }
        assert_eq!(h.state(), PathState::Down);
    }

    #[test]
    fn a_stalled_node_does_not_count_its_own_stall_as_silence() {
        let mut h = PathHealth::new(0, 10_000);
        run(&mut h, 0, 1_000_000, 10_000, true);
        // Not polled for 2 s (the process got no CPU); the replies that came meanwhile are not read yet.
        assert_eq!(h.poll_state(3_000_000), None, "a stall is not silence");
        // They are read just after: still up.
        assert!(run(&mut h, 3_001_000, 4_000_000, 10_000, true).is_empty());
        // A path that really went silent during a stall is still found, the allowance after it.
        assert_eq!(h.poll_state(6_000_000), None);
        let down = run(&mut h, 6_001_000, 7_000_000, 10_000, false);
        assert_eq!(down.len(), 1);
        assert!(down[0].0 - 6_000_000 <= 300_000, "{down:?}");
    }

    #[test]
    fn loss_estimate_tracks_unanswered_probes() {
        let mut h = PathHealth::new(0, 10_000);
        run(&mut h, 0, 5_000_000, 10_000, false);
        assert!(h.loss() > 0.5, "{}", h.loss());
    }
}
