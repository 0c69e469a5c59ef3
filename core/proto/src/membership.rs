//! Membership of a mesh network (Nebula's trust model without its lighthouses): a network key (Ed25519)
//! signs a **certificate** for each member and a **revocation** when a member is cut off. No I/O and no
//! clock: the caller passes `now` in Unix seconds.
//!
//! Wire format (all integers big-endian; every encoding is canonical: trailing bytes are refused).
//!
//! Certificate, version 1 (at most `MAX_CERTIFICATE_LEN` bytes):
//! ```text
//!   u8      type/version = 0x01
//!   [32]    network key (Ed25519 public key; it is the network's id)
//!   [32]    node key (Ed25519 public key)
//!   u64     not_before, u64 not_after        Unix seconds, not_before < not_after
//!   [4]     overlay IPv4 (the member's /32)
//!   [4] u8  overlay prefix and length        /10../16, inside 100.64.0.0/10, holding the IPv4
//!   u8      flags                            bit 0: offers itself as an exit; other bits must be 0
//!   u8 len, bytes   name                     1..=32 of [a-z0-9-], no '-' first or last (a DNS label)
//!   u8 n, n × (u8 len, bytes)  groups        n <= 8, each like a name
//!   u8 n, n × prefix           LAN prefixes  n <= 16; prefix = u8 family (4|6), address, u8 length;
//!                                            canonical (no host bits)
//!   [64]    Ed25519 signature by the network key of CERT_CONTEXT followed by every byte above
//! ```
//! The member's IPv6 ULA is not carried: anyone derives it from the two keys (`ula`), so it cannot
//! disagree with them.
//!
//! Revocation, version 1 (exactly `REVOCATION_LEN` bytes):
//! ```text
//!   u8 type/version = 0x02, [32] network key, [32] node key, u64 revoked_at (Unix s), u64 sequence,
//!   [64] Ed25519 signature by the network key of REVOCATION_CONTEXT followed by the bytes above
//! ```
//! The signed message starts with a context string, so no certificate, revocation, DHT record or TLS
//! signature made with the same key can pass for another kind.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ring::digest::{digest, SHA256};

use crate::allowed_ips::Prefix;
use crate::signing;
use crate::wire::{self, Malformed, Reader, Writer};

pub const CERTIFICATE_V1: u8 = 0x01;
pub const REVOCATION_V1: u8 = 0x02;
const CERT_CONTEXT: &[u8] = b"quicether certificate v1\0";
const REVOCATION_CONTEXT: &[u8] = b"quicether revocation v1\0";

pub const MAX_NAME_LEN: usize = 32;
pub const MAX_GROUPS: usize = 8;
pub const MAX_LAN_PREFIXES: usize = 16;
/// Largest LAN prefix entry: family, 16 address bytes, length.
const MAX_PREFIX_LEN: usize = 18;
pub const MAX_CERTIFICATE_LEN: usize = 1
    + 32
    + 32
    + 8
    + 8
    + 4
    + 5
    + 1
    + (1 + MAX_NAME_LEN)
    + 1
    + MAX_GROUPS * (1 + MAX_NAME_LEN)
    + 1
    + MAX_LAN_PREFIXES * MAX_PREFIX_LEN
    + signing::SIGNATURE_LEN;
pub const REVOCATION_LEN: usize = 1 + 32 + 32 + 8 + 8 + signing::SIGNATURE_LEN;

/// How far another member's clock may be off ours: an SBC without an RTC may boot minutes off until NTP
/// steps it, and a certificate issued a moment ago on the admin node must still be valid here.
pub const CLOCK_TOLERANCE_S: u64 = 600;
/// Revocations kept (each signed by the network key, so only an admin adds them; the bound is a backstop).
pub const MAX_REVOCATIONS: usize = 4096;

/// The shared address space of every overlay: 100.64.0.0/10 (RFC 6598); a network uses a /10../16 of it.
const OVERLAY_SPACE: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 0);
const OVERLAY_SPACE_LEN: u8 = 10;
const MIN_OVERLAY_LEN: u8 = 10;
const MAX_OVERLAY_LEN: u8 = 16;

const FLAG_EXIT: u8 = 0x01;

