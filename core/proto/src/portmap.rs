//! Port mapping on the home router with PCP (RFC 6887, `pcp`), NAT-PMP (RFC 6886) or UPnP-IGD (`upnp`): a
//! mapping of one local UDP port (a WAN socket's) on that WAN's gateway, so that peers reach the socket at
//! the gateway's public address and the mapped port even when the NAT maps every new destination to a new
//! port (symmetric). Pure: the caller sends what `poll_transmit` returns from a socket that leaves by the
//! WAN (NAT-PMP takes the request's source address as the internal address), feeds each datagram from the
//! gateway's port 5351 to `handle_response`, and calls again at `next_at`.
//!
//! Life of a mapping: ask in PCP (one MAP exchange gives address and port); a gateway that answers in
//! NAT-PMP (it speaks no PCP), or says nothing to two PCP requests, is asked in NAT-PMP from then on:
//! the external address, then map the port. A gateway silent to both is asked in UPnP-IGD (SSDP search,
//! SOAP calls: the caller does that exchange when `poll_upnp` says so, and gives `handle_upnp` what the
//! router said; a search that finds no gateway starts over at PCP after `RETRY_US`). Each way for
//! `LIFETIME_S`; renew at half the granted lifetime; a router that restarted (its epoch went back) is
//! asked again at once; `release` gives the request that deletes the mapping (lifetime 0). A gateway that
//! does not answer after `MAX_TRIES` retransmissions is asked again after `RETRY_US`.
//!
//! Every value from the router is checked before it is used: a private, shared (carrier-grade NAT),
//! loopback, link-local, unspecified, multicast or broadcast external address (the router is itself
//! behind another NAT: the mapping would not be reachable), port 0, a zero lifetime, an answer for another
//! port — none becomes a candidate; `status` says why there is no mapping.
//!
//! NAT-PMP's wire format (RFC 6886, integers big-endian; PCP's is in `pcp`):
//! ```text
//!   external address request   u8 version 0, u8 opcode 0
//!   external address answer    u8 0, u8 128, u16 result, u32 epoch s, [4] address
//!   map UDP request            u8 0, u8 1, u16 reserved, u16 internal port, u16 suggested port, u32 lifetime s
//!   map UDP answer             u8 0, u8 129, u16 result, u32 epoch s, u16 internal, u16 external, u32 lifetime s
//! ```

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use crate::pcp;
use crate::wire::{Malformed, Reader, Writer};

mod upnp;
pub use upnp::{UpnpEntry, UpnpOutcome, UPNP_EXCHANGE_US};

/// The port a NAT-PMP server listens on at the gateway.
pub const SERVER_PORT: u16 = 5351;
/// The lifetime asked for (RFC 6886 recommends two hours); renewed at half of what is granted.
pub const LIFETIME_S: u32 = 7200;
/// First retransmission after 250 ms, doubling (RFC 6886 3.1); after `MAX_TRIES` sends without an answer
/// the gateway is taken to speak no NAT-PMP until `RETRY_US` later (a router may turn it on, or restart).
pub const FIRST_RETRY_US: u64 = 250_000;
pub const MAX_TRIES: u32 = 4;
/// PCP requests sent before NAT-PMP is tried when the gateway stays silent (a server that speaks only
/// NAT-PMP should answer "unsupported version", but some drop what they cannot read).
pub const PCP_TRIES: u32 = 2;
pub const RETRY_US: u64 = 120_000_000;
/// A renewal is never scheduled sooner than this (a router granting a few seconds would be asked in a loop).
pub const MIN_RENEW_US: u64 = 10_000_000;

const VERSION: u8 = 0;
const OP_EXTERNAL: u8 = 0;
const OP_MAP_UDP: u8 = 1;
const OP_ANSWER: u8 = 128;

