//! What a path can carry, from the acks it gets: its delivery rate (best recent sample) and its minimum RTT
//! (with expiry), and the window cap they give. Pure: the path's congestion controller (`io`) feeds it acks
//! with their times in microseconds.
//!
//! The cap is a share of the bandwidth-delay product (delivery rate × minimum RTT), like BBR's inflight
//! bound: enough for the link plus a short queue. A loss-based controller alone fills whatever buffer the
//! link has, and on a bond every ms of that queue is reorder delay for all paths.
//!
//! The minimum RTT must follow a path whose base RTT grows for good (a mobile handover, an ISP's new route):
//! a stale, lower one would shrink the cap below what the path needs, the delivery rate with it, and so on
//! down to `MIN_CAP_BYTES`. So it expires. When no RTT sample has come near it for `MIN_RTT_VALID_US` (a
//! queue that other traffic keeps standing, say), the path probes: its cap drops to `PROBE_GAIN_PERCENT`
//! of the BDP for `PROBE_RTT_US`, its queue drains, and the lowest RTT seen then is the new minimum
//! (BBRv2's PROBE_RTT, in short). When none has been below `IMPLAUSIBLE_RTT_FACTOR` times it for
//! `IMPLAUSIBLE_FOR_US`, the minimum itself is wrong (the cap keeps our own queue far shorter than that):
//! the lowest sample of that time is taken at once, without a probe, whose cut to half the stale, far too
//! small BDP would drop the inner flows' packets just as their RTT grew.

/// The minimum RTT used for the cap is at least this: on a LAN-like path (sub-ms RTT) a cap of a few
/// packets would throttle a Gbit/s tunnel while saving no measurable delay.
pub const CAP_RTT_FLOOR_US: u64 = 5_000;
/// The cap never goes below this many bytes (a fresh or idle path must be able to start).
pub const MIN_CAP_BYTES: u64 = 64 << 10;
/// Delivery rate is sampled over intervals of at least this and at least one smoothed RTT: acks come in
/// bunches (a peer may delay them up to 25 ms), and a shorter window overestimates the rate.
const RATE_SAMPLE_MIN_US: u64 = 25_000;
/// The best delivery rate of the current and the previous such period counts (a path's rate may fall
/// without the cap following at once, and a loaded path's estimate stays fresh).
const RATE_MAX_PERIOD_US: u64 = 1_000_000;
/// The minimum RTT holds while samples come within `MIN_RTT_NEAR_PERCENT` (+ 1 ms) of it at least this often.
const MIN_RTT_VALID_US: u64 = 10_000_000;
const MIN_RTT_NEAR_PERCENT: u64 = 110;
/// Samples above this multiple of the minimum (+ `IMPLAUSIBLE_SLACK_US` for delayed acks) for
/// `IMPLAUSIBLE_FOR_US` mean the minimum is stale. Measured on a 100 Mbit/s path whose RTT went from 10 to
/// 60 ms (4 inner TCP flows): with the minimum kept for good the path stayed at 4-11 Mbit/s; with only the
/// `MIN_RTT_VALID_US` expiry it took 8 s to recover. Probing then (cap at half of the stale BDP) dropped
/// ~100 inner packets; taking the lowest recent sample drops only what the RTT jump itself does (~38).
/// Either way the inner CUBIC flows take ~8 s to grow back, as they do with no cap at all.
const IMPLAUSIBLE_RTT_FACTOR: u64 = 2;
const IMPLAUSIBLE_SLACK_US: u64 = 10_000;
const IMPLAUSIBLE_FOR_US: u64 = 1_000_000;
/// A probe lasts this long, and at least one smoothed RTT.
const PROBE_RTT_US: u64 = 200_000;
/// The cap while probing: half a bandwidth-delay product empties the path's queue.
const PROBE_GAIN_PERCENT: u64 = 50;

/// Windowed maximum of delivery-rate samples: the best of the current and the previous period.
#[derive(Clone, Debug, Default)]
struct DeliveryRate {
    sample_start_us: Option<u64>,
    sample_bytes: u64,
    period_start_us: Option<u64>,
    current_max: u64,
    previous_max: u64,
}

