//! The bonding scheduler: which path(s) carry the next packet. Pure: it sees a snapshot of each path and
//! returns a decision; the I/O layer takes the snapshot and does the sending.
//!
//! Modes:
//! - `Aggregate`: the path with the earliest expected arrival, `queue/rate + srtt/2`, among usable paths
//!   whose queue is not full. Filling the low-RTT path until its queueing delay matches the next path's
//!   extra RTT is what keeps the bond from ever doing worse than its best single path.
//! - `LowestRtt`: the lowest-RTT usable path until its queue exceeds `SPILL_QUEUE_DELAY_US`, then as Aggregate.
//! - `Redundant`: every usable path; the receiver keeps the first copy.
//!
//! Usable: the up paths that rank first by `path_rank::compare` (route kind and WAN role); among those the
//! mode decides. So a backup WAN carries nothing while a primary is up, and a relayed path nothing while a
//! direct one over an equal WAN is up.

use crate::path_rank::{self, PathRank};

/// Queueing delay beyond which `LowestRtt` spills to other paths.
pub const SPILL_QUEUE_DELAY_US: u64 = 5_000;
/// Rate assumed for a path with no estimate yet (a fresh path must get a share to be measured at all).
pub const UNKNOWN_RATE_BPS: u64 = 10_000_000;

/// Queueing delay a path may build before it counts as full: enough to absorb bursts and scheduling
/// jitter, short enough that a bond never adds bufferbloat of its own.
pub const QUEUE_BUDGET_US: u64 = 50_000;
/// A path's queue is never limited below this (a few packets), whatever its estimated rate.
pub const MIN_QUEUE_BYTES: u64 = 64 << 10;

/// Bytes a path at `rate_bps` may queue: `budget_us` worth, within [MIN_QUEUE_BYTES, hard_limit].
pub fn queue_limit_bytes(rate_bps: u64, budget_us: u64, hard_limit: u64) -> u64 {
    let rate = if rate_bps == 0 { UNKNOWN_RATE_BPS } else { rate_bps };
    (rate / 8 * budget_us / 1_000_000).max(MIN_QUEUE_BYTES).min(hard_limit)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    Aggregate,
    LowestRtt,
    Redundant,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "aggregate" => Ok(Mode::Aggregate),
            "lowest-rtt" => Ok(Mode::LowestRtt),
            "redundant" => Ok(Mode::Redundant),
            _ => Err(format!("unknown bonding mode {s:?} (aggregate, lowest-rtt, redundant)")),
        }
    }
}

/// What the scheduler knows of one path at the moment of choosing.
#[derive(Clone, Copy, Debug, Default)]
pub struct PathView {
    /// Up or down, WAN role and route kind: which paths may be used at all.
    pub rank: PathRank,
    pub srtt_us: u64,
    /// Lowest RTT seen on the path (0: unknown): what the RTT is without queues.
    pub min_rtt_us: u64,
    /// Delivery rate (bits/s) the path's acks have shown lately (`path_rate`); 0 if unknown.
    pub rate_bps: u64,
    /// cwnd / smoothed RTT (bits/s): the rate the path's congestion controller lets it send at now; 0 if
    /// unknown. Our send queue drains at this rate, so queue delays are counted with it. The delivery
    /// rate would not do for that: a path the scheduler uses little delivers little (it is app-limited),
    /// and measuring its queue by that would make one packet look like a second's wait.
    pub window_rate_bps: u64,
    /// Bytes waiting in this path's send queue.
    pub queued_bytes: u64,
    /// The queue drops beyond this many bytes.
    pub queue_limit: u64,
}

impl PathView {
    /// What our send queue drains at: the window rate, else the delivery rate, else a guess.
    fn drain_rate(&self) -> u64 {
        [self.window_rate_bps, self.rate_bps].into_iter().find(|&r| r > 0).unwrap_or(UNKNOWN_RATE_BPS)
    }

    /// Microseconds until a packet of `len` bytes queued now would have left.
    fn queue_delay_us(&self, len: u64) -> u64 {
        (self.queued_bytes + len) * 8 * 1_000_000 / self.drain_rate()
    }

    /// Expected one-way arrival time of a packet of `len` bytes sent on this path now: half the path's
    /// queue-free RTT, plus the queueing the RTT has grown by (a bottleneck queue sits in one direction,
    /// so it counts in full, not halved), plus the wait in our own send queue.
    pub fn expected_arrival_us(&self, len: u64) -> u64 {
        let base = if self.min_rtt_us == 0 { self.srtt_us } else { self.min_rtt_us.min(self.srtt_us) };
        self.queue_delay_us(len) + base / 2 + (self.srtt_us - base)
    }

