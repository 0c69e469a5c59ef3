//! The UPnP-IGD side of `Mapper`, for a gateway silent to PCP and NAT-PMP alike. UPnP is HTTP and SOAP
//! after an SSDP search, which the caller speaks (a maintained client library): `poll_upnp` says when an
//! exchange is due (the first mapping, then each renewal at half the granted lease), and the caller gives
//! `handle_upnp` what the router said. Nothing is taken on the router's word: its external address
//! (GetExternalIPAddress) must be a public IPv4 one, and the entry it lists for our external port after
//! AddPortMapping (GetGenericPortMappingEntry) must be UDP, to our address and port, on a port that is not 0.

use std::net::Ipv4Addr;

use super::{unusable_external, Mapper, Phase, Protocol, LIFETIME_S};

/// The time one exchange may take before `poll_upnp` asks for another (the caller bounds its own search
/// and calls well within it, so a hung router never stalls the mapping for longer).
pub const UPNP_EXCHANGE_US: u64 = 20_000_000;

/// A port mapping as the router lists it, read back after AddPortMapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpnpEntry {
    /// The entry's protocol is UDP (NewProtocol).
    pub udp: bool,
    pub external_port: u16,
    pub internal_port: u16,
    /// NewInternalClient as the router wrote it (an address, or a host name we never send).
    pub internal_client: String,
    /// The lease left, in seconds (NewLeaseDuration; 0 is a permanent mapping).
    pub lease_s: u32,
}

/// What one UPnP exchange with the router came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpnpOutcome {
    /// No internet gateway device with a WANIPConnection (or WANPPPConnection) service answered the
    /// search, or its description could not be read: the reason in words.
    NoGateway(String),
    /// The router answered a call with an error (refused the mapping, or failed): its error in words.
    Refused(String),
    /// GetExternalIPAddress's address (None: not IPv4), and the entry the router lists for our external
    /// port after AddPortMapping (None if it lists none, or if the caller did not map: the address was
    /// unusable, see `unusable_external`).
    Answered { external_ip: Option<Ipv4Addr>, entry: Option<UpnpEntry> },
}

impl Mapper {
    /// Whether a UPnP exchange is due now (the gateway was silent to PCP and NAT-PMP): if so, the caller
    /// searches for the gateway (or uses the one it found), maps `internal_port` for `LIFETIME_S` and
    /// reads it back, then calls `handle_upnp`.
    pub fn poll_upnp(&mut self, now_us: u64) -> bool {
        if self.protocol != Protocol::Upnp || now_us < self.next_at_us {
            return false;
        }
        self.phase = Phase::AskMap;
        self.tries = 0;
        self.next_at_us = now_us + UPNP_EXCHANGE_US;
        self.asked_upnp = true;
        true
    }

    /// Whether a DeletePortMapping of `internal_port` is due when the mapping is released.
    pub fn asked_upnp(&self) -> bool {
        self.asked_upnp
    }

    /// What the UPnP exchange `poll_upnp` asked for came to. Returns whether the mapping or its problem
    /// changed.
    pub fn handle_upnp(&mut self, outcome: UpnpOutcome, now_us: u64) -> bool {
        if self.protocol != Protocol::Upnp || self.phase != Phase::AskMap {
            return false; // not asked (a late result after the mapper moved on)
        }
        let before = (self.mapping(now_us), self.problem(now_us));
        match outcome {
            UpnpOutcome::NoGateway(why) => {
                if self.mapping.is_none() {
                    // Never mapped in UPnP: the next try (after RETRY_US) starts over at PCP, in case
                    // the router turned one of them on.
                    self.protocol = Protocol::Pcp;
                }
                self.fail(format!("no answer from the gateway (pcp, nat-pmp, upnp: {why})"), now_us);
            }
            UpnpOutcome::Refused(why) => {
                self.mapping = None;
                self.fail(format!("the gateway refused (UPnP): {why}"), now_us);
            }
            UpnpOutcome::Answered { external_ip, entry } => self.upnp_answered(external_ip, entry, now_us),
        }
        before != (self.mapping(now_us), self.problem(now_us))
    }