impl DeliveryRate {
    /// Counts `bytes` acknowledged at `now_us`; closes a sample once `min_interval_us` has passed.
    fn on_ack(&mut self, now_us: u64, bytes: u64, min_interval_us: u64) {
        let Some(start) = self.sample_start_us else {
            // The first ack only starts the clock: its bytes were delivered before it, in no interval.
            self.sample_start_us = Some(now_us);
            return;
        };
        self.sample_bytes += bytes;
        let elapsed = now_us.saturating_sub(start);
        if elapsed < min_interval_us.max(RATE_SAMPLE_MIN_US) {
            return;
        }
        let rate = self.sample_bytes * 1_000_000 / elapsed.max(1);
        let period_start = *self.period_start_us.get_or_insert(now_us);
        if now_us.saturating_sub(period_start) >= RATE_MAX_PERIOD_US {
            self.previous_max = self.current_max;
            self.current_max = 0;
            self.period_start_us = Some(now_us);
        }
        self.current_max = self.current_max.max(rate);
        self.sample_start_us = Some(now_us);
        self.sample_bytes = 0;
    }

    fn bytes_per_sec(&self) -> u64 {
        self.current_max.max(self.previous_max)
    }
}

/// The minimum RTT of a path, with expiry (see the module comment).
#[derive(Clone, Debug, Default)]
struct MinRtt {
    value_us: Option<u64>,
    /// When a sample last came near the value.
    confirmed_us: u64,
    /// When a sample was last below `IMPLAUSIBLE_RTT_FACTOR` × the value (+ slack).
    plausible_us: u64,
    /// While probing: until when, and the lowest sample so far.
    probe: Option<(u64, u64)>,
    /// The lowest of the implausible samples in the second half of the time since `plausible_us`: the
    /// minimum once it is stale.
    lowest_implausible_us: Option<u64>,
}

impl MinRtt {
    fn on_sample(&mut self, now_us: u64, sample_us: u64, srtt_us: u64) {
        if let Some((until, lowest)) = self.probe {
            let lowest = lowest.min(sample_us);
            if now_us >= until {
                (self.value_us, self.confirmed_us, self.plausible_us, self.probe) =
                    (Some(lowest), now_us, now_us, None);
            } else {
                self.probe = Some((until, lowest));
            }
            return;
        }
        let Some(value) = self.value_us else {
            (self.value_us, self.confirmed_us, self.plausible_us) = (Some(sample_us), now_us, now_us);
            return;
        };
        // Below the cap's RTT floor every value gives the same cap: no need to probe for a better one.
        let near = (value * MIN_RTT_NEAR_PERCENT / 100 + 1_000).max(CAP_RTT_FLOOR_US);
        if sample_us <= value * IMPLAUSIBLE_RTT_FACTOR + IMPLAUSIBLE_SLACK_US {
            (self.plausible_us, self.lowest_implausible_us) = (now_us, None);
        } else if now_us.saturating_sub(self.plausible_us) > IMPLAUSIBLE_FOR_US / 2 {
            // Only the second half counts: packets in flight when the RTT changed saw part of the old one.
            self.lowest_implausible_us = Some(self.lowest_implausible_us.map_or(sample_us, |l| l.min(sample_us)));
        }
        if sample_us <= near {
            (self.value_us, self.confirmed_us, self.plausible_us) = (Some(value.min(sample_us)), now_us, now_us);
        } else if now_us.saturating_sub(self.plausible_us) > IMPLAUSIBLE_FOR_US {
            let lowest = self.lowest_implausible_us.take().unwrap_or(sample_us);
            (self.value_us, self.confirmed_us, self.plausible_us) = (Some(lowest), now_us, now_us);
        } else if now_us.saturating_sub(self.confirmed_us) > MIN_RTT_VALID_US {
            self.probe = Some((now_us + PROBE_RTT_US.max(srtt_us), sample_us));
        }
    }
}