    fn full(&self, len: u64) -> bool {
        self.queued_bytes + len > self.queue_limit
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    /// Send on this path.
    One(usize),
    /// Send a copy on each of these paths.
    Each(Vec<usize>),
    /// No usable path (none up).
    Drop,
    /// Every usable path's queue is full: drop this packet, as a full link would (it tells the inner
    /// TCP to slow down instead of letting queues grow without end).
    Congested,
}

impl Choice {
    /// The paths to send on (none if the packet is dropped).
    pub fn paths(&self) -> &[usize] {
        match self {
            Choice::One(i) => std::slice::from_ref(i),
            Choice::Each(list) => list,
            Choice::Drop | Choice::Congested => &[],
        }
    }
}

fn usable(paths: &[PathView]) -> Vec<usize> {
    let ranks: Vec<PathRank> = paths.iter().map(|p| p.rank).collect();
    path_rank::usable(&ranks)
}

fn earliest_arrival(paths: &[PathView], candidates: &[usize], len: u64) -> Choice {
    // Ties go to the lower RTT, then the lower index, so the choice is deterministic.
    candidates
        .iter()
        .copied()
        .filter(|&i| !paths[i].full(len))
        .min_by_key(|&i| (paths[i].expected_arrival_us(len), paths[i].srtt_us, i))
        .map_or(Choice::Congested, Choice::One)
}

/// The path(s) for one packet of `len` bytes (see the module comment); `paths` is not changed.
pub fn choose(mode: Mode, paths: &[PathView], len: usize) -> Choice {
    choose_among(mode, paths, &usable(paths), len)
}

fn choose_among(mode: Mode, paths: &[PathView], candidates: &[usize], len: usize) -> Choice {
    if candidates.is_empty() {
        return Choice::Drop;
    }
    let len = len as u64;
    match mode {
        Mode::Redundant => Choice::Each(candidates.to_vec()),
        Mode::Aggregate => earliest_arrival(paths, candidates, len),
        Mode::LowestRtt => {
            let fastest = candidates.iter().copied().min_by_key(|&i| (paths[i].srtt_us, i)).expect("non-empty");
            if paths[fastest].queue_delay_us(len) <= SPILL_QUEUE_DELAY_US && !paths[fastest].full(len) {
                Choice::One(fastest)
            } else {
                earliest_arrival(paths, candidates, len)
            }
        }
    }
}

/// Choices for packets that arrive together (the segments of one TUN super-packet), from one snapshot of
/// the paths: the usable ones are found once, and each choice adds its packet to the chosen queues, so
/// the next packet of the batch sees them as the driver would after handing this one to quinn. Taking a
/// snapshot per packet costs a lock of each path's connection per packet (shared with its driver task).
pub struct Batch<'a> {
    paths: &'a mut [PathView],
    candidates: Vec<usize>,
}

impl<'a> Batch<'a> {
    pub fn new(paths: &'a mut [PathView]) -> Self {
        let candidates = usable(paths);
        Self { paths, candidates }
    }

