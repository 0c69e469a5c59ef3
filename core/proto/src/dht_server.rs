//! Which requests a DHT node in server mode (`[discovery] server = true`) answers. It answers anyone (the
//! DHT is open), so a flood of well-formed requests from one address must not use up what the node gives
//! everyone: each source address has a token bucket of its own, checked first, and a request refused for
//! its source costs the shared budget nothing. The shared bucket bounds the total (a flood from many
//! addresses can still use it up; then every requester waits alike, and the bond is not touched).
//!
//! Memory: one bucket per source address, at most `MAX_SOURCES`; a new source beyond that takes the place
//! of the source seen longest ago (which, having been idle, would have a full bucket again anyway).

use std::collections::HashMap;
use std::net::Ipv4Addr;

/// Requests answered per second, all sources together: a gateway on a home uplink answers a private
/// network's members (a few requests a second each) and some of the public DHT's traffic, not a flood.
pub const TOTAL_PER_SEC: u64 = 200;
/// Requests answered per second from one address, and the burst: a member's lookup or publish asks this
/// node a handful of times; a node behind a NAT shared with a few others still fits.
pub const PER_SOURCE_PER_SEC: u64 = 20;
pub const PER_SOURCE_BURST: u64 = 40;
/// Source addresses remembered (bounded memory under a flood from many addresses).
pub const MAX_SOURCES: usize = 1024;

/// What to do with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Answer,
    /// Its source address is over `PER_SOURCE_PER_SEC`.
    RefuseSource,
    /// Everyone together is over `TOTAL_PER_SEC`.
    RefuseTotal,
}

/// A token bucket counting whole requests, in millitokens so that a fraction of a second refills.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    milli: u64,
    at_us: u64,
}

impl Bucket {
    fn full(burst: u64, now_us: u64) -> Self {
        Self { milli: burst * 1000, at_us: now_us }
    }

    /// Takes one token if there is one (after refilling at `rate` per second up to `burst`).
    fn take(&mut self, rate: u64, burst: u64, now_us: u64) -> bool {
        let elapsed = now_us.saturating_sub(self.at_us);
        self.milli = (self.milli + elapsed.saturating_mul(rate) / 1000).min(burst * 1000);
        self.at_us = now_us.max(self.at_us);
        if self.milli < 1000 {
            return false;
        }
        self.milli -= 1000;
        true
    }
}

/// Counts of what the limiter decided (for status and the metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerCounts {
    pub answered: u64,
    pub refused_source: u64,
    pub refused_total: u64,
}

#[derive(Debug)]
pub struct ServerLimiter {
    total: Bucket,
    sources: HashMap<Ipv4Addr, Bucket>,
    counts: ServerCounts,
}

impl ServerLimiter {
    pub fn new(now_us: u64) -> Self {
        Self { total: Bucket::full(TOTAL_PER_SEC, now_us), sources: HashMap::new(), counts: ServerCounts::default() }
    }

    /// Decides on one request from `from`, received at `now_us`.
    pub fn handle_request(&mut self, from: Ipv4Addr, now_us: u64) -> Verdict {
        if !self.sources.contains_key(&from) {
            crate::bounded::make_room(&mut self.sources, MAX_SOURCES, |b| b.at_us);
        }
        let source = self.sources.entry(from).or_insert_with(|| Bucket::full(PER_SOURCE_BURST, now_us));
        let verdict = if !source.take(PER_SOURCE_PER_SEC, PER_SOURCE_BURST, now_us) {
            Verdict::RefuseSource
        } else if !self.total.take(TOTAL_PER_SEC, TOTAL_PER_SEC, now_us) {
            Verdict::RefuseTotal
        } else {
            Verdict::Answer
        };
        match verdict {
            Verdict::Answer => self.counts.answered += 1,
            Verdict::RefuseSource => self.counts.refused_source += 1,
            Verdict::RefuseTotal => self.counts.refused_total += 1,
        }
        verdict
    }

    pub fn counts(&self) -> ServerCounts {
        self.counts
    }

    pub fn sources(&self) -> usize {
        self.sources.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    fn addr(i: u32) -> Ipv4Addr {
        Ipv4Addr::from(0x0a00_0000 + i)
    }

    #[test]
    fn a_flooding_source_gets_its_own_share_and_others_are_still_answered() {
        let mut l = ServerLimiter::new(0);
        let (flooder, member) = (addr(1), addr(2));
        let mut member_answered = 0;
        // One second: the flooder sends 20 000 requests, the member one every 100 ms.
        for i in 0..20_000u64 {
            let now = i * 50;
            l.handle_request(flooder, now);
            if i % 2000 == 0 && l.handle_request(member, now) == Verdict::Answer {
                member_answered += 1;
            }
        }
        assert_eq!(member_answered, 10);
        let c = l.counts();
        assert!(c.answered <= PER_SOURCE_BURST + PER_SOURCE_PER_SEC + 10, "{c:?}");
        assert!(c.refused_source > 19_000 && c.refused_total == 0, "{c:?}");
    }

    #[test]
    fn many_sources_together_are_held_to_the_total() {
        let mut l = ServerLimiter::new(0);
        for i in 0..10_000u32 {
            l.handle_request(addr(i % 500), u64::from(i) * 100); // 10 000 requests in one second
        }
        let c = l.counts();
        assert!(c.answered <= 2 * TOTAL_PER_SEC + 1 && c.refused_total > 0, "{c:?}");
    }

    #[test]
    fn sources_are_bounded_and_an_idle_source_is_answered_again() {
        let mut l = ServerLimiter::new(0);
        for i in 0..(MAX_SOURCES as u32 * 3) {
            l.handle_request(addr(i), u64::from(i));
        }
        assert_eq!(l.sources(), MAX_SOURCES);
        let lone = addr(999_999);
        for _ in 0..PER_SOURCE_BURST {
            l.handle_request(lone, 10 * S);
        }
        assert_eq!(l.handle_request(lone, 10 * S), Verdict::RefuseSource);
        assert_eq!(l.handle_request(lone, 10 * S + S / PER_SOURCE_PER_SEC), Verdict::Answer);
    }
}
