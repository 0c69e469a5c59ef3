//! How refused handshakes are reported. Anyone on the internet can start a QUIC handshake with a fresh
//! key per attempt, so what we remember and report per refusal must be bounded: a refusal is counted
//! always, reported (an event, a log line) at most once per key per `PER_KEY_INTERVAL_US` and at most
//! `MAX_REPORTS_PER_SEC` times per second overall, and at most `MAX_REMEMBERED` keys are remembered (the
//! one refused longest ago is forgotten first). A misconfigured peer retrying every second is reported
//! once a minute; a flood costs a counter, not the log.

use std::collections::HashMap;
use std::hash::Hash;

/// A key refused again within this is not reported again.
pub const PER_KEY_INTERVAL_US: u64 = 60_000_000;
/// Reports per second overall, whatever the number of keys.
pub const MAX_REPORTS_PER_SEC: u32 = 5;
/// Keys remembered for the per-key interval.
pub const MAX_REMEMBERED: usize = 1024;

/// Refusal counters and the memory behind the rate limits. `K` names the refused party (a node key, or
/// None for a certificate without one).
#[derive(Debug)]
pub struct RefusalLimiter<K> {
    per_key_interval_us: u64,
    max_per_sec: u32,
    max_remembered: usize,
    last_reported: HashMap<K, u64>,
    second_start_us: u64,
    reports_this_second: u32,
    /// Every refusal, reported or not.
    pub refused: u64,
    /// Refusals not reported because of a limit.
    pub suppressed: u64,
}

impl<K: Hash + Eq + Clone> Default for RefusalLimiter<K> {
    fn default() -> Self {
        Self::with_limits(PER_KEY_INTERVAL_US, MAX_REPORTS_PER_SEC, MAX_REMEMBERED)
    }
}

impl<K: Hash + Eq + Clone> RefusalLimiter<K> {
    pub fn with_limits(per_key_interval_us: u64, max_per_sec: u32, max_remembered: usize) -> Self {
        Self {
            per_key_interval_us,
            max_per_sec,
            max_remembered: max_remembered.max(1),
            last_reported: HashMap::new(),
            second_start_us: 0,
            reports_this_second: 0,
            refused: 0,
            suppressed: 0,
        }
    }

    /// Counts a refusal of `key` at `now_us`; true if it should be reported.
    pub fn on_refused(&mut self, key: K, now_us: u64) -> bool {
        self.refused += 1;
        let recent =
            self.last_reported.get(&key).is_some_and(|&at| now_us.saturating_sub(at) < self.per_key_interval_us);
        if now_us.saturating_sub(self.second_start_us) >= 1_000_000 {
            (self.second_start_us, self.reports_this_second) = (now_us, 0);
        }
        if recent || self.reports_this_second >= self.max_per_sec {
            self.suppressed += 1;
            return false;
        }
        self.reports_this_second += 1;
        if self.last_reported.len() >= self.max_remembered && !self.last_reported.contains_key(&key) {
            // Bounded memory: forget the key reported longest ago (a scan of `max_remembered` entries costs
            // far less than the handshake that got us here).
            if let Some(oldest) = self.last_reported.iter().min_by_key(|(_, &at)| at).map(|(k, _)| k.clone()) {
                self.last_reported.remove(&oldest);
            }
        }
        self.last_reported.insert(key, now_us);
        true
    }

    /// Forgets `key`, so its next refusal is reported (the rate limit still applies): for a key that was
    /// just unpinned, whose refusals are news.
    pub fn forget(&mut self, key: &K) {
        self.last_reported.remove(key);
    }

    /// Keys remembered now (at most `max_remembered`).
    pub fn remembered(&self) -> usize {
        self.last_reported.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    #[test]
    fn a_retrying_key_is_reported_once_per_interval() {
        let mut r = RefusalLimiter::default();
        assert!(r.on_refused(1u32, 10 * S));
        for i in 1..60 {
            assert!(!r.on_refused(1u32, 10 * S + i * S), "reported again after {i} s");
        }
        assert!(r.on_refused(1u32, 10 * S + PER_KEY_INTERVAL_US));
        assert_eq!((r.refused, r.suppressed), (61, 59));
        r.forget(&1u32);
        assert!(r.on_refused(1u32, 11 * S + PER_KEY_INTERVAL_US), "a forgotten key is reported at once");
    }

    #[test]
    fn a_flood_of_fresh_keys_is_reported_at_a_bounded_rate_with_bounded_memory() {
        let mut r = RefusalLimiter::default();
        let mut reported = 0;
        // 100 000 fresh keys over 10 s.
        for i in 0..100_000u64 {
            if r.on_refused(i, i * 100) {
                reported += 1;
            }
            assert!(r.remembered() <= MAX_REMEMBERED);
        }
        assert!(reported <= 11 * MAX_REPORTS_PER_SEC as u64, "{reported}");
        assert!(reported >= 10 * MAX_REPORTS_PER_SEC as u64, "{reported}");
        assert_eq!(r.refused, 100_000);
        assert_eq!(r.suppressed, 100_000 - reported);
    }

    #[test]
    fn a_real_refusal_is_still_reported_during_a_flood_the_second_after() {
        let mut r = RefusalLimiter::default();
        for i in 0..1_000u64 {
            r.on_refused(Some(i), 5 * S + i);
        }
        // The misconfigured real peer, a second later: reported, because the limit is per second.
        assert!(r.on_refused(None, 6 * S + 1));
    }

    #[test]
    fn memory_forgets_the_oldest_key_first() {
        // Three keys remembered, a 60 s interval, no overall limit to speak of.
        let mut r = RefusalLimiter::with_limits(60 * S, 1000, 3);
        for (i, key) in ["a", "b", "c"].into_iter().enumerate() {
            assert!(r.on_refused(key, i as u64 * S));
        }
        assert!(r.on_refused("d", 3 * S), "a fourth key is reported");
        assert_eq!(r.remembered(), 3);
        // "a" (reported longest ago) was forgotten, so it is reported again within its interval; "b" not.
        assert!(!r.on_refused("b", 4 * S));
        assert!(r.on_refused("a", 5 * S));
        assert!(!r.on_refused("d", 6 * S));
    }
}