/// What a certificate says about a member (everything but the signature).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Certificate {
    pub network: [u8; 32],
    pub node: [u8; 32],
    pub not_before: u64,
    pub not_after: u64,
    pub ipv4: Ipv4Addr,
    pub overlay: (Ipv4Addr, u8),
    pub exit: bool,
    pub name: String,
    pub groups: Vec<String>,
    pub lan_prefixes: Vec<Prefix>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Revocation {
    pub network: [u8; 32],
    pub node: [u8; 32],
    pub revoked_at: u64,
    pub sequence: u64,
}

/// Why a certificate or revocation was refused; each cause is counted and reported on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    Malformed(Malformed),
    /// Signed for another network than ours.
    ForeignNetwork,
    BadSignature,
    NotYetValid,
    Expired,
    Revoked,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Malformed(why) => write!(f, "malformed: {why}"),
            Refused::ForeignNetwork => f.write_str("foreign network: signed by another network key"),
            Refused::BadSignature => f.write_str("bad signature"),
            Refused::NotYetValid => f.write_str("not yet valid"),
            Refused::Expired => f.write_str("expired"),
            Refused::Revoked => f.write_str("revoked"),
        }
    }
}

impl std::error::Error for Refused {}

fn name_char(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'
}

/// A member name or group: 1..=32 of [a-z0-9-], no '-' first or last, so it is a DNS label as is.
pub fn is_valid_name(name: &[u8]) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name.iter().all(|&c| name_char(c))
        && name[0] != b'-'
        && name[name.len() - 1] != b'-'
}

fn check_overlay(ipv4: Ipv4Addr, (net, len): (Ipv4Addr, u8)) -> Result<(), Malformed> {
    if !(MIN_OVERLAY_LEN..=MAX_OVERLAY_LEN).contains(&len) {
        return Err("overlay prefix must be a /10 to /16");
    }
    let net_prefix = Prefix { addr: IpAddr::V4(net), len };
    let space = Prefix { addr: IpAddr::V4(OVERLAY_SPACE), len: OVERLAY_SPACE_LEN };
    if !wire::is_canonical(&net_prefix) || !space.contains(IpAddr::V4(net)) {
        return Err("overlay prefix must be a canonical prefix inside 100.64.0.0/10");
    }
    let host = u32::from(ipv4) & (u32::MAX >> len);
    if !net_prefix.contains(IpAddr::V4(ipv4)) || host == 0 || host == u32::MAX >> len {
        return Err("overlay IPv4 must be a host address inside the overlay prefix");
    }
    Ok(())
}

impl Certificate {
    /// Checks every field against the limits the decoder enforces, so whatever we issue reads back.
    pub fn validate(&self) -> Result<(), Malformed> {
        if self.not_before >= self.not_after {
            return Err("not_before must be before not_after");
        }
        check_overlay(self.ipv4, self.overlay)?;
        if !is_valid_name(self.name.as_bytes()) {
            return Err("name must be 1 to 32 of a-z, 0-9 and '-', not starting or ending with '-'");
        }
        if self.groups.len() > MAX_GROUPS {
            return Err("too many groups");
        }
        if !self.groups.iter().all(|g| is_valid_name(g.as_bytes())) {
            return Err("group must be 1 to 32 of a-z, 0-9 and '-', not starting or ending with '-'");
        }
        if self.lan_prefixes.len() > MAX_LAN_PREFIXES {
            return Err("too many LAN prefixes");
        }
        if !self.lan_prefixes.iter().all(wire::is_canonical) {
            return Err("LAN prefix has host bits set");
        }
        Ok(())
    }

    fn body(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(CERTIFICATE_V1);
        w.bytes(&self.network);
        w.bytes(&self.node);
        w.u64(self.not_before);
        w.u64(self.not_after);
        w.bytes(&self.ipv4.octets());
        w.bytes(&self.overlay.0.octets());
        w.u8(self.overlay.1);
        w.u8(if self.exit { FLAG_EXIT } else { 0 });
        w.short_bytes(self.name.as_bytes());
        w.u8(self.groups.len() as u8);
        for g in &self.groups {
            w.short_bytes(g.as_bytes());
        }
        w.u8(self.lan_prefixes.len() as u8);
        for p in &self.lan_prefixes {
            w.prefix(p);
        }
        w.out
    }

    /// Signs with the network key seed; the certificate's `network` is set from it.
    pub fn issue(mut self, network_seed: &[u8; 32]) -> Result<Vec<u8>, Malformed> {
        self.network = signing::public_key(network_seed);
        self.validate()?;
        let mut out = self.body();
        let signature = signing::sign(network_seed, &[CERT_CONTEXT, &out].concat());
        out.extend_from_slice(&signature);
        Ok(out)
    }

