//! Congestion control for paths: CUBIC that tells random loss from congestion.
//!
//! A QuicEther path carries the inner TCP's packets as unreliable datagrams; a lost one is repaired by
//! NACK or by the inner TCP, not by QUIC. What the path's congestion control must do is keep the link's
//! queue from overflowing. Plain CUBIC also halves its window on random loss (radio, noisy DSL), which on
//! a 1 %-loss, 60 ms link holds it to a few Mbit/s. This wrapper forwards a loss to CUBIC only when it
//! looks like congestion: the RTT shows a queue building (smoothed RTT above 1.2 × the minimum plus
//! `QUEUE_RTT_SLACK`), or losses are too frequent to be noise
//! (`NOISE_LOSS_RATE`), or QUIC declares persistent congestion.
//!
//! CUBIC alone also fills whatever buffer the link has before a loss stops it (a 40 ms queue on a 10 ms
//! path); every ms of it is reorder delay for the whole bond, since the receiver releases in sequence
//! order. So the window is also capped at `INFLIGHT_GAIN_PERCENT` of the best recent delivery rate × the
//! minimum RTT (like BBR's inflight bound): the link's bandwidth-delay product plus a queue of half the
//! path's RTT, which still lets a path's rate grow by half per round trip when the scheduler gives it more.
//!
//! The minimum RTT must follow a path whose base RTT grows for good (a mobile handover, an ISP's new
//! route): a stale, lower one would shrink the cap below what the path needs, the delivery rate with it,
//! and so on down to `MIN_CAP_BYTES`. So it expires: when no RTT sample has come near it for
//! `MIN_RTT_VALID`, or none has been below `IMPLAUSIBLE_RTT_FACTOR` times it for `IMPLAUSIBLE_FOR` (the
//! cap keeps queues shorter than that, so the minimum itself must be wrong), the path probes (window at
//! half its bandwidth-delay product for `PROBE_RTT_TIME`, so its queue drains) and takes the lowest RTT
//! seen then (BBRv2's PROBE_RTT, in short).

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics, CubicConfig};
use quinn_proto::RttEstimator;

/// Plus this, so a few ms of jitter on a short path is not taken for a queue.
const QUEUE_RTT_SLACK: Duration = Duration::from_millis(2);
/// Losses above this fraction of bytes are congestion whatever the RTT says (a shallow-buffered link
/// drops before the RTT can grow).
const NOISE_LOSS_RATE: f64 = 0.10;
/// Weight of each new ack/loss in the loss-rate average.
const LOSS_EWMA: f64 = 1.0 / 64.0;
/// Window cap in percent of the bandwidth-delay product. Measured on the three-WAN lab (bench-bond, 1 / 8
/// flows): no cap 70 / 70 % of the link sum, 200 % 76 / 79 %, 150 % 79 / 83 %, 125 % 77 / 84 %, 100 %
/// unstable (64-82 %). BBR uses 200 % to absorb ack bunching; our delivery-rate samples span an RTT.
pub const INFLIGHT_GAIN_PERCENT: u64 = 150;
/// The minimum RTT used for the cap is at least this: on a LAN-like path (sub-ms RTT) a cap of a few
/// packets would throttle a Gbit/s tunnel while saving no measurable delay.
const CAP_RTT_FLOOR: Duration = Duration::from_millis(5);
/// Delivery rate is sampled over intervals of at least this and at least one smoothed RTT: acks come in
/// bunches (a peer may delay them up to 25 ms), and a shorter window overestimates the rate.
const RATE_SAMPLE_MIN: Duration = Duration::from_millis(25);
/// The best delivery rate of the current and the previous such period counts (a path's rate is allowed to
/// fall without the cap following at once, and a loaded path's estimate stays fresh).
const RATE_MAX_PERIOD: Duration = Duration::from_secs(1);
/// The cap never goes below this many bytes (a fresh or idle path must be able to start).
const MIN_CAP_BYTES: u64 = 64 << 10;
/// The minimum RTT holds while samples come within `MIN_RTT_NEAR_PERCENT` (+ 1 ms) of it at least this often.
const MIN_RTT_VALID: Duration = Duration::from_secs(10);
const MIN_RTT_NEAR_PERCENT: u32 = 110;
/// Samples above this multiple of the minimum (+ `IMPLAUSIBLE_SLACK` for delayed acks) for
/// `IMPLAUSIBLE_FOR` mean the minimum is stale. Measured on a 100 Mbit/s path whose RTT went from 10 to
/// 60 ms: with the minimum kept for good the path stayed at 4-11 Mbit/s; with only the `MIN_RTT_VALID`
/// expiry it took 8 s to recover; with this, ~5 s, as long as without any cap (the inner TCP adapting).
const IMPLAUSIBLE_RTT_FACTOR: u32 = 2;
const IMPLAUSIBLE_SLACK: Duration = Duration::from_millis(10);
const IMPLAUSIBLE_FOR: Duration = Duration::from_secs(1);
/// A probe lasts this long, and at least one smoothed RTT.
const PROBE_RTT_TIME: Duration = Duration::from_millis(200);