    /// As `choose` for the next packet; the chosen paths' queues grow by `len`.
    pub fn choose(&mut self, mode: Mode, len: usize) -> Choice {
        let choice = choose_among(mode, self.paths, &self.candidates, len);
        for &i in choice.paths() {
            self.paths[i].queued_bytes += len as u64;
        }
        choice
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(rate_mbit: u64, rtt_ms: u64) -> PathView {
        PathView {
            rank: PathRank { up: true, ..PathRank::default() },
            srtt_us: rtt_ms * 1000,
            min_rtt_us: rtt_ms * 1000,
            rate_bps: rate_mbit * 1_000_000,
            window_rate_bps: rate_mbit * 1_000_000,
            queued_bytes: 0,
            queue_limit: 1 << 20,
        }
    }

    /// Feeds `n` packets through `choose`, draining each path at its rate over `dt_us` per packet.
    fn simulate(mode: Mode, paths: &mut [PathView], n: usize, dt_us: u64) -> Vec<usize> {
        let mut counts = vec![0; paths.len()];
        for _ in 0..n {
            for p in paths.iter_mut() {
                let drained = p.rate_bps * dt_us / 8 / 1_000_000;
                p.queued_bytes = p.queued_bytes.saturating_sub(drained);
            }
            match choose(mode, paths, 1400) {
                Choice::One(i) => {
                    paths[i].queued_bytes += 1400;
                    counts[i] += 1;
                }
                // Overload: every queue at its limit, the packet is dropped as on a full link.
                Choice::Congested => {}
                other => panic!("expected one path, got {other:?}"),
            }
        }
        counts
    }

    #[test]
    fn aggregate_splits_by_rate_when_saturated() {
        let mut paths = [path(100, 10), path(50, 30), path(20, 60)];
        // Offer 200 Mbit/s (more than the 170 sum): one 1400-byte packet every 56 µs.
        let counts = simulate(Mode::Aggregate, &mut paths, 200_000, 56);
        let total: usize = counts.iter().sum();
        let shares: Vec<f64> = counts.iter().map(|&c| c as f64 / total as f64).collect();
        assert!((shares[0] - 100.0 / 170.0).abs() < 0.05, "{shares:?}");
        assert!((shares[1] - 50.0 / 170.0).abs() < 0.05, "{shares:?}");
        assert!((shares[2] - 20.0 / 170.0).abs() < 0.05, "{shares:?}");
    }

    #[test]
    fn aggregate_keeps_light_traffic_on_the_fastest_path() {
        let mut paths = [path(100, 10), path(100, 60)];
        // 10 Mbit/s: the 10 ms path never queues enough to make the 60 ms path arrive earlier.
        let counts = simulate(Mode::Aggregate, &mut paths, 10_000, 1120);
        assert_eq!(counts[1], 0, "{counts:?}");
    }

    #[test]
    fn aggregate_never_worse_than_best_path_on_asymmetric_links() {
        // Offered load just under the fast path's rate: a slow, far path only gets traffic once the fast
        // path's queue delay exceeds the RTT gap, which never happens here.
        let mut paths = [path(300, 10), path(2, 200)];
        let counts = simulate(Mode::Aggregate, &mut paths, 50_000, 38);
        assert!(counts[1] < counts[0] / 100, "{counts:?}");
    }

    #[test]
    fn lowest_rtt_spills_only_when_full() {
        let mut paths = [path(10, 10), path(100, 40)];
        let light = simulate(Mode::LowestRtt, &mut paths.clone(), 1000, 2240); // 5 Mbit/s
        assert_eq!(light[1], 0);
        let heavy = simulate(Mode::LowestRtt, &mut paths, 20_000, 100); // 112 Mbit/s
        assert!(heavy[1] > heavy[0], "{heavy:?}");
    }

    #[test]
    fn a_batch_chooses_as_choose_would_with_each_packet_queued() {
        let start = [path(100, 10), path(50, 12), path(20, 60)];
        let mut by_hand = start;
        let mut expected = Vec::new();
        for _ in 0..3000 {
            let choice = choose(Mode::Aggregate, &by_hand, 1400);
            if let Choice::One(i) = choice {
                by_hand[i].queued_bytes += 1400;
            }
            expected.push(choice);
        }
        let mut views = start;
        let mut batch = Batch::new(&mut views);
        let got: Vec<_> = (0..3000).map(|_| batch.choose(Mode::Aggregate, 1400)).collect();
        assert_eq!(got, expected);
        // The queues fill to their limits: the end of such a batch is dropped as on a full link.
        assert_eq!(got.last(), Some(&Choice::Congested));
        assert!(got.iter().filter(|c| matches!(c, Choice::One(2))).count() > 0, "the slow path gets a share");
        assert!(views.iter().all(|v| v.queued_bytes <= v.queue_limit), "{views:?}");
    }

    #[test]
    fn a_batch_queues_a_redundant_copy_on_every_path_and_nothing_without_paths() {
        let mut views = [path(10, 10), path(10, 20)];
        let mut batch = Batch::new(&mut views);
        assert_eq!(batch.choose(Mode::Redundant, 100), Choice::Each(vec![0, 1]));
        assert_eq!(views[0].queued_bytes, 100);
        assert_eq!(views[1].queued_bytes, 100);
        let mut down = [PathView::default()];
        assert_eq!(Batch::new(&mut down).choose(Mode::Aggregate, 100), Choice::Drop);
        assert_eq!(down[0].queued_bytes, 0);
    }

    #[test]
    fn redundant_uses_every_up_path_and_backup_only_without_primaries() {
        let mut paths = [path(10, 10), path(10, 20), path(10, 5)];
        paths[2].rank.backup = true;
        assert_eq!(choose(Mode::Redundant, &paths, 100), Choice::Each(vec![0, 1]));
        assert_eq!(choose(Mode::Aggregate, &paths, 100), Choice::One(0));
        paths[0].rank.up = false;
        paths[1].rank.up = false;
        assert_eq!(choose(Mode::Aggregate, &paths, 100), Choice::One(2));
        paths[2].rank.up = false;
        assert_eq!(choose(Mode::Aggregate, &paths, 100), Choice::Drop);
    }

    #[test]
    fn a_relayed_path_waits_while_a_direct_one_is_up() {
        use crate::path_rank::PathKind;
        let mut paths = [path(10, 50), path(100, 10)];
        paths[1].rank.kind = PathKind::Relayed { via: [1; 32] };
        // The relayed path is faster, but the direct one ranks first: only it carries traffic.
        assert_eq!(choose(Mode::Redundant, &paths, 100), Choice::Each(vec![0]));
        assert_eq!(choose(Mode::LowestRtt, &paths, 100), Choice::One(0));
        paths[0].rank.up = false;
        assert_eq!(choose(Mode::Aggregate, &paths, 100), Choice::One(1));
    }

    #[test]
    fn full_queue_is_avoided_while_another_has_room() {
        let mut paths = [path(100, 10), path(10, 50)];
        paths[0].queued_bytes = paths[0].queue_limit;
        assert_eq!(choose(Mode::Aggregate, &paths, 1400), Choice::One(1));
        paths[1].queued_bytes = paths[1].queue_limit;
        assert_eq!(choose(Mode::Aggregate, &paths, 1400), Choice::Congested);
        assert_eq!(choose(Mode::LowestRtt, &paths, 1400), Choice::Congested);
    }

    #[test]
    fn a_queue_at_the_bottleneck_counts_in_full_one_way() {
        // 10 ms path whose RTT has grown to 26 ms (16 ms of queue) vs an idle 30 ms path: the queued one
        // delivers in 5 + 16 = 21 ms, the idle one in 15 ms.
        let queued = PathView { srtt_us: 26_000, min_rtt_us: 10_000, ..path(100, 10) };
        let idle = path(50, 30);
        assert_eq!(queued.expected_arrival_us(0), 21_000);
        assert_eq!(choose(Mode::Aggregate, &[queued, idle], 1400), Choice::One(1));
        // Without a minimum known, the smoothed RTT stands for both.
        assert_eq!(PathView { min_rtt_us: 0, ..queued }.expected_arrival_us(0), 13_000);
    }

    #[test]
    fn a_path_whose_base_rtt_grew_is_scheduled_like_a_fresh_one_once_its_minimum_expires() {
        use crate::path_rate::PathRate;
        // Issue 12 defect 1: two 50 Mbit/s paths, the second's RTT goes from 10 to 60 ms for good. Its
        // minimum RTT comes from `PathRate` (as the io layer feeds it from acks): 10 s of 10 ms, then 60 ms.
        let mut rate = PathRate::default();
        let mut now = 1_000_000;
        let ack = |rate: &mut PathRate, now: &mut u64, rtt_us: u64| {
            *now += 1_000;
            rate.on_ack(*now, *now - rtt_us, 6_250, rtt_us);
        };
        for _ in 0..10_000 {
            ack(&mut rate, &mut now, 10_000);
        }
        let changed = now;
        // The 10 ms path has 30 ms of queue: a packet sent on it arrives after 35 ms, on the other after 30.
        let busy = PathView { queued_bytes: 50_000_000 / 8 * 30 / 1000, ..path(50, 10) };
        let view = |min_rtt_us| [busy, PathView { min_rtt_us, ..path(50, 60) }];
        let fresh = view(60_000);
        assert_eq!(fresh[1].expected_arrival_us(0), 30_000);
        assert_eq!(choose(Mode::Aggregate, &fresh, 0), Choice::One(1));
        // A minimum that never expires counts 50 ms of the new RTT as queue (arrival 55 ms): the bond keeps
        // queueing on the first path, adding that delay to every flow, and under-uses the second.
        let stale = view(10_000);
        assert_eq!(stale[1].expected_arrival_us(0), 55_000);
        assert_eq!(choose(Mode::Aggregate, &stale, 0), Choice::One(0));
        // The expiring minimum has followed within 2 s, and the path is scheduled as after a fresh start.
        while now - changed < 2_000_000 {
            ack(&mut rate, &mut now, 60_000);
        }
        let min = rate.min_rtt_us().unwrap();
        assert!((60_000..=61_000).contains(&min), "{min}");
        let followed = view(min);
        assert!(followed[1].expected_arrival_us(0).abs_diff(30_000) <= 1_000);
        assert_eq!(choose(Mode::Aggregate, &followed, 0), Choice::One(1));
    }

    #[test]
    fn queue_limit_is_time_based() {
        assert_eq!(
            queue_limit_bytes(100_000_000, QUEUE_BUDGET_US, 1 << 30),
            100_000_000 / 8 * QUEUE_BUDGET_US / 1_000_000
        );
        assert_eq!(queue_limit_bytes(1_000, QUEUE_BUDGET_US, 1 << 30), MIN_QUEUE_BYTES);
        assert_eq!(queue_limit_bytes(100_000_000_000, QUEUE_BUDGET_US, 1 << 20), 1 << 20);
    }
}