    /// The member's IPv6 ULA (see `ula`).
    pub fn ipv6(&self) -> Ipv6Addr {
        ula(&self.network, &self.node)
    }
}

fn parse_name(r: &mut Reader<'_>, what: Malformed) -> Result<String, Malformed> {
    let raw = r.short_bytes(MAX_NAME_LEN, what)?;
    if !is_valid_name(raw) {
        return Err(what);
    }
    Ok(std::str::from_utf8(raw).map_err(|_| what)?.to_string())
}

/// Decodes a certificate without checking its signature: (certificate, signed message, signature).
/// Bounded: refuses anything longer than `MAX_CERTIFICATE_LEN` first, and every count is checked before
/// anything is allocated for it.
fn parse_certificate(data: &[u8]) -> Result<(Certificate, &[u8], [u8; 64]), Malformed> {
    if data.len() > MAX_CERTIFICATE_LEN {
        return Err("longer than any certificate");
    }
    let body_len = data.len().checked_sub(signing::SIGNATURE_LEN).ok_or("truncated")?;
    let mut r = Reader::new(&data[..body_len]);
    if r.u8()? != CERTIFICATE_V1 {
        return Err("not a version 1 certificate");
    }
    let network = r.array()?;
    let node = r.array()?;
    let not_before = r.u64()?;
    let not_after = r.u64()?;
    let ipv4 = Ipv4Addr::from(r.array::<4>()?);
    let overlay = (Ipv4Addr::from(r.array::<4>()?), r.u8()?);
    let flags = r.u8()?;
    if flags & !FLAG_EXIT != 0 {
        return Err("unknown flags");
    }
    let name = parse_name(&mut r, "bad name")?;
    let n = r.u8()? as usize;
    if n > MAX_GROUPS {
        return Err("too many groups");
    }
    let mut groups = Vec::with_capacity(n);
    for _ in 0..n {
        groups.push(parse_name(&mut r, "bad group")?);
    }
    let n = r.u8()? as usize;
    if n > MAX_LAN_PREFIXES {
        return Err("too many LAN prefixes");
    }
    let mut lan_prefixes = Vec::with_capacity(n);
    for _ in 0..n {
        lan_prefixes.push(r.prefix()?);
    }
    if r.remaining() != 0 {
        return Err("trailing bytes");
    }
    let cert = Certificate {
        network,
        node,
        not_before,
        not_after,
        ipv4,
        overlay,
        exit: flags & FLAG_EXIT != 0,
        name,
        groups,
        lan_prefixes,
    };
    cert.validate()?;
    let signature = data[body_len..].try_into().expect("64 bytes");
    Ok((cert, &data[..body_len], signature))
}

/// Reads and verifies a certificate for our network at `now`: well-formed, signed by `network_key`,
/// inside its validity window (give or take `CLOCK_TOLERANCE_S`), node not revoked.
pub fn read_certificate(
    data: &[u8],
    network_key: &[u8; 32],
    now: u64,
    revocations: &RevocationSet,
) -> Result<Certificate, Refused> {
    let cert = read_certificate_at_any_time(data, network_key, revocations)?;
    if now.saturating_add(CLOCK_TOLERANCE_S) < cert.not_before {
        return Err(Refused::NotYetValid);
    }
    if now > cert.not_after.saturating_add(CLOCK_TOLERANCE_S) {
        return Err(Refused::Expired);
    }
    Ok(cert)
}

/// Whether the certificate of a member admitted earlier still keeps it admitted at `now`: as
/// `read_certificate`, except that one "not yet valid" by our clock still holds. It was valid by our clock
/// when the member was admitted, so the clock has since stepped back (an NTP step on a board without an
/// RTC): cutting the member off would break a working bond over a clock, not over its membership. Expiry,
/// revocation, a bad signature or another network still end it; a new handshake is judged by
/// `read_certificate` (refused while our clock says "not yet", accepted once it is right).
pub fn admitted_certificate_holds(
    data: &[u8],
    network_key: &[u8; 32],
    now: u64,
    revocations: &RevocationSet,
) -> Result<Certificate, Refused> {
    match read_certificate(data, network_key, now, revocations) {
        Err(Refused::NotYetValid) => read_certificate_at_any_time(data, network_key, revocations),
        judged => judged,
    }
}