/// Why an external address reported by a router cannot be a candidate; None if it can.
pub fn unusable_external(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_unspecified() || a == 0 {
        Some("unspecified")
    } else if ip.is_private() {
        Some("private: the router is behind another NAT")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared (carrier-grade NAT): the router is behind another NAT")
    } else if ip.is_loopback() || ip.is_link_local() {
        Some("not routable")
    } else if ip.is_multicast() || ip.is_broadcast() || a >= 240 {
        Some("not a host address")
    } else {
        None
    }
}

pub fn external_address_request() -> Vec<u8> {
    vec![VERSION, OP_EXTERNAL]
}

/// A request to map UDP `internal_port` for `lifetime_s` (0 deletes the mapping), asking for the same
/// port outside (routers keep it where it is free).
pub fn map_request(internal_port: u16, lifetime_s: u32) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(VERSION);
    w.u8(OP_MAP_UDP);
    w.u16(0);
    w.u16(internal_port);
    w.u16(if lifetime_s == 0 { 0 } else { internal_port });
    w.u32(lifetime_s);
    w.out
}

/// A parsed answer of a NAT-PMP server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    External { result: u16, epoch: u32, ip: Ipv4Addr },
    Map { result: u16, epoch: u32, internal_port: u16, external_port: u16, lifetime_s: u32 },
}

pub fn decode(data: &[u8]) -> Result<Answer, Malformed> {
    let mut r = Reader::new(data);
    if r.u8()? != VERSION {
        return Err("not a NAT-PMP version 0 answer");
    }
    let op = r.u8()?;
    let result = r.u16()?;
    let epoch = r.u32()?;
    let answer = match op {
        o if o == OP_ANSWER + OP_EXTERNAL => Answer::External { result, epoch, ip: Ipv4Addr::from(r.array::<4>()?) },
        o if o == OP_ANSWER + OP_MAP_UDP => {
            Answer::Map { result, epoch, internal_port: r.u16()?, external_port: r.u16()?, lifetime_s: r.u32()? }
        }
        _ => return Err("not a NAT-PMP answer"),
    };
    // RFC 6886 3.5: answers are exactly these lengths; an error answer may be shorter, but ours never is.
    if r.remaining() != 0 {
        return Err("trailing bytes");
    }
    Ok(answer)
}

fn result_text(result: u16) -> String {
    match result {
        1 => "the gateway refused: unsupported version".into(),
        2 => "the gateway refused: not authorized (port mapping turned off on the router?)".into(),
        3 => "the gateway refused: its own network is down".into(),
        4 => "the gateway refused: out of resources".into(),
        5 => "the gateway refused: unsupported request".into(),
        n => format!("the gateway refused: result code {n}"),
    }
}

/// A mapping the gateway granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub external: SocketAddrV4,
    pub lifetime_s: u32,
    pub granted_at_us: u64,
}

impl Mapping {
    pub fn expires_at_us(&self) -> u64 {
        self.granted_at_us + self.lifetime_s as u64 * 1_000_000
    }
}

/// Which protocol the mapper speaks to the gateway: PCP first, NAT-PMP when the gateway says it speaks
/// no PCP (or does not answer it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Pcp,
    NatPmp,
    /// UPnP-IGD (WANIPConnection): no datagrams of ours; the caller speaks it (`poll_upnp`, `handle_upnp`).
    Upnp,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Pcp => "pcp",
            Protocol::NatPmp => "nat-pmp",
            Protocol::Upnp => "upnp",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// NAT-PMP only: its map answer has no address, so it is asked first.
    AskExternal,
    AskMap,
    /// Mapped, or waiting to ask again after a failure: `next_at` says when.
    Idle,
}

