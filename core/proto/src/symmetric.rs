//! Punching through symmetric NATs (issue 14): a NAT that maps each destination to its own public port
//! cannot be reached at the port a peer saw; what can be done depends on how it hands ports out
//! (`nat::Allocation`, estimated from what two or more peers saw):
//! - sequential: the next flow gets one of the next few ports, so the side behind it offers a small window
//!   of predicted ports around its newest mapping (`predicted_ports`) as candidates and the other side
//!   dials them all;
//! - random on one side, endpoint-independent (a cone, or no NAT) on the other: a bounded birthday-style
//!   probe (`BirthdayProbe`): the random side opens up to `BIRTHDAY_SOCKETS` mappings towards the cone
//!   side's one public address, and the cone side sends up to `BIRTHDAY_PROBES` probes to random ports of
//!   the random side's public address, at most `BIRTHDAY_RATE_PER_S` a second for at most
//!   `BIRTHDAY_DURATION_US`; a probe that lands on one of the mappings opens the path;
//! - random on both sides: nothing to aim at on either end, so no probing at all: the relay carries the
//!   pair (`Approach::RelayOnly`).
//!
//! Each node tells its class in its punch messages (`punch::Message::class`); the decision is `approach`,
//! taken by either side from its own class and the other's. Pure: the caller passes what it saw and `now`.

use crate::nat::{Allocation, Mapping};

/// How a node's public ports are handed out, as it tells the other side of a punch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NatClass {
    /// One public port for every destination (no NAT, a cone NAT), or not known: plain candidates work.
    #[default]
    Open,
    /// Endpoint-dependent, each new flow `step` ports after the previous one.
    Sequential { step: i16 },
    /// Endpoint-dependent, ports at random.
    Random,
}

/// Wire codes of `NatClass` (followed by an i16 step, 0 unless sequential).
pub const CLASS_OPEN: u8 = 0;
pub const CLASS_SEQUENTIAL: u8 = 1;
pub const CLASS_RANDOM: u8 = 2;

impl NatClass {
    /// The class of a socket behind `mapping`. A symmetric NAT whose pattern is not known yet counts as
    /// open: its candidates are tried as they are, which costs a few dials, never a probe.
    pub fn of(mapping: Mapping) -> Self {
        match mapping {
            Mapping::EndpointDependent(Allocation::Sequential { step }) => {
                NatClass::Sequential { step: step.clamp(i16::MIN as i32, i16::MAX as i32) as i16 }
            }
            Mapping::EndpointDependent(Allocation::Random) => NatClass::Random,
            _ => NatClass::Open,
        }
    }

    /// The hardest of two classes (a node with several WANs tells the hardest: the other side plans for it).
    pub fn harder(self, other: NatClass) -> NatClass {
        let weight = |c: &NatClass| match c {
            NatClass::Open => 0,
            NatClass::Sequential { .. } => 1,
            NatClass::Random => 2,
        };
        if weight(&other) > weight(&self) {
            other
        } else {
            self
        }
    }

    pub fn encode(self) -> (u8, i16) {
        match self {
            NatClass::Open => (CLASS_OPEN, 0),
            NatClass::Sequential { step } => (CLASS_SEQUENTIAL, step),
            NatClass::Random => (CLASS_RANDOM, 0),
        }
    }

    /// Reads a class; a sequential one with step 0 (no sequence) or an unknown code is refused.
    pub fn decode(code: u8, step: i16) -> Option<NatClass> {
        match (code, step) {
            (CLASS_OPEN, 0) => Some(NatClass::Open),
            (CLASS_SEQUENTIAL, s) if s != 0 => Some(NatClass::Sequential { step: s }),
            (CLASS_RANDOM, 0) => Some(NatClass::Random),
            _ => None,
        }
    }
}

/// What a punch between two classes does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Approach {
    /// Dial the candidates (those of a sequential side include its predicted ports).
    Dial,
    /// One side random, the other open: the bounded birthday probe.
    Birthday,
    /// Both random: no probe, no dial; the relay carries the pair.
    RelayOnly,
    /// We are random and do not know the other side's class yet: tell ours (a request costs no probe)
    /// and dial nothing until it tells its own.
    Wait,
}

/// The approach of a punch from our side: `ours`, and the other side's class if it told us.
pub fn approach(ours: NatClass, theirs: Option<NatClass>) -> Approach {
    match (ours, theirs) {
        (NatClass::Random, None) => Approach::Wait,
        (NatClass::Random, Some(NatClass::Random)) => Approach::RelayOnly,
        (NatClass::Random, Some(NatClass::Open)) | (NatClass::Open, Some(NatClass::Random)) => Approach::Birthday,
        // Random against sequential: the sequential side's predicted window is small and moves with every
        // flow, the random side's port unknown: dials of the window are all that is cheap enough to try.
        _ => Approach::Dial,
    }
}