/// A path's delivery rate and minimum RTT, from its acks.
#[derive(Clone, Debug, Default)]
pub struct PathRate {
    delivered: DeliveryRate,
    min_rtt: MinRtt,
}

impl PathRate {
    /// `bytes` sent at `sent_us` were acknowledged at `now_us`; `srtt_us` is the path's smoothed RTT.
    pub fn on_ack(&mut self, now_us: u64, sent_us: u64, bytes: u64, srtt_us: u64) {
        self.min_rtt.on_sample(now_us, now_us.saturating_sub(sent_us), srtt_us);
        self.delivered.on_ack(now_us, bytes, srtt_us);
    }

    /// The minimum RTT (µs), None before the first ack.
    pub fn min_rtt_us(&self) -> Option<u64> {
        self.min_rtt.value_us
    }

    /// Best recent delivery rate, bytes per second (0 before the first sample).
    pub fn bytes_per_sec(&self) -> u64 {
        self.delivered.bytes_per_sec()
    }

    /// True while the path probes for its minimum RTT.
    pub fn probing(&self) -> bool {
        self.min_rtt.probe.is_some()
    }

    /// The window cap: `gain_percent` of the bandwidth-delay product (half a BDP while probing), at least
    /// `MIN_CAP_BYTES`. None (no cap) before the rate and the RTT are known, or with a gain of 0.
    pub fn cap_bytes(&self, gain_percent: u64) -> Option<u64> {
        let rate = self.bytes_per_sec();
        let min_rtt = self.min_rtt_us()?;
        if rate == 0 || gain_percent == 0 {
            return None;
        }
        let gain = if self.probing() { PROBE_GAIN_PERCENT } else { gain_percent };
        let cap = rate as u128 * min_rtt.max(CAP_RTT_FLOOR_US) as u128 * gain as u128 / 100 / 1_000_000;
        Some((cap as u64).max(MIN_CAP_BYTES))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000;

    /// Acks `bytes_per_ms` every millisecond for `ms` milliseconds after `start`, each sent `rtt` before.
    fn steady(path: &mut PathRate, start: u64, ms: u64, bytes_per_ms: u64, rtt: u64) -> u64 {
        for i in 1..=ms {
            let now = start + i * MS;
            path.on_ack(now, now - rtt, bytes_per_ms, rtt);
        }
        start + ms * MS
    }

    #[test]
    fn delivery_rate_is_the_best_recent_sample() {
        let mut path = PathRate::default();
        assert_eq!(path.bytes_per_sec(), 0, "no estimate before a sample");
        assert_eq!(path.cap_bytes(150), None, "no cap before a rate is known");
        // 12.5 kB per ms = 100 Mbit/s over a 30 ms path.
        let t = steady(&mut path, 1_000 * MS, 200, 12_500, 30 * MS);
        let estimate = path.bytes_per_sec();
        assert!((12_000_000..=13_000_000).contains(&estimate), "{estimate}");
        // The rate halves: the old maximum still counts for this period and the next, then it is gone.
        let t = steady(&mut path, t, 1_000, 6_250, 30 * MS);
        assert!(path.bytes_per_sec() >= 12_000_000);
        steady(&mut path, t, 1_100, 6_250, 30 * MS);
        let estimate = path.bytes_per_sec();
        assert!((6_000_000..=6_600_000).contains(&estimate), "{estimate}");
    }

    #[test]
    fn bunched_acks_are_not_taken_for_a_faster_link() {
        let mut rate = DeliveryRate::default();
        // 25 ms worth of a 100 Mbit/s link acknowledged in one burst, then nothing until the next burst:
        // a window shorter than the ack spacing would see an infinite rate.
        for burst in 1..=20u64 {
            rate.on_ack(burst * 25 * MS, 312_500, 0);
        }
        let estimate = rate.bytes_per_sec();
        assert!(estimate <= 13_000_000, "{estimate}");
    }

    #[test]
    fn cap_is_a_share_of_the_bandwidth_delay_product() {
        let mut path = PathRate::default();
        // 100 Mbit/s on a 10 ms path: 150 % of 100 Mbit/s × 10 ms = 187.5 kB, whatever the smoothed RTT.
        steady(&mut path, 1_000 * MS, 1_000, 12_500, 10 * MS);
        let cap = path.cap_bytes(150).unwrap();
        assert!((180_000..=195_000).contains(&cap), "{cap}");
        assert_eq!(path.cap_bytes(0), None, "gain 0: no cap");
        // Probing: half the BDP (a third of the 150 % cap), here above MIN_CAP_BYTES on a 20 ms path.
        let mut path = PathRate::default();
        steady(&mut path, 1_000 * MS, 1_000, 12_500, 20 * MS);
        let cap = path.cap_bytes(150).unwrap();
        path.min_rtt.probe = Some((3_000 * MS, 20 * MS));
        let probing = path.cap_bytes(150).unwrap();
        assert!(probing * 3 == cap || probing * 3 + 1 == cap, "{probing} vs {cap}");
    }

    #[test]
    fn the_cap_does_not_throttle_a_lan_like_path() {
        let mut path = PathRate::default();
        // 100 Mbit/s at 0.1-3 ms for 30 s: the cap counts 5 ms, and the path never probes (nothing to gain).
        for i in 1..=30_000u64 {
            let now = (1_000 + i) * MS;
            let rtt = if i % 2 == 0 { 100 } else { 3 * MS };
            path.on_ack(now, now - rtt, 12_500, MS);
            assert!(!path.probing(), "probed at {i} ms");
        }
        let cap = path.cap_bytes(150).unwrap();
        assert!((90_000..=97_000).contains(&cap), "{cap}");
    }

    #[test]
    fn a_path_whose_rtt_grows_gets_its_new_minimum() {
        let mut min = MinRtt::default();
        let mut now = 0;
        for _ in 0..1_000 {
            now += MS;
            min.on_sample(now, 10 * MS, 12 * MS);
        }
        assert_eq!(min.value_us, Some(10 * MS));
        // Samples near the minimum now and then (jitter) keep it valid however long.
        for i in 0..20_000u64 {
            now += MS;
            min.on_sample(now, if i % 100 == 0 { 10 * MS + MS / 2 } else { 30 * MS }, 30 * MS);
        }
        assert!(min.probe.is_none() && min.value_us == Some(10 * MS));
        // Slowly growing samples (a longer route, or other traffic's queue) that stay plausible: the path
        // probes once MIN_RTT_VALID_US has passed without a sample near the minimum.
        let slow_change = now;
        while min.probe.is_none() {
            now += MS;
            min.on_sample(now, 25 * MS, 25 * MS);
            assert!(now - slow_change <= MIN_RTT_VALID_US + 2 * MS, "never probed");
        }
        assert!(now - slow_change >= MIN_RTT_VALID_US - 100 * MS, "the last near sample was < 100 ms before");
        while min.probe.is_some() {
            now += MS;
            min.on_sample(now, 20 * MS, 25 * MS);
        }
        assert_eq!(min.value_us, Some(20 * MS));
        // The route changes: 60-65 ms from now on, more than twice the minimum (the first acks saw part of
        // the old RTT: 55 ms). After IMPLAUSIBLE_FOR_US the path takes the lowest RTT of the last half of
        // that time, with no probe (no cut of its window).
        let changed = now;
        while min.value_us == Some(20 * MS) {
            now += MS;
            let sample = match now - changed {
                ..=30_000 => 55 * MS,
                _ if now % (7 * MS) == 0 => 60 * MS,
                _ => 65 * MS,
            };
            min.on_sample(now, sample, 65 * MS);
            assert!(min.probe.is_none(), "probed");
            assert!(now - changed <= IMPLAUSIBLE_FOR_US + 2 * MS, "minimum not replaced in time");
        }
        assert!(now - changed >= IMPLAUSIBLE_FOR_US);
        assert_eq!(min.value_us, Some(60 * MS));
        // A lower sample afterwards lowers it again at once.
        min.on_sample(now + MS, 55 * MS, 60 * MS);
        assert_eq!(min.value_us, Some(55 * MS));
    }
}