/// One port's mapping on one gateway.
#[derive(Debug)]
pub struct Mapper {
    internal_port: u16,
    /// The request's source address (PCP names it; the server checks it) and the mapping's nonce.
    client: Ipv4Addr,
    nonce: [u8; pcp::NONCE_LEN],
    protocol: Protocol,
    phase: Phase,
    tries: u32,
    next_at_us: u64,
    external_ip: Option<Ipv4Addr>,
    mapping: Option<Mapping>,
    /// Why there is no mapping (None while the first answer is awaited, or while mapped).
    problem: Option<String>,
    /// The server's epoch (seconds since it started): one that went back means it restarted.
    epoch: Option<u32>,
    /// A map request was sent in each protocol: on release, a delete is due even if no answer came.
    asked_pcp: bool,
    asked_natpmp: bool,
    /// A UPnP AddPortMapping was sent: on release, a DeletePortMapping is due.
    asked_upnp: bool,
    /// Any PCP or NAT-PMP answer came from the gateway: it is not asked in UPnP when those go unanswered.
    heard_5351: bool,
}

impl Mapper {
    /// `client`: the address the requests leave from; `nonce`: random, the mapping's for its life.
    pub fn new(internal_port: u16, client: Ipv4Addr, nonce: [u8; pcp::NONCE_LEN], now_us: u64) -> Self {
        Mapper {
            internal_port,
            client,
            nonce,
            protocol: Protocol::Pcp,
            phase: Phase::AskMap,
            tries: 0,
            next_at_us: now_us,
            external_ip: None,
            mapping: None,
            problem: None,
            epoch: None,
            asked_pcp: false,
            asked_natpmp: false,
            asked_upnp: false,
            heard_5351: false,
        }
    }

