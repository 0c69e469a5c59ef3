//! Debug and tuning switches, all in one place: environment variables read once at first use.
//! They exist to measure alternatives (scripts/bench-*) without rebuilding; defaults are the tuned values.

use std::sync::OnceLock;

use quicether_proto::scheduler::QUEUE_BUDGET_US;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// `QUICETHER_QUEUE_BUDGET_US`: queueing delay a path may build before the scheduler counts it full.
pub fn queue_budget_us() -> u64 {
    static VALUE: OnceLock<u64> = OnceLock::new();
    *VALUE.get_or_init(|| env_u64("QUICETHER_QUEUE_BUDGET_US").unwrap_or(QUEUE_BUDGET_US))
}

/// `QUICETHER_INFLIGHT_GAIN_PERCENT`: the per-path window cap in percent of the bandwidth-delay product
/// (0: no cap, plain loss-tolerant CUBIC).
pub fn inflight_gain_percent() -> u64 {
    static VALUE: OnceLock<u64> = OnceLock::new();
    *VALUE
        .get_or_init(|| env_u64("QUICETHER_INFLIGHT_GAIN_PERCENT").unwrap_or(crate::congestion::INFLIGHT_GAIN_PERCENT))
}

/// `QUICETHER_NO_PUNCH=1`: no hole punching is started or answered (relaying others' requests goes on),
/// to measure what connects without it (tests/test_mesh_nat.py, scripts/bench-mesh).
pub fn punch_disabled() -> bool {
    static VALUE: OnceLock<bool> = OnceLock::new();
    *VALUE.get_or_init(|| env_u64("QUICETHER_NO_PUNCH") == Some(1))
}

/// Lab switch (QUICETHER_RELAY_TRY_ANY=1): dial through every connected peer as if it had offered to
/// relay, towards every peer with endpoints, member or not. Only for the lab test that a relay refuses
/// what a non-member sends it; the relay's own checks do not look at it.
pub fn relay_try_any() -> bool {
    static VALUE: OnceLock<bool> = OnceLock::new();
    *VALUE.get_or_init(|| env_u64("QUICETHER_RELAY_TRY_ANY") == Some(1))
}

/// `QUICETHER_TUN_OFFLOADS=0`: open the TUN without offloads (one packet per read and write), to measure
/// what they bring (scripts/bench-tunnel --no-offloads) or to rule them out.
pub fn tun_offloads() -> bool {
    static VALUE: OnceLock<bool> = OnceLock::new();
    *VALUE.get_or_init(|| env_u64("QUICETHER_TUN_OFFLOADS") != Some(0))
}

/// `QUICETHER_TUN_GRO=0`: every inner packet is its own TUN write, as before GRO (`quicether_proto::gro`),
/// to measure what merging gains (scripts/bench-tunnel).
pub fn tun_gro() -> bool {
    static VALUE: OnceLock<bool> = OnceLock::new();
    *VALUE.get_or_init(|| env_u64("QUICETHER_TUN_GRO") != Some(0))
}
