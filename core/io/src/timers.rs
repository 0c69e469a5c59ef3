//! The per-path timer: probes, the health verdict (probe replies and QUIC acks are signs of life), and the
//! scheduler inputs taken from quinn's stats.
//! Runs every `PROBE_INTERVAL_US` for as long as the path's connection lives.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use quicether_proto::health::{PathState, PROBE_INTERVAL_US};

use crate::congestion::path_estimates;
use crate::events::DownReason;
use crate::peer::{Event, Path, Peer, Shared};

/// Throughput for status is measured over this window.
const RATE_WINDOW: Duration = Duration::from_secs(1);

pub async fn path_timer(shared: Arc<Shared>, peer: Arc<Peer>, path: Arc<Path>) {
    let key = peer.key;
    let mut tick = tokio::time::interval(Duration::from_micros(PROBE_INTERVAL_US));
    let mut window_start = std::time::Instant::now();
    let (mut last_tx, mut last_rx) = (0u64, 0u64);
    while path.conn.close_reason().is_none() {
        tick.tick().await;
        let now = shared.now_us();
        let estimates = path_estimates(&path.conn);
        let (probe, change) = {
            let mut health = path.health.lock().unwrap();
            if let Some(acked) = estimates.as_ref().and_then(|e| e.last_acked) {
                health.note_acked(now.saturating_sub(acked.elapsed().as_micros() as u64));
            }
            (health.poll_probe(now), health.poll_state(now))
        };
        if let Some(id) = probe {
            let frame = peer.sender.lock().unwrap().probe(id);
            let _ = path.conn.send_datagram(frame);
        }
        if change == Some(PathState::Down) {
            path.up.store(false, Ordering::Relaxed);
            // Everything sent since shortly before the last reply may be lost with the path.
            let window = path.health.lock().unwrap().down_after_us() + path.srtt_us.load(Ordering::Relaxed);
            let resent = peer.resend_from_failed(path.id, window, now);
            peer.redial.notify_waiters();
            shared.emit(Event::PathDown {
                key,
                route: path.route.clone(),
                reason: DownReason::Silent,
                detail: format!("no probe replies ({resent} recent packets resent on other paths)"),
            });
        }
        // Scheduler inputs: quinn's smoothed RTT (it includes queueing at the bottleneck); cwnd/RTT, the rate
        // the congestion controller lets the path send at now (what drains our queue); and from the acks the
        // delivery rate and the minimum RTT. That minimum expires (a lower one kept after the path's base RTT
        // grew for good would make the scheduler count the growth as queue and under-use the path).
        let stats = path.conn.stats();
        let rtt_us = stats.path.rtt.as_micros().max(1) as u64;
        path.srtt_us.store(rtt_us, Ordering::Relaxed);
        path.window_rate_bps.store(stats.path.cwnd * 8 * 1_000_000 / rtt_us, Ordering::Relaxed);
        if let Some(estimates) = estimates {
            path.rate_bps.store(estimates.delivery_rate_bps, Ordering::Relaxed);
            if let Some(min_rtt_us) = estimates.min_rtt_us {
                path.min_rtt_us.store(min_rtt_us, Ordering::Relaxed);
            }
        }
        let elapsed = window_start.elapsed();
        if elapsed >= RATE_WINDOW {
            let tx = path.counters.tx_bytes.load(Ordering::Relaxed);
            let rx = path.counters.rx_bytes.load(Ordering::Relaxed);
            let secs = elapsed.as_secs_f64();
            path.tx_rate_bps.store(((tx - last_tx) as f64 * 8.0 / secs) as u64, Ordering::Relaxed);
            path.rx_rate_bps.store(((rx - last_rx) as f64 * 8.0 / secs) as u64, Ordering::Relaxed);
            (last_tx, last_rx, window_start) = (tx, rx, std::time::Instant::now());
        }
    }
}