    pub fn internal_port(&self) -> u16 {
        self.internal_port
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    pub fn next_at(&self) -> u64 {
        self.next_at_us
    }

    /// The mapping in force at `now_us` (None once its lifetime is over without a renewal).
    pub fn mapping(&self, now_us: u64) -> Option<Mapping> {
        self.mapping.filter(|m| now_us < m.expires_at_us())
    }

    /// The mapped public address, the candidate it makes.
    pub fn candidate(&self, now_us: u64) -> Option<SocketAddr> {
        self.mapping(now_us).map(|m| SocketAddr::V4(m.external))
    }

    /// Why there is no mapping, in words (None while mapped).
    pub fn problem(&self, now_us: u64) -> Option<String> {
        if self.mapping(now_us).is_some() {
            return None;
        }
        if self.mapping.is_some() {
            return Some("expired: the gateway did not answer the renewals".into());
        }
        Some(self.problem.clone().unwrap_or_else(|| "asking the gateway".into()))
    }

    fn fail(&mut self, why: String, now_us: u64) {
        self.problem = Some(why);
        self.phase = Phase::Idle;
        self.tries = 0;
        self.next_at_us = now_us + RETRY_US;
    }

    fn ask(&mut self, phase: Phase, now_us: u64) {
        self.phase = phase;
        self.tries = 0;
        self.next_at_us = now_us;
    }

    fn first_phase(&self) -> Phase {
        match self.protocol {
            Protocol::Pcp | Protocol::Upnp => Phase::AskMap,
            Protocol::NatPmp => Phase::AskExternal,
        }
    }

    /// The gateway speaks no PCP: NAT-PMP from now on (at once).
    fn fall_back(&mut self, now_us: u64) {
        self.protocol = Protocol::NatPmp;
        self.ask(Phase::AskExternal, now_us);
    }

    /// The request to send now, if one is due; call again at `next_at`.
    pub fn poll_transmit(&mut self, now_us: u64) -> Option<Vec<u8>> {
        if now_us < self.next_at_us || self.protocol == Protocol::Upnp {
            return None;
        }
        if self.phase == Phase::Idle {
            // A renewal is due (mapped), or a retry after a failure: the address may have changed too.
            let phase = if self.mapping(now_us).is_some() { Phase::AskMap } else { self.first_phase() };
            self.ask(phase, now_us);
        }
        if self.protocol == Protocol::Pcp && self.tries >= PCP_TRIES && self.mapping.is_none() {
            // No PCP answer at all: a NAT-PMP server that drops what it cannot read, or none.
            self.fall_back(now_us);
        }
        if self.tries >= MAX_TRIES && self.protocol == Protocol::NatPmp && !self.heard_5351 && self.mapping.is_none() {
            // Silent to PCP and NAT-PMP alike: a router that speaks only UPnP-IGD, or none; the caller asks.
            self.protocol = Protocol::Upnp;
            self.ask(Phase::AskMap, now_us);
            return None;
        }
        if self.tries >= MAX_TRIES {
            self.fail(format!("no answer from the gateway ({})", self.protocol.name()), now_us);
            return None;
        }
        self.next_at_us = now_us + (FIRST_RETRY_US << self.tries);
        self.tries += 1;
        Some(match (self.protocol, self.phase) {
            (Protocol::Pcp, _) => {
                self.asked_pcp = true;
                pcp::map_request(self.client, &self.nonce, self.internal_port, LIFETIME_S)
            }
            (Protocol::NatPmp, Phase::AskExternal) => external_address_request(),
            (Protocol::NatPmp, _) => {
                self.asked_natpmp = true;
                map_request(self.internal_port, LIFETIME_S)
            }
            (Protocol::Upnp, _) => unreachable!("UPnP sends no datagram (returned above)"),
        })
    }

    /// The router restarted and lost its mappings (RFC 6886 3.6, RFC 6887 8.5): map again now.
    fn check_epoch(&mut self, epoch: u32, now_us: u64) {
        let restarted = self.epoch.is_some_and(|last| epoch < last);
        self.epoch = Some(epoch);
        if restarted && self.phase == Phase::Idle && self.mapping.is_some() {
            let phase = self.first_phase();
            self.ask(phase, now_us);
        }
    }

    /// A granted mapping, checked: a public address, a port, a lifetime.
    fn granted(&mut self, ip: Option<Ipv4Addr>, port: u16, lifetime_s: u32, now_us: u64) {
        let Some(ip) = ip else {
            self.mapping = None;
            return self.fail("the gateway's external address is not IPv4".into(), now_us);
        };
        if let Some(why) = unusable_external(ip) {
            self.mapping = None;
            return self.fail(format!("the gateway's external address {ip} is {why}"), now_us);
        }
        let (1.., 1..) = (port, lifetime_s) else {
            self.mapping = None;
            return self.fail(format!("the gateway answered port {port}, lifetime {lifetime_s} s"), now_us);
        };
        self.mapping = Some(Mapping { external: SocketAddrV4::new(ip, port), lifetime_s, granted_at_us: now_us });
        self.problem = None;
        self.phase = Phase::Idle;
        self.tries = 0;
        self.next_at_us = now_us + (lifetime_s as u64 * 500_000).max(MIN_RENEW_US);
    }

    /// A datagram from the gateway's port 5351. Ok(true) if the mapping or its problem changed.
    pub fn handle_response(&mut self, data: &[u8], now_us: u64) -> Result<bool, Malformed> {
        let before = (self.mapping(now_us), self.problem(now_us));
        match self.protocol {
            Protocol::Pcp if pcp::is_natpmp(data) => self.fall_back(now_us),
            Protocol::Pcp => self.handle_pcp(data, now_us)?,
            Protocol::NatPmp => self.handle_natpmp(data, now_us)?,
            Protocol::Upnp => return Ok(false), // a late answer on 5351: the gateway was asked in UPnP since
        }
        self.heard_5351 = true;
        Ok(before != (self.mapping(now_us), self.problem(now_us)))
    }

    fn handle_pcp(&mut self, data: &[u8], now_us: u64) -> Result<(), Malformed> {
        let answer = pcp::decode(data)?;
        if self.phase != Phase::AskMap || !answer.answers(&self.nonce, self.internal_port) {
            return Ok(()); // a late duplicate, or not ours
        }
        match answer.result {
            pcp::SUCCESS => self.granted(answer.external_ip, answer.external_port, answer.lifetime_s, now_us),
            pcp::UNSUPP_VERSION => self.fall_back(now_us),
            result => {
                self.mapping = None;
                self.fail(pcp::result_text(result), now_us);
            }
        }
        self.check_epoch(answer.epoch, now_us);
        Ok(())
    }

    fn handle_natpmp(&mut self, data: &[u8], now_us: u64) -> Result<(), Malformed> {
        let answer = decode(data)?;
        match answer {
            Answer::External { result, ip, epoch } if self.phase == Phase::AskExternal => {
                if result != 0 {
                    self.fail(result_text(result), now_us);
                } else if let Some(why) = unusable_external(ip) {
                    self.external_ip = None;
                    self.mapping = None;
                    self.fail(format!("the gateway's external address {ip} is {why}"), now_us);
                } else {
                    self.external_ip = Some(ip);
                    self.ask(Phase::AskMap, now_us);
                }
                self.check_epoch(epoch, now_us);
            }
            Answer::Map { result, internal_port, external_port, lifetime_s, epoch }
                if self.phase == Phase::AskMap && internal_port == self.internal_port =>
            {
                if result != 0 {
                    self.mapping = None;
                    self.fail(result_text(result), now_us);
                } else {
                    self.granted(self.external_ip, external_port, lifetime_s, now_us);
                }
                self.check_epoch(epoch, now_us);
            }
            _ => {} // a late duplicate, or an answer for another port: nothing to do
        }
        Ok(())
    }

    /// The requests that delete the mapping, in each protocol it was asked in (none if never asked).
    pub fn release(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        if self.asked_pcp {
            out.push(pcp::map_request(self.client, &self.nonce, self.internal_port, 0));
        }
        if self.asked_natpmp {
            out.push(map_request(self.internal_port, 0));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: Ipv4Addr = Ipv4Addr::new(172, 16, 1, 2);
    const NONCE: [u8; pcp::NONCE_LEN] = [7; pcp::NONCE_LEN];
    const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);

    fn external_answer(epoch: u32, ip: [u8; 4]) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(0);
        w.u8(128);
        w.u16(0);
        w.u32(epoch);
        w.bytes(&ip);
        w.out
    }

    fn map_answer(result: u16, epoch: u32, internal: u16, external: u16, lifetime: u32) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(0);
        w.u8(129);
        w.u16(result);
        w.u32(epoch);
        w.u16(internal);
        w.u16(external);
        w.u32(lifetime);
        w.out
    }