/// `read_certificate` without the validity window: for a node checking its own certificate in its config
/// (an expired one is renewed, not a reason to refuse the whole config).
pub fn read_certificate_at_any_time(
    data: &[u8],
    network_key: &[u8; 32],
    revocations: &RevocationSet,
) -> Result<Certificate, Refused> {
    let (cert, body, signature) = parse_certificate(data).map_err(Refused::Malformed)?;
    if &cert.network != network_key {
        return Err(Refused::ForeignNetwork);
    }
    if !signing::verify(network_key, &[CERT_CONTEXT, body].concat(), &signature) {
        return Err(Refused::BadSignature);
    }
    if revocations.is_revoked(&cert.node) {
        return Err(Refused::Revoked);
    }
    Ok(cert)
}

impl Revocation {
    fn body(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(REVOCATION_V1);
        w.bytes(&self.network);
        w.bytes(&self.node);
        w.u64(self.revoked_at);
        w.u64(self.sequence);
        w.out
    }

    /// Signs with the network key seed; `network` is set from it.
    pub fn issue(mut self, network_seed: &[u8; 32]) -> Vec<u8> {
        self.network = signing::public_key(network_seed);
        let mut out = self.body();
        let signature = signing::sign(network_seed, &[REVOCATION_CONTEXT, &out].concat());
        out.extend_from_slice(&signature);
        out
    }
}

/// Reads and verifies a revocation of our network. It has no validity window: revoking is always safe to
/// apply, whenever it arrives.
pub fn read_revocation(data: &[u8], network_key: &[u8; 32]) -> Result<Revocation, Refused> {
    if data.len() != REVOCATION_LEN {
        return Err(Refused::Malformed(if data.len() < REVOCATION_LEN { "truncated" } else { "trailing bytes" }));
    }
    let mut r = Reader::new(data);
    let m = Refused::Malformed;
    if r.u8().map_err(m)? != REVOCATION_V1 {
        return Err(m("not a version 1 revocation"));
    }
    let rev = Revocation {
        network: r.array().map_err(m)?,
        node: r.array().map_err(m)?,
        revoked_at: r.u64().map_err(m)?,
        sequence: r.u64().map_err(m)?,
    };
    let body = &data[..REVOCATION_LEN - signing::SIGNATURE_LEN];
    if &rev.network != network_key {
        return Err(Refused::ForeignNetwork);
    }
    if !signing::verify(network_key, &[REVOCATION_CONTEXT, body].concat(), r.bytes(64).map_err(m)?) {
        return Err(Refused::BadSignature);
    }
    Ok(rev)
}

/// The revoked members of one network, each with the revocation that cut it off (the newest sequence the
/// admin issued is what members compare to tell who is behind).
#[derive(Debug, Default)]
pub struct RevocationSet {
    revoked: HashMap<[u8; 32], Revocation>,
}

impl RevocationSet {
    /// Adds a verified revocation; false if the node was already revoked or the set is full.
    pub fn insert(&mut self, rev: Revocation) -> bool {
        if self.revoked.contains_key(&rev.node) || self.revoked.len() >= MAX_REVOCATIONS {
            return false;
        }
        self.revoked.insert(rev.node, rev);
        true
    }

    pub fn is_revoked(&self, node: &[u8; 32]) -> bool {
        self.revoked.contains_key(node)
    }

    /// The highest revocation sequence held (0 if none).
    pub fn latest_sequence(&self) -> u64 {
        self.revoked.values().map(|r| r.sequence).max().unwrap_or(0)
    }

    pub fn len(&self) -> usize {
        self.revoked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.revoked.is_empty()
    }
}

/// A member's IPv6 ULA (RFC 4193): fd00::/8, then a 40-bit global id hashed from the network key (every
/// member of a network shares its /48, so one route covers the network), subnet 0, and a 64-bit interface
/// id hashed from both keys.
pub fn ula(network: &[u8; 32], node: &[u8; 32]) -> Ipv6Addr {
    let global = digest(&SHA256, &[b"quicether ula network\0".as_slice(), network].concat());
    let iface = digest(&SHA256, &[b"quicether ula node\0".as_slice(), network, node].concat());
    let mut a = [0u8; 16];
    a[0] = 0xfd;
    a[1..6].copy_from_slice(&global.as_ref()[..5]);
    a[8..16].copy_from_slice(&iface.as_ref()[..8]);
    Ipv6Addr::from(a)
}

#[cfg(test)]
#[path = "membership_tests.rs"]
mod tests;