/// Ports predicted around a sequential NAT's newest mapping `last` (handed out `step` apart): the next
/// `PREDICTION_WINDOW` ports in the direction of `step`, then the `PREDICTION_BEHIND` before it. Not `step`
/// apart: other flows through the NAT (other hosts, our own DHT lookups) take ports in between, so the
/// observed step is an upper bound of the NAT's own increment and the next flow's port is one of the next
/// few, whatever its step. Behind: a flow to the peer that began just before the newest one a peer saw
/// (our plain dial of its address, which failed but whose mapping the NAT holds while we keep sending)
/// is the very flow a punch's packets then take.
pub fn predicted_ports(last: u16, step: i16) -> Vec<u16> {
    let direction: i32 = if step < 0 { -1 } else { 1 };
    let ahead = (1..=PREDICTION_WINDOW as i32).map(|k| direction * k);
    let behind = (1..=PREDICTION_BEHIND as i32).map(|k| -direction * k);
    ahead
        .chain(behind)
        .map(|offset| last as i32 + offset)
        .filter(|p| (1024..=65535).contains(p))
        .map(|p| p as u16)
        .collect()
}

/// Predicted ports offered per sequential socket, ahead of its newest mapping and behind it: each costs
/// the other side one dial per punch.
pub const PREDICTION_WINDOW: usize = 6;
pub const PREDICTION_BEHIND: usize = 3;

/// Birthday probe caps (one probe, one side of a pair). With 256 mappings open on the random side and
/// 1024 probes at random ports of ~64 500, a probe lands with probability 1 - (1 - 256/64512)^1024 ≈ 98 %.
pub const BIRTHDAY_SOCKETS: usize = 256;
pub const BIRTHDAY_PROBES: usize = 1024;
/// Packets a second the probing side sends at most (a NAT or an IDS must not take it for a flood)...
pub const BIRTHDAY_RATE_PER_S: u64 = 300;
/// ...and for at most this long (1024 probes at 300/s take ~3.4 s).
pub const BIRTHDAY_DURATION_US: u64 = 4_000_000;
/// The ports probed: above the well-known ones.
const FIRST_PROBED_PORT: u16 = 1024;

/// The probing side of a birthday probe: which port of the random side's public address to send to
/// next, within the caps. The ports come from a small PRNG seeded by the caller (a fresh random seed per
/// probe), so two probes never walk the same ports.
#[derive(Debug)]
pub struct BirthdayProbe {
    rng: u64,
    start_us: u64,
    sent: usize,
}

impl BirthdayProbe {
    pub fn new(seed: u64, start_us: u64) -> Self {
        BirthdayProbe { rng: seed | 1, start_us, sent: 0 }
    }

    /// Ports to send a probe to now: as many as the rate allows since the start, less those sent, none
    /// before the start, after `BIRTHDAY_DURATION_US` or beyond `BIRTHDAY_PROBES`.
    pub fn poll(&mut self, now_us: u64) -> Vec<u16> {
        if now_us < self.start_us || self.done(now_us) {
            return Vec::new();
        }
        let elapsed = now_us - self.start_us;
        let allowed = ((elapsed * BIRTHDAY_RATE_PER_S / 1_000_000) as usize + 1).min(BIRTHDAY_PROBES);
        let mut ports = Vec::new();
        while self.sent < allowed {
            ports.push(self.next_port());
            self.sent += 1;
        }
        ports
    }

    /// Whether the probe is over (every probe sent, or its time up).
    pub fn done(&self, now_us: u64) -> bool {
        self.sent >= BIRTHDAY_PROBES || now_us >= self.start_us + BIRTHDAY_DURATION_US
    }