    fn pcp_request(lifetime: u32) -> Vec<u8> {
        pcp::map_request(CLIENT, &NONCE, 4433, lifetime)
    }

    /// A mapper whose gateway answered its PCP request as a NAT-PMP server does: "unsupported version".
    fn natpmp_mapper(now: u64) -> Mapper {
        let mut m = Mapper::new(4433, CLIENT, NONCE, now);
        assert_eq!(m.poll_transmit(now), Some(pcp_request(LIFETIME_S)), "PCP first");
        assert!(!m.handle_response(&[0, 129, 0, 1, 0, 0, 0, 9], now).unwrap());
        assert_eq!(m.protocol(), Protocol::NatPmp);
        m
    }

    /// Runs a NAT-PMP mapper through a granted mapping at `now` (203.0.113.9 is fine as an external
    /// address here: only private, shared and non-host ranges are refused).
    fn mapped(now: u64) -> Mapper {
        let mut m = natpmp_mapper(now);
        assert_eq!(m.poll_transmit(now), Some(vec![0, 0]));
        assert!(!m.handle_response(&external_answer(100, PUBLIC.octets()), now).unwrap());
        assert_eq!(m.poll_transmit(now), Some(map_request(4433, LIFETIME_S)));
        assert!(m.handle_response(&map_answer(0, 100, 4433, 40000, 3600), now).unwrap());
        m
    }