/// The minimum RTT of a path, with expiry (see the module comment).
#[derive(Clone)]
struct MinRtt {
    value: Duration,
    /// When a sample last came near `value`.
    confirmed: Option<Instant>,
    /// When a sample was last below `IMPLAUSIBLE_RTT_FACTOR` × `value` (+ slack).
    plausible: Option<Instant>,
    /// While probing: until when, and the lowest sample so far.
    probe: Option<(Instant, Duration)>,
}

impl Default for MinRtt {
    fn default() -> Self {
        MinRtt { value: Duration::MAX, confirmed: None, plausible: None, probe: None }
    }
}

impl MinRtt {
    /// One RTT sample (ack time − send time) at `now`.
    fn on_sample(&mut self, now: Instant, sample: Duration, srtt: Duration) {
        if let Some((until, lowest)) = self.probe {
            let lowest = lowest.min(sample);
            if now >= until {
                (self.value, self.confirmed, self.plausible, self.probe) = (lowest, Some(now), Some(now), None);
            } else {
                self.probe = Some((until, lowest));
            }
            return;
        }
        // Below the cap's RTT floor every value gives the same cap: no need to probe for a better one.
        let near =
            (self.value.saturating_mul(MIN_RTT_NEAR_PERCENT) / 100 + Duration::from_millis(1)).max(CAP_RTT_FLOOR);
        if sample <= self.value.saturating_mul(IMPLAUSIBLE_RTT_FACTOR).saturating_add(IMPLAUSIBLE_SLACK) {
            self.plausible = Some(now);
        }
        let since = |at: Option<Instant>| at.map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
        if sample <= near || self.confirmed.is_none() {
            self.value = self.value.min(sample);
            (self.confirmed, self.plausible) = (Some(now), Some(now));
        } else if since(self.confirmed) > MIN_RTT_VALID || since(self.plausible) > IMPLAUSIBLE_FOR {
            self.probe = Some((now + PROBE_RTT_TIME.max(srtt), sample));
        }
    }

    /// The minimum RTT, None before the first sample.
    fn get(&self) -> Option<Duration> {
        (self.value != Duration::MAX).then_some(self.value)
    }

    fn probing(&self) -> bool {
        self.probe.is_some()
    }
}

/// Windowed maximum of delivery-rate samples: the best of the current and the previous period.
#[derive(Clone, Default)]
struct DeliveryRate {
    sample_start: Option<Instant>,
    sample_bytes: u64,
    period_start: Option<Instant>,
    current_max: u64,
    previous_max: u64,
}

impl DeliveryRate {
    /// Counts `bytes` acknowledged at `now`; closes a sample once `min_interval` has passed.
    fn on_ack(&mut self, now: Instant, bytes: u64, min_interval: Duration) {
        let Some(start) = self.sample_start else {
            // The first ack only starts the clock: its bytes were delivered before it, in no interval.
            self.sample_start = Some(now);
            return;
        };
        self.sample_bytes += bytes;
        let elapsed = now.saturating_duration_since(start);
        if elapsed < min_interval.max(RATE_SAMPLE_MIN) {
            return;
        }
        let rate = (self.sample_bytes as u128 * 1_000_000 / elapsed.as_micros().max(1)) as u64;
        let period_start = *self.period_start.get_or_insert(now);
        if now.saturating_duration_since(period_start) >= RATE_MAX_PERIOD {
            self.previous_max = self.current_max;
            self.current_max = 0;
            self.period_start = Some(now);
        }
        self.current_max = self.current_max.max(rate);
        self.sample_start = Some(now);
        self.sample_bytes = 0;
    }

    /// Best recent delivery rate, bytes per second (0 before the first sample).
    fn bytes_per_sec(&self) -> u64 {
        self.current_max.max(self.previous_max)
    }
}

pub struct LossTolerant {
    inner: Box<dyn Controller>,
    srtt: Duration,
    min_rtt: MinRtt,
    loss_rate: f64,
    delivered: DeliveryRate,
}

impl LossTolerant {
    fn looks_congested(&self) -> bool {
        // Before any RTT sample nothing says "random": treat a loss as congestion.
        let Some(queue_threshold) = self.min_rtt.get().map(|m| m * 6 / 5 + QUEUE_RTT_SLACK) else {
            return true;
        };
        self.srtt > queue_threshold || self.loss_rate > NOISE_LOSS_RATE
    }

