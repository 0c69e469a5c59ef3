//! What kind of NAT a WAN socket is behind, from the addresses peers see it at (each acceptor answers
//! the path hello with the address it sees the dialer at, `hello::Answer::observed`). The mapping
//! behaviour decides how a path through it can be punched (issue "Mesh, part 2"):
//! - no NAT: peers see the socket's own address;
//! - endpoint-independent mapping (full-cone, restricted and port-restricted NATs): every peer sees the
//!   same public address and port, so a candidate learned from one peer is good for all;
//! - endpoint-dependent mapping (symmetric): each destination gets its own public port; where the NAT
//!   hands them out in sequence the next one can be predicted, where at random only probing helps.
//!
//! Filtering (which inbound packets a cone NAT lets through) cannot be seen this way; it shows when a
//! punch succeeds or not. Pure: the caller passes what was observed.

use std::collections::BTreeMap;
use std::net::SocketAddr;

/// How the public ports of a symmetric NAT were handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocation {
    /// Each new destination got the previous port plus `step` (within `SEQUENTIAL_SLACK`).
    Sequential {
        step: i32,
    },
    Random,
    /// Not enough seen to tell (kept for callers that describe a mapping; `classify` no longer returns it).
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    /// Fewer than two peers saw the socket (or none answered with an address).
    Unknown,
    NoNat,
    EndpointIndependent,
    EndpointDependent(Allocation),
}

/// A sequential allocator's steps may differ this much (other hosts behind the NAT take ports too).
pub const SEQUENTIAL_SLACK: i32 = 4;
/// With two destinations seen, one step: this small or less is taken for a sequential allocator (other
/// flows through the NAT between our two paths, our own DHT lookups among them, take the ports between).
/// A random allocator gives a step this small once in ~500 pairs of mappings.
pub const MAX_SEQUENTIAL_STEP: i32 = 64;

impl Mapping {
    /// In words, for status and the dashboard.
    pub fn describe(&self) -> String {
        match self {
            Mapping::Unknown => "unknown (seen by fewer than two peers)".into(),
            Mapping::NoNat => "none (public address)".into(),
            Mapping::EndpointIndependent => "cone (one public port for every peer)".into(),
            Mapping::EndpointDependent(Allocation::Sequential { step }) => {
                format!("symmetric, sequential ports ({step:+} per destination)")
            }
            Mapping::EndpointDependent(Allocation::Random) => "symmetric, random ports".into(),
            Mapping::EndpointDependent(Allocation::Unknown) => "symmetric (a port per destination)".into(),
        }
    }
}

/// One observation: the peer's address we sent to (`remote`) and the address it saw us at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observation {
    pub remote: SocketAddr,
    pub observed: SocketAddr,
}