    #[test]
    fn requests_are_as_rfc_6886_lays_them_out() {
        assert_eq!(map_request(4433, 7200), vec![0, 1, 0, 0, 0x11, 0x51, 0x11, 0x51, 0, 0, 0x1c, 0x20]);
        assert_eq!(map_request(4433, 0), vec![0, 1, 0, 0, 0x11, 0x51, 0, 0, 0, 0, 0, 0], "delete: port 0, lifetime 0");
        assert_eq!(
            decode(&map_answer(0, 7, 4433, 40000, 60)),
            Ok(Answer::Map { result: 0, epoch: 7, internal_port: 4433, external_port: 40000, lifetime_s: 60 })
        );
        assert_eq!(decode(&[1, 128, 0, 0]), Err("not a NAT-PMP version 0 answer"));
        assert_eq!(decode(&[0, 1, 0, 0, 0, 0, 0, 0]), Err("not a NAT-PMP answer"), "a request is no answer");
        assert_eq!(decode(&[0, 128, 0, 0, 0, 0]), Err("truncated"));
        assert_eq!(decode(&[external_answer(1, [1, 1, 1, 1]), vec![0]].concat()), Err("trailing bytes"));
    }

    #[test]
    fn pcp_maps_in_one_exchange_and_its_answers_are_checked() {
        let mut m = Mapper::new(4433, CLIENT, NONCE, 0);
        assert_eq!(m.poll_transmit(0), Some(pcp_request(LIFETIME_S)));
        let other = pcp::answer(0, 3600, 5, [8; 12], 4433, (PUBLIC, 40000));
        assert!(!m.handle_response(&other, 0).unwrap(), "another nonce: not our answer");
        assert_eq!(m.candidate(0), None);
        assert!(m.handle_response(&pcp::answer(0, 3600, 5, NONCE, 4433, (PUBLIC, 40000)), 0).unwrap());
        assert_eq!(m.candidate(0), Some("203.0.113.9:40000".parse().unwrap()));
        assert_eq!(m.protocol().name(), "pcp");
        assert_eq!(m.next_at(), 1_800_000_000);
        assert_eq!(m.release(), vec![pcp_request(0)]);

        let mut refused = Mapper::new(4433, CLIENT, NONCE, 0);
        refused.poll_transmit(0);
        refused.handle_response(&pcp::answer(2, 0, 5, NONCE, 4433, (Ipv4Addr::UNSPECIFIED, 0)), 0).unwrap();
        assert!(refused.problem(0).unwrap().contains("not authorized"));
        assert_eq!(refused.protocol(), Protocol::Pcp, "a PCP server that refuses is not asked in NAT-PMP");
        let mut private = Mapper::new(4433, CLIENT, NONCE, 0);
        private.poll_transmit(0);
        private.handle_response(&pcp::answer(0, 3600, 5, NONCE, 4433, (Ipv4Addr::new(10, 0, 0, 1), 4433)), 0).unwrap();
        assert_eq!(private.candidate(0), None);
        assert!(private.problem(0).unwrap().contains("10.0.0.1 is private"));
    }

    #[test]
    fn a_silent_gateway_is_asked_in_nat_pmp_after_two_pcp_requests() {
        let mut m = Mapper::new(4433, CLIENT, NONCE, 0);
        assert_eq!(m.poll_transmit(0), Some(pcp_request(LIFETIME_S)));
        assert_eq!(m.poll_transmit(m.next_at()), Some(pcp_request(LIFETIME_S)));
        assert_eq!(m.poll_transmit(m.next_at()), Some(external_address_request()));
        assert_eq!(m.protocol(), Protocol::NatPmp);
    }