    fn record_ack(&mut self, now: Instant, sent: Instant, bytes: u64, srtt: Duration) {
        self.srtt = srtt;
        self.min_rtt.on_sample(now, now.saturating_duration_since(sent), srtt);
        self.loss_rate *= 1.0 - LOSS_EWMA;
        self.delivered.on_ack(now, bytes, srtt);
    }

    /// `INFLIGHT_GAIN_PERCENT` of the bandwidth-delay product (best recent delivery rate × minimum RTT).
    fn inflight_cap(&self) -> u64 {
        let rate = self.delivered.bytes_per_sec();
        let gain = crate::debug::inflight_gain_percent();
        let (Some(min_rtt), false) = (self.min_rtt.get(), rate == 0 || gain == 0) else {
            return u64::MAX;
        };
        // Probing for the minimum RTT: half a bandwidth-delay product drains the path's queue.
        let gain = if self.min_rtt.probing() { 50 } else { gain };
        let rtt_us = min_rtt.max(CAP_RTT_FLOOR).as_micros();
        let cap = rate as u128 * rtt_us * gain as u128 / 100 / 1_000_000;
        (cap as u64).max(MIN_CAP_BYTES)
    }
}

impl Controller for LossTolerant {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool, rtt: &RttEstimator) {
        self.record_ack(now, sent, bytes, rtt.get());
        // CUBIC does not grow while the sender is app-limited, and a bond path is app-limited whenever
        // the scheduler prefers others: a path that lost its window once would stay too small to be
        // chosen again. Once the cap bounds the window by what the path delivers, growth is safe.
        let app_limited = app_limited && self.inflight_cap() == u64::MAX;
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(&mut self, now: Instant, in_flight: u64, app_limited: bool, largest_acked: Option<u64>) {
        self.inner.on_end_acks(now, in_flight, app_limited, largest_acked);
    }

    fn on_congestion_event(&mut self, now: Instant, sent: Instant, is_persistent_congestion: bool, lost_bytes: u64) {
        self.loss_rate = self.loss_rate * (1.0 - LOSS_EWMA) + LOSS_EWMA;
        if is_persistent_congestion || self.looks_congested() {
            self.inner.on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
        }
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.inner.window().min(self.inflight_cap())
    }