    fn next_port(&mut self) -> u16 {
        // xorshift64: uniform enough over the port range for a probe, and no dependency.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        FIRST_PROBED_PORT + (self.rng % (65536 - FIRST_PROBED_PORT as u64)) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_approach_follows_both_sides_classes() {
        let seq = NatClass::Sequential { step: 1 };
        assert_eq!(approach(NatClass::Open, Some(NatClass::Open)), Approach::Dial);
        assert_eq!(approach(seq, Some(NatClass::Open)), Approach::Dial);
        assert_eq!(approach(NatClass::Open, Some(seq)), Approach::Dial);
        assert_eq!(approach(seq, Some(seq)), Approach::Dial);
        assert_eq!(approach(NatClass::Random, Some(NatClass::Open)), Approach::Birthday);
        assert_eq!(approach(NatClass::Open, Some(NatClass::Random)), Approach::Birthday);
        assert_eq!(approach(NatClass::Random, Some(NatClass::Random)), Approach::RelayOnly);
        assert_eq!(approach(NatClass::Random, None), Approach::Wait, "no probe before the other side tells");
        assert_eq!(approach(NatClass::Open, None), Approach::Dial);
        assert_eq!(approach(NatClass::Random, Some(seq)), Approach::Dial);
    }

    #[test]
    fn a_class_comes_from_the_mapping_reads_back_and_the_hardest_wins() {
        assert_eq!(NatClass::of(Mapping::EndpointIndependent), NatClass::Open);
        assert_eq!(NatClass::of(Mapping::Unknown), NatClass::Open);
        assert_eq!(
            NatClass::of(Mapping::EndpointDependent(Allocation::Sequential { step: -3 })),
            NatClass::Sequential { step: -3 }
        );
        assert_eq!(NatClass::of(Mapping::EndpointDependent(Allocation::Random)), NatClass::Random);
        for class in [NatClass::Open, NatClass::Sequential { step: 2 }, NatClass::Random] {
            let (code, step) = class.encode();
            assert_eq!(NatClass::decode(code, step), Some(class));
        }
        assert_eq!(NatClass::decode(CLASS_SEQUENTIAL, 0), None);
        assert_eq!(NatClass::decode(CLASS_RANDOM, 5), None);
        assert_eq!(NatClass::decode(9, 0), None);
        let seq = NatClass::Sequential { step: 1 };
        assert_eq!(NatClass::Open.harder(seq), seq);
        assert_eq!(seq.harder(NatClass::Random), NatClass::Random);
        assert_eq!(NatClass::Random.harder(NatClass::Open), NatClass::Random);
    }

    #[test]
    fn predicted_ports_are_the_next_few_in_the_allocators_direction() {
        assert_eq!(
            predicted_ports(20_010, 3),
            vec![20_011, 20_012, 20_013, 20_014, 20_015, 20_016, 20_009, 20_008, 20_007]
        );
        assert_eq!(
            predicted_ports(20_010, -1),
            vec![20_009, 20_008, 20_007, 20_006, 20_005, 20_004, 20_011, 20_012, 20_013]
        );
        assert_eq!(predicted_ports(65_534, 1), vec![65_535, 65_533, 65_532, 65_531], "not past the last port");
        assert_eq!(predicted_ports(1_026, -1), vec![1_025, 1_024, 1_027, 1_028, 1_029], "nor below 1024");
    }

    #[test]
    fn a_birthday_probe_keeps_its_rate_count_and_time_caps() {
        let mut probe = BirthdayProbe::new(42, 1_000);
        assert!(probe.poll(999).is_empty(), "nothing before the start");
        assert_eq!(probe.poll(1_000).len(), 1);
        // One second in: the rate's worth, no more.
        let first_second = probe.poll(1_000 + 1_000_000);
        assert_eq!(1 + first_second.len(), 1 + BIRTHDAY_RATE_PER_S as usize);
        assert!(probe.poll(1_000 + 1_000_000).is_empty(), "polling again at once sends nothing");
        let mut total = 1 + first_second.len();
        let mut ports = first_second;
        for ms in (1_100..=10_000).step_by(100) {
            let now = 1_000 + ms * 1_000;
            let sent = probe.poll(now);
            total += sent.len();
            ports.extend(sent);
            if now >= 1_000 + BIRTHDAY_DURATION_US {
                assert!(probe.done(now));
            }
        }
        assert!(total <= BIRTHDAY_PROBES, "{total} probes");
        let elapsed_cap = (BIRTHDAY_DURATION_US * BIRTHDAY_RATE_PER_S / 1_000_000) as usize + 1;
        assert_eq!(total, BIRTHDAY_PROBES.min(elapsed_cap));
        assert!(ports.iter().all(|&p| p >= FIRST_PROBED_PORT));
        let distinct: std::collections::HashSet<u16> = ports.iter().copied().collect();
        assert!(distinct.len() > ports.len() * 9 / 10, "the ports are spread, not repeated");
        assert_ne!(BirthdayProbe::new(1, 0).poll(0), BirthdayProbe::new(2, 0).poll(0), "the seed picks the walk");
    }
}