/// The mapping of the socket bound at `local` (its port, and its address if bound to one), from what
/// peers at distinct addresses observed, in the order the paths were made (for the allocation pattern).
pub fn classify(local: SocketAddr, observations: &[Observation]) -> Mapping {
    // One observation per remote (the first): several paths to one peer say nothing new.
    let mut by_remote: BTreeMap<SocketAddr, SocketAddr> = BTreeMap::new();
    let mut ordered = Vec::new();
    for o in observations {
        if by_remote.insert(o.remote, o.observed).is_none() {
            ordered.push(o.observed);
        }
    }
    let Some(first) = ordered.first() else { return Mapping::Unknown };
    let is_own = |a: &SocketAddr| a.port() == local.port() && (local.ip().is_unspecified() || a.ip() == local.ip());
    if ordered.iter().all(is_own) && !local.ip().is_unspecified() {
        return Mapping::NoNat;
    }
    if ordered.len() < 2 {
        return Mapping::Unknown;
    }
    if ordered.iter().all(|a| a == first) {
        return if local.ip().is_unspecified() && is_own(first) {
            Mapping::Unknown // a wildcard socket whose port nobody changed: no NAT or a port-keeping one
        } else {
            Mapping::EndpointIndependent
        };
    }
    if ordered.len() < 3 {
        let step = ordered[1].port() as i32 - ordered[0].port() as i32;
        let sequential = step != 0 && step.abs() <= MAX_SEQUENTIAL_STEP;
        return Mapping::EndpointDependent(if sequential {
            Allocation::Sequential { step }
        } else {
            Allocation::Random
        });
    }
    let steps: Vec<i32> = ordered.windows(2).map(|w| w[1].port() as i32 - w[0].port() as i32).collect();
    let step = steps[0];
    let sequential =
        step != 0 && steps.iter().all(|s| (s - step).abs() <= SEQUENTIAL_SLACK && s.signum() == step.signum());
    Mapping::EndpointDependent(if sequential { Allocation::Sequential { step } } else { Allocation::Random })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(pairs: &[(&str, &str)]) -> Vec<Observation> {
        pairs.iter().map(|(r, o)| Observation { remote: r.parse().unwrap(), observed: o.parse().unwrap() }).collect()
    }

    #[test]
    fn the_mapping_is_told_from_what_peers_see() {
        let local: SocketAddr = "192.168.1.2:5000".parse().unwrap();
        assert_eq!(classify(local, &[]), Mapping::Unknown);
        let public = seen(&[("198.51.100.1:4433", "192.168.1.2:5000")]);
        assert_eq!(classify(local, &public), Mapping::NoNat, "one peer seeing our own address is enough");
        let cone = seen(&[("198.51.100.1:4433", "203.0.113.9:5000"), ("198.51.100.2:4433", "203.0.113.9:5000")]);
        assert_eq!(classify(local, &cone), Mapping::EndpointIndependent);
        assert_eq!(classify(local, &cone[..1]), Mapping::Unknown);
        let two = seen(&[("198.51.100.1:4433", "203.0.113.9:6000"), ("198.51.100.2:4433", "203.0.113.9:6001")]);
        assert_eq!(classify(local, &two), Mapping::EndpointDependent(Allocation::Sequential { step: 1 }));
        let two_far = seen(&[("198.51.100.1:4433", "203.0.113.9:6000"), ("198.51.100.2:4433", "203.0.113.9:41000")]);
        assert_eq!(classify(local, &two_far), Mapping::EndpointDependent(Allocation::Random));
        let sequential = seen(&[
            ("198.51.100.1:4433", "203.0.113.9:6000"),
            ("198.51.100.2:4433", "203.0.113.9:6002"),
            ("198.51.100.3:4433", "203.0.113.9:6005"),
        ]);
        assert_eq!(classify(local, &sequential), Mapping::EndpointDependent(Allocation::Sequential { step: 2 }));
        let random = seen(&[
            ("198.51.100.1:4433", "203.0.113.9:41000"),
            ("198.51.100.2:4433", "203.0.113.9:6002"),
            ("198.51.100.3:4433", "203.0.113.9:52000"),
        ]);
        assert_eq!(classify(local, &random), Mapping::EndpointDependent(Allocation::Random));
    }

    #[test]
    fn repeated_paths_to_one_peer_count_once_and_a_wildcard_socket_is_not_called_public() {
        let local: SocketAddr = "0.0.0.0:4433".parse().unwrap();
        let again = seen(&[("198.51.100.1:4433", "203.0.113.9:7000"), ("198.51.100.1:4433", "203.0.113.9:7001")]);
        assert_eq!(classify(local, &again), Mapping::Unknown, "one peer, seen twice");
        let kept = seen(&[("198.51.100.1:4433", "203.0.113.9:4433"), ("198.51.100.2:4433", "203.0.113.9:4433")]);
        assert_eq!(classify(local, &kept), Mapping::Unknown);
        let moved = seen(&[("198.51.100.1:4433", "203.0.113.9:9000"), ("198.51.100.2:4433", "203.0.113.9:9000")]);
        assert_eq!(classify(local, &moved), Mapping::EndpointIndependent);
        assert!(Mapping::EndpointDependent(Allocation::Sequential { step: 1 }).describe().contains("+1"));
    }
}