    fn upnp_answered(&mut self, external_ip: Option<Ipv4Addr>, entry: Option<UpnpEntry>, now_us: u64) {
        if external_ip.is_none_or(|ip| unusable_external(ip).is_some()) {
            return self.granted(external_ip, 0, 0, now_us); // refused there, with the address's reason
        }
        let entry = match entry {
            None => Err("the gateway lists no mapping of our port after AddPortMapping".to_string()),
            Some(e) if !e.udp => Err(format!("the gateway lists port {} as a TCP mapping", e.external_port)),
            Some(e) if e.internal_port != self.internal_port || e.internal_client.parse() != Ok(self.client) => {
                Err(format!(
                    "the gateway maps port {} to {}:{}, not to us",
                    e.external_port, e.internal_client, e.internal_port
                ))
            }
            Some(e) => Ok(e),
        };
        match entry {
            Err(why) => {
                self.mapping = None;
                self.fail(why, now_us);
            }
            Ok(e) => {
                // A permanent entry (0) or a longer one than asked is still renewed as if for LIFETIME_S.
                let lease_s = if e.lease_s == 0 { LIFETIME_S } else { e.lease_s.min(LIFETIME_S) };
                self.granted(external_ip, e.external_port, lease_s, now_us);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{MAX_TRIES, RETRY_US};
    use super::*;

    const CLIENT: Ipv4Addr = Ipv4Addr::new(172, 16, 1, 2);
    const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);

    fn entry(udp: bool, external_port: u16, client: &str, lease_s: u32) -> UpnpEntry {
        UpnpEntry { udp, external_port, internal_port: 4433, internal_client: client.into(), lease_s }
    }

    /// A mapper whose gateway said nothing to two PCP and four NAT-PMP requests: its turn for UPnP.
    fn upnp_mapper() -> (Mapper, u64) {
        let mut m = Mapper::new(4433, CLIENT, [7; 12], 0);
        let mut now = 0;
        let mut sent = 0;
        while m.protocol() != Protocol::Upnp {
            assert!(!m.poll_upnp(now), "no UPnP while PCP or NAT-PMP is being asked");
            sent += m.poll_transmit(now).is_some() as u32;
            now = m.next_at();
        }
        assert_eq!(sent, 2 + MAX_TRIES, "two PCP requests, then NAT-PMP's four");
        assert_eq!(m.poll_transmit(now), None, "UPnP sends no datagram of ours");
        (m, now)
    }

    fn answered(ip: [u8; 4], entry: Option<UpnpEntry>) -> UpnpOutcome {
        UpnpOutcome::Answered { external_ip: Some(Ipv4Addr::from(ip)), entry }
    }

    #[test]
    fn a_gateway_silent_to_pcp_and_nat_pmp_is_mapped_in_upnp_renewed_and_released() {
        let (mut m, now) = upnp_mapper();
        assert!(!m.asked_upnp());
        assert!(m.poll_upnp(now));
        assert!(!m.poll_upnp(now), "one exchange at a time");
        assert_eq!(m.next_at(), now + UPNP_EXCHANGE_US);
        assert!(m.handle_upnp(answered(PUBLIC.octets(), Some(entry(true, 4433, "172.16.1.2", 7200))), now));
        assert_eq!(m.candidate(now), Some("203.0.113.9:4433".parse().unwrap()));
        assert_eq!(m.protocol().name(), "upnp");
        assert_eq!(m.next_at(), now + 3_600_000_000, "renewed at half the lease");
        assert!(!m.handle_upnp(answered(PUBLIC.octets(), None), now), "not asked: a late result is ignored");
        assert_eq!(m.candidate(now), Some("203.0.113.9:4433".parse().unwrap()));
        assert!(m.poll_upnp(m.next_at()), "the renewal");
        assert!(m.asked_upnp(), "a DeletePortMapping is due on release (the caller's: no datagram)");
        assert_eq!(m.release().len(), 1, "and PCP's delete: a map request went unanswered in it");

        let (mut m, now) = upnp_mapper();
        m.poll_upnp(now);
        m.handle_upnp(answered(PUBLIC.octets(), Some(entry(true, 4433, "172.16.1.2", 0))), now);
        assert_eq!(m.mapping(now).unwrap().lifetime_s, LIFETIME_S, "a permanent entry is renewed all the same");
    }

    #[test]
    fn unusable_answers_from_the_router_make_no_candidate() {
        let cases = [
            (answered([10, 0, 0, 1], None), "10.0.0.1 is private"),
            (answered([100, 64, 0, 1], None), "shared (carrier-grade NAT)"),
            (answered([0, 0, 0, 0], None), "unspecified"),
            (UpnpOutcome::Answered { external_ip: None, entry: None }, "not IPv4"),
            (answered(PUBLIC.octets(), None), "lists no mapping"),
            (answered(PUBLIC.octets(), Some(entry(false, 4433, "172.16.1.2", 7200))), "as a TCP mapping"),
            (answered(PUBLIC.octets(), Some(entry(true, 0, "172.16.1.2", 7200))), "port 0"),
            (answered(PUBLIC.octets(), Some(entry(true, 4433, "172.16.1.9", 7200))), "to 172.16.1.9:4433, not to us"),
            (answered(PUBLIC.octets(), Some(entry(true, 4433, "host", 7200))), "not to us"),
            (UpnpOutcome::Refused("ConflictInMappingEntry".into()), "refused (UPnP): ConflictInMappingEntry"),
        ];
        for (outcome, why) in cases {
            let (mut m, now) = upnp_mapper();
            m.poll_upnp(now);
            assert!(m.handle_upnp(outcome.clone(), now), "{outcome:?}");
            assert_eq!(m.candidate(now), None, "{outcome:?}");
            assert!(m.problem(now).unwrap().contains(why), "{outcome:?}: {:?}", m.problem(now));
            assert_eq!(m.next_at(), now + RETRY_US);
            assert_eq!(m.protocol(), Protocol::Upnp, "an IGD that answered is asked in UPnP again");
            assert!(!m.poll_upnp(now + RETRY_US - 1) && m.poll_upnp(now + RETRY_US));
            let before = m.problem(now + RETRY_US);
            assert!(!m.handle_upnp(outcome, now + RETRY_US), "the same answer again changes nothing: one event");
            assert_eq!(m.problem(now + RETRY_US), before);
        }
    }

    #[test]
    fn no_gateway_starts_over_at_pcp_but_a_mapping_keeps_upnp_until_it_expires() {
        let (mut m, now) = upnp_mapper();
        m.poll_upnp(now);
        assert!(m.handle_upnp(UpnpOutcome::NoGateway("no SSDP answer".into()), now));
        assert_eq!(m.problem(now).unwrap(), "no answer from the gateway (pcp, nat-pmp, upnp: no SSDP answer)");
        assert_eq!(m.protocol(), Protocol::Pcp);
        assert_eq!(m.poll_transmit(now + RETRY_US).map(|r| r[0]), Some(crate::pcp::VERSION), "PCP again later");

        let (mut m, now) = upnp_mapper();
        m.poll_upnp(now);
        m.handle_upnp(answered(PUBLIC.octets(), Some(entry(true, 4433, "172.16.1.2", 600))), now);
        let renew = m.next_at();
        assert!(m.poll_upnp(renew));
        assert!(!m.handle_upnp(UpnpOutcome::NoGateway("timed out".into()), renew), "still mapped");
        assert_eq!(m.protocol(), Protocol::Upnp);
        assert_eq!(m.candidate(renew), Some("203.0.113.9:4433".parse().unwrap()));
        assert!(m.problem(now + 600_000_000).unwrap().starts_with("expired"));
    }

    #[test]
    fn a_gateway_that_answered_on_5351_is_not_asked_in_upnp() {
        let mut m = Mapper::new(4433, CLIENT, [7; 12], 0);
        m.poll_transmit(0);
        m.handle_response(&[0, 129, 0, 1, 0, 0, 0, 9], 0).unwrap(); // NAT-PMP: "unsupported version" to PCP
        let mut now = 0;
        while m.poll_transmit(now).is_some() {
            now = m.next_at();
        }
        assert_eq!(m.protocol(), Protocol::NatPmp);
        assert!(m.problem(now).unwrap().contains("no answer from the gateway (nat-pmp)"));
        assert!(!m.poll_upnp(now + RETRY_US));
    }
}