    fn metrics(&self) -> ControllerMetrics {
        self.inner.metrics()
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(LossTolerant {
            inner: self.inner.clone_box(),
            srtt: self.srtt,
            min_rtt: self.min_rtt.clone(),
            loss_rate: self.loss_rate,
            delivered: self.delivered.clone(),
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// Builds `LossTolerant` CUBIC controllers for new connections.
#[derive(Default)]
pub struct LossTolerantConfig {
    cubic: Arc<CubicConfig>,
}

impl ControllerFactory for LossTolerantConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(LossTolerant {
            inner: self.cubic.clone().build(now, current_mtu),
            srtt: Duration::ZERO,
            min_rtt: MinRtt::default(),
            loss_rate: 0.0,
            delivered: DeliveryRate::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Acks `bytes_per_ms` every millisecond for `ms` milliseconds from `start`.
    fn steady(rate: &mut DeliveryRate, start: Instant, ms: u32, bytes_per_ms: u64, interval: Duration) -> Instant {
        for i in 1..=ms {
            rate.on_ack(start + MS * i, bytes_per_ms, interval);
        }
        start + MS * ms
    }

    #[test]
    fn delivery_rate_is_the_best_recent_sample() {
        let mut rate = DeliveryRate::default();
        let t0 = Instant::now();
        assert_eq!(rate.bytes_per_sec(), 0, "no estimate before a sample");
        // 12.5 kB per ms = 100 Mbit/s, sampled over one 30 ms RTT.
        let t = steady(&mut rate, t0, 200, 12_500, 30 * MS);
        let estimate = rate.bytes_per_sec();
        assert!((12_000_000..=13_000_000).contains(&estimate), "{estimate}");
        // The rate halves: the old maximum still counts for this period and the next, then it is gone.
        let t = steady(&mut rate, t, 1_000, 6_250, 30 * MS);
        assert!(rate.bytes_per_sec() >= 12_000_000);
        steady(&mut rate, t, 1_100, 6_250, 30 * MS);
        let estimate = rate.bytes_per_sec();
        assert!((6_000_000..=6_600_000).contains(&estimate), "{estimate}");
    }

    #[test]
    fn bunched_acks_are_not_taken_for_a_faster_link() {
        let mut rate = DeliveryRate::default();
        let t0 = Instant::now();
        // 25 ms worth of a 100 Mbit/s link acknowledged in one burst, then nothing until the next burst:
        // a window shorter than the ack spacing would see an infinite rate.
        for burst in 1..=20u32 {
            rate.on_ack(t0 + MS * (25 * burst), 312_500, Duration::ZERO);
        }
        let estimate = rate.bytes_per_sec();
        assert!(estimate <= 13_000_000, "{estimate}");
    }

    fn tolerant(start: Instant) -> LossTolerant {
        LossTolerant {
            inner: Arc::new(CubicConfig::default()).build(start, 1400),
            srtt: Duration::ZERO,
            min_rtt: MinRtt::default(),
            loss_rate: 0.0,
            delivered: DeliveryRate::default(),
        }
    }

    #[test]
    fn window_is_capped_near_the_bandwidth_delay_product() {
        let start = Instant::now();
        let mut cc = tolerant(start);
        assert_eq!(cc.inflight_cap(), u64::MAX, "no cap before a rate is known");
        // 100 Mbit/s acked for a second on a 10 ms path whose queue has grown the smoothed RTT to 40 ms:
        // the cap is 150 % of 100 Mbit/s × 10 ms = 187.5 kB, whatever CUBIC's window.
        for i in 1..=1_000u32 {
            let now = start + MS * i;
            cc.record_ack(now, now - 10 * MS, 12_500, 40 * MS);
        }
        let cap = cc.inflight_cap();
        assert!((180_000..=195_000).contains(&cap), "{cap}");
        assert!(cc.window() <= cap);
    }

    #[test]
    fn the_cap_does_not_throttle_a_lan_like_path() {
        let start = Instant::now();
        let mut cc = tolerant(start);
        // 100 Mbit/s at 0.1 ms for 30 s: the cap counts 5 ms, and never probes (nothing to gain).
        for i in 1..=30_000u32 {
            let now = start + MS * i;
            let rtt = if i % 2 == 0 { Duration::from_micros(100) } else { 3 * MS };
            cc.record_ack(now, now - rtt, 12_500, MS);
            assert!(!cc.min_rtt.probing(), "probed at {i} ms");
        }
        let cap = cc.inflight_cap();
        assert!((90_000..=97_000).contains(&cap), "{cap}");
    }

    #[test]
    fn a_path_whose_rtt_grows_for_good_gets_its_new_minimum_by_probing() {
        let start = Instant::now();
        let mut min = MinRtt::default();
        let mut now = start;
        for _ in 0..1_000 {
            now += MS;
            min.on_sample(now, 10 * MS, 12 * MS);
        }
        assert_eq!(min.get(), Some(10 * MS));
        // Samples near the minimum (jitter) keep it valid however long.
        for i in 0..20_000u32 {
            now += MS;
            min.on_sample(now, if i % 100 == 0 { 10 * MS + MS / 2 } else { 30 * MS }, 30 * MS);
        }
        assert!(!min.probing() && min.get() == Some(10 * MS));
        // Slowly growing samples (a longer route, or other traffic's queue) that stay plausible: the path
        // probes once MIN_RTT_VALID has passed without a sample near the minimum.
        let slow_change = now;
        while !min.probing() {
            now += MS;
            min.on_sample(now, 25 * MS, 25 * MS);
            assert!(now - slow_change <= MIN_RTT_VALID + 2 * MS, "never probed");
        }
        assert!(now - slow_change >= MIN_RTT_VALID - 100 * MS, "the last near sample was < 100 ms before");
        while min.probing() {
            now += MS;
            min.on_sample(now, 20 * MS, 25 * MS);
        }
        assert_eq!(min.get(), Some(20 * MS));
        // The route changes: 60 ms from now on, more than twice the minimum. The path probes after
        // IMPLAUSIBLE_FOR, for PROBE_RTT_TIME, and takes the lowest RTT it saw then.
        let changed = now;
        while !min.probing() {
            now += MS;
            min.on_sample(now, 65 * MS, 65 * MS);
            assert!(now - changed <= IMPLAUSIBLE_FOR + 2 * MS, "did not probe in time");
        }
        let probe_start = now;
        while min.probing() {
            now += MS;
            min.on_sample(now, 60 * MS, 65 * MS);
        }
        assert!(now - probe_start >= PROBE_RTT_TIME);
        assert_eq!(min.get(), Some(60 * MS));
    }

    #[test]
    fn probing_halves_the_cap_to_drain_the_queue() {
        let start = Instant::now();
        let mut cc = tolerant(start);
        let mut now = start;
        for _ in 0..1_000 {
            now += MS;
            cc.record_ack(now, now - 20 * MS, 12_500, 20 * MS);
        }
        let normal = cc.inflight_cap();
        cc.min_rtt.probe = Some((now + PROBE_RTT_TIME, 20 * MS));
        let probing = cc.inflight_cap();
        assert!(probing * 3 == normal || probing * 3 + 1 == normal, "{probing} vs {normal}");
    }
}
