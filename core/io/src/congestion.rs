//! Congestion control for paths: CUBIC that tells random loss from congestion.
//!
//! A QuicEther path carries the inner TCP's packets as unreliable datagrams; a lost one is repaired by
//! NACK or by the inner TCP, not by QUIC. What the path's congestion control must do is keep the link's
//! queue from overflowing. Plain CUBIC also halves its window on random loss (radio, noisy DSL), which on
//! a 1 %-loss, 60 ms link holds it to a few Mbit/s. This wrapper forwards a loss to CUBIC only when it
//! looks like congestion: the RTT shows a queue building (smoothed RTT above 1.2 × the minimum plus
//! `QUEUE_RTT_SLACK`), or losses are too frequent to be noise
//! (`NOISE_LOSS_RATE`), or QUIC declares persistent congestion.

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

pub struct LossTolerant {
    inner: Box<dyn Controller>,
    srtt: Duration,
    min_rtt: Duration,
    loss_rate: f64,
}

impl LossTolerant {
    fn looks_congested(&self) -> bool {
        // Before any RTT sample (min_rtt still MAX) nothing says "random": treat a loss as congestion.
        let Some(queue_threshold) = self.min_rtt.checked_mul(6).map(|m| m / 5 + QUEUE_RTT_SLACK) else {
            return true;
        };
        self.srtt > queue_threshold || self.loss_rate > NOISE_LOSS_RATE
    }
}

impl Controller for LossTolerant {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool, rtt: &RttEstimator) {
        self.srtt = rtt.get();
        self.min_rtt = rtt.min();
        self.loss_rate *= 1.0 - LOSS_EWMA;
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
        self.inner.window()
    }

    fn metrics(&self) -> ControllerMetrics {
        self.inner.metrics()
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(LossTolerant {
            inner: self.inner.clone_box(),
            srtt: self.srtt,
            min_rtt: self.min_rtt,
            loss_rate: self.loss_rate,
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
            min_rtt: Duration::MAX,
            loss_rate: 0.0,
        })
    }
}