    #[test]
    fn a_mapping_is_granted_renewed_at_half_its_lifetime_and_released() {
        let mut m = mapped(0);
        let mapping = m.mapping(0).unwrap();
        assert_eq!(m.candidate(0), Some("203.0.113.9:40000".parse().unwrap()));
        assert_eq!(mapping.expires_at_us(), 3_600_000_000);
        assert_eq!(m.problem(0), None);
        assert_eq!(m.next_at(), 1_800_000_000, "renewal at half the granted lifetime");
        assert_eq!(m.poll_transmit(1_799_999_999), None);
        assert_eq!(m.poll_transmit(1_800_000_000), Some(map_request(4433, LIFETIME_S)));
        assert!(m.handle_response(&map_answer(0, 1900, 4433, 40000, 3600), 1_800_000_000).unwrap());
        assert_eq!(m.mapping(1_800_000_000).unwrap().expires_at_us(), 5_400_000_000);
        assert_eq!(m.release(), vec![pcp_request(0), map_request(4433, 0)], "a delete in each protocol asked");
        assert!(Mapper::new(1, CLIENT, NONCE, 0).release().is_empty(), "nothing asked, nothing to delete");
    }

    #[test]
    fn unanswered_requests_back_off_then_wait_and_an_unrenewed_mapping_expires() {
        let mut m = natpmp_mapper(0);
        let mut now = 0;
        for i in 0..MAX_TRIES {
            assert!(m.poll_transmit(now).is_some());
            assert_eq!(m.next_at(), now + (FIRST_RETRY_US << i));
            now = m.next_at();
        }
        assert_eq!(m.poll_transmit(now), None);
        assert_eq!(m.problem(now).unwrap(), "no answer from the gateway (nat-pmp)");
        assert_eq!(m.next_at(), now + RETRY_US);
        assert_eq!(m.poll_transmit(now + RETRY_US), Some(external_address_request()), "asked again later");

        let mut m = mapped(0);
        let mut now = m.next_at();
        while now < 3_600_000_000 {
            m.poll_transmit(now);
            now = m.next_at();
        }
        assert_eq!(m.candidate(3_600_000_000), None);
        assert!(m.problem(3_600_000_000).unwrap().starts_with("expired"));
    }

    #[test]
    fn unusable_values_from_the_router_make_no_candidate() {
        for bad in [[10, 0, 0, 1], [192, 168, 1, 1], [172, 16, 0, 1], [100, 64, 0, 1], [0, 0, 0, 0], [127, 0, 0, 1]] {
            let mut m = natpmp_mapper(0);
            m.poll_transmit(0);
            assert!(m.handle_response(&external_answer(1, bad), 0).unwrap());
            assert_eq!(m.poll_transmit(0), None, "no map request for {bad:?}");
            assert_eq!(m.candidate(0), None);
            assert!(m.problem(0).unwrap().contains("external address"), "{:?}", m.problem(0));
        }
        assert_eq!(unusable_external(Ipv4Addr::new(11, 1, 0, 1)), None);
        let mut m = natpmp_mapper(0);
        m.poll_transmit(0);
        m.handle_response(&external_answer(1, [11, 1, 0, 1]), 0).unwrap();
        m.poll_transmit(0);
        assert!(!m.handle_response(&map_answer(0, 1, 5555, 40000, 3600), 0).unwrap(), "another port's answer");
        assert!(m.handle_response(&map_answer(0, 1, 4433, 0, 3600), 0).unwrap());
        assert_eq!(m.candidate(0), None);
        assert!(m.problem(0).unwrap().contains("port 0"));
        let mut m = natpmp_mapper(0);
        m.poll_transmit(0);
        m.handle_response(&external_answer(1, [11, 1, 0, 1]), 0).unwrap();
        m.poll_transmit(0);
        m.handle_response(&map_answer(2, 1, 4433, 4433, 0), 0).unwrap();
        assert!(m.problem(0).unwrap().contains("not authorized"));
    }

    #[test]
    fn a_router_that_restarted_is_asked_again_at_once() {
        let mut m = mapped(0);
        m.poll_transmit(m.next_at());
        let now = m.next_at();
        m.handle_response(&map_answer(0, 5, 4433, 40000, 3600), now).unwrap();
        assert_eq!(m.next_at(), now, "epoch 5 after 100: the router lost its mappings");
        assert_eq!(m.poll_transmit(now), Some(external_address_request()));
    }
}
