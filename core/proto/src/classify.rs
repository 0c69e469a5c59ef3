//! Traffic classes: which scheduling mode an inner packet gets.
//!
//! Default: small UDP packets (voice, games, DNS: ≤ `REALTIME_MAX_LEN` bytes) are real-time; everything
//! else is bulk. Rules (protocol, destination/source port, DSCP) put packets into a class explicitly; the
//! first matching rule wins.

use crate::scheduler::Mode;

/// Packets at most this long (IP length) that are UDP count as real-time by default.
pub const REALTIME_MAX_LEN: usize = 200;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Bulk,
    Realtime,
}

/// A class rule: every field that is set must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub protocol: Option<u8>,
    pub port: Option<u16>,
    pub dscp: Option<u8>,
    pub mode: Option<Mode>,
}

/// What the classifier reads from a packet.
#[derive(Debug, PartialEq, Eq)]
pub struct PacketInfo {
    pub protocol: u8,
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
    pub dscp: u8,
    pub len: usize,
}

pub fn inspect(packet: &[u8]) -> Option<PacketInfo> {
    let version = packet.first()? >> 4;
    let (protocol, dscp, l4) = match version {
        4 => {
            let ihl = ((packet[0] & 0x0f) as usize) * 4;
            if packet.len() < 20 || ihl < 20 {
                return None;
            }
            (packet[9], packet[1] >> 2, packet.get(ihl..).unwrap_or(&[]))
        }
        6 => {
            if packet.len() < 40 {
                return None;
            }
            let tc = (packet[0] & 0x0f) << 4 | packet[1] >> 4;
            (packet[6], tc >> 2, &packet[40..])
        }
        _ => return None,
    };
    let ports = if (protocol == PROTO_TCP || protocol == PROTO_UDP) && l4.len() >= 4 {
        Some((u16::from_be_bytes([l4[0], l4[1]]), u16::from_be_bytes([l4[2], l4[3]])))
    } else {
        None
    };
    Some(PacketInfo { protocol, src_port: ports.map(|p| p.0), dst_port: ports.map(|p| p.1), dscp, len: packet.len() })
}

impl Rule {
    pub fn matches(&self, info: &PacketInfo) -> bool {
        self.protocol.is_none_or(|p| p == info.protocol)
            && self.port.is_none_or(|p| info.src_port == Some(p) || info.dst_port == Some(p))
            && self.dscp.is_none_or(|d| d == info.dscp)
    }
}

/// The scheduling mode for `packet`: the first matching rule's mode, else the class default.
pub fn mode_for(packet: &[u8], rules: &[Rule], bulk: Mode, realtime: Mode) -> Mode {
    let Some(info) = inspect(packet) else {
        return bulk;
    };
    if let Some(mode) = rules.iter().find(|r| r.matches(&info)).and_then(|r| r.mode) {
        return mode;
    }
    match default_class(&info) {
        Class::Realtime => realtime,
        Class::Bulk => bulk,
    }
}

pub fn default_class(info: &PacketInfo) -> Class {
    if info.protocol == PROTO_UDP && info.len <= REALTIME_MAX_LEN {
        Class::Realtime
    } else {
        Class::Bulk
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp4(len: usize, dport: u16, dscp: u8) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[1] = dscp << 2;
        p[9] = PROTO_UDP;
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p
    }

    #[test]
    fn small_udp_is_realtime_large_is_bulk() {
        assert_eq!(mode_for(&udp4(120, 5000, 0), &[], Mode::Aggregate, Mode::Redundant), Mode::Redundant);
        assert_eq!(mode_for(&udp4(1200, 5000, 0), &[], Mode::Aggregate, Mode::Redundant), Mode::Aggregate);
    }

    #[test]
    fn first_matching_rule_wins() {
        let rules = vec![
            Rule { protocol: Some(PROTO_UDP), dscp: Some(46), mode: Some(Mode::Redundant), ..Default::default() },
            Rule { port: Some(5001), mode: Some(Mode::LowestRtt), ..Default::default() },
        ];
        assert_eq!(mode_for(&udp4(1200, 5001, 46), &rules, Mode::Aggregate, Mode::Aggregate), Mode::Redundant);
        assert_eq!(mode_for(&udp4(1200, 5001, 0), &rules, Mode::Aggregate, Mode::Aggregate), Mode::LowestRtt);
        assert_eq!(mode_for(&udp4(1200, 5002, 0), &rules, Mode::Aggregate, Mode::Aggregate), Mode::Aggregate);
    }
}
