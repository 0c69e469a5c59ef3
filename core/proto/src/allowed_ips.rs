//! Allowed IPs: a peer owns a set of prefixes. Outbound, the destination picks the peer (longest prefix
//! wins); inbound, a packet whose source is not among the sending peer's prefixes is dropped (a peer can
//! only speak for the addresses it was given, as in WireGuard's cryptokey routing).

use std::net::IpAddr;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.len == 0 { 0 } else { u32::MAX << (32 - self.len as u32) };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.len == 0 { 0 } else { u128::MAX << (128 - self.len as u32) };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| format!("invalid IP prefix {s:?}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max).ok_or(format!("invalid prefix length in {s:?}"))?,
            None => max,
        };
        Ok(Prefix { addr, len })
    }
}

/// Destination or source address of an IP packet, or None if it is not a well-formed IPv4/IPv6 header.
pub fn packet_addrs(packet: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => {
            let src: [u8; 4] = packet[12..16].try_into().ok()?;
            let dst: [u8; 4] = packet[16..20].try_into().ok()?;
            Some((IpAddr::from(src), IpAddr::from(dst)))
        }
        6 if packet.len() >= 40 => {
            let src: [u8; 16] = packet[8..24].try_into().ok()?;
            let dst: [u8; 16] = packet[24..40].try_into().ok()?;
            Some((IpAddr::from(src), IpAddr::from(dst)))
        }
        _ => None,
    }
}

/// Prefix → peer table, generic over how a peer is named (the node's key in `io`). Tables are tiny (a few
/// prefixes per peer), so a scan beats a trie here. A prefix belongs to one peer: inserting it for another
/// moves it (as WireGuard does), so the caller decides whether two peers may claim the same prefix.
#[derive(Clone, Debug)]
pub struct AllowedIps<P = usize> {
    entries: Vec<(Prefix, P)>,
}

impl<P> Default for AllowedIps<P> {
    fn default() -> Self {
        Self { entries: Vec::new() }
    }
}

impl<P: Clone + PartialEq> AllowedIps<P> {
    pub fn insert(&mut self, prefix: Prefix, peer: P) {
        self.entries.retain(|(p, _)| *p != prefix);
        self.entries.push((prefix, peer));
        // Longest prefix first, so the first match is the most specific.
        self.entries.sort_by_key(|e| std::cmp::Reverse(e.0.len));
    }

    /// Removes `prefix` (whoever owns it); returns its owner.
    pub fn remove(&mut self, prefix: Prefix) -> Option<P> {
        let at = self.entries.iter().position(|(p, _)| *p == prefix)?;
        Some(self.entries.remove(at).1)
    }

    /// Removes every prefix of `peer`; returns how many there were.
    pub fn remove_peer(&mut self, peer: &P) -> usize {
        let before = self.entries.len();
        self.entries.retain(|(_, owner)| owner != peer);
        before - self.entries.len()
    }

    /// Makes `prefixes` the whole set of `peer` (an update: prefixes it no longer has go).
    pub fn replace_peer(&mut self, peer: &P, prefixes: &[Prefix]) {
        self.remove_peer(peer);
        for prefix in prefixes {
            self.insert(*prefix, peer.clone());
        }
    }

    /// Prefixes owned by `peer`, most specific first.
    pub fn prefixes_of(&self, peer: &P) -> Vec<Prefix> {
        self.entries.iter().filter(|(_, owner)| owner == peer).map(|(p, _)| *p).collect()
    }

    pub fn lookup(&self, ip: IpAddr) -> Option<&P> {
        self.entries.iter().find(|(p, _)| p.contains(ip)).map(|(_, peer)| peer)
    }

    /// True if `peer` may send packets with source address `ip`.
    pub fn allows(&self, peer: &P, ip: IpAddr) -> bool {
        self.lookup(ip) == Some(peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_rejects_prefixes() {
        assert_eq!(p("10.0.0.0/8").len, 8);
        assert_eq!(p("10.1.2.3").len, 32);
        assert_eq!(p("fd00::/64").len, 64);
        assert!("10.0.0.0/33".parse::<Prefix>().is_err());
        assert!("nonsense/8".parse::<Prefix>().is_err());
    }

    #[test]
    fn longest_prefix_wins_and_sources_are_checked() {
        let mut t = AllowedIps::default();
        t.insert(p("0.0.0.0/0"), 0);
        t.insert(p("10.9.0.0/16"), 1);
        t.insert(p("10.9.0.7/32"), 2);
        assert_eq!(t.lookup("10.9.0.7".parse().unwrap()), Some(&2));
        assert_eq!(t.lookup("10.9.3.1".parse().unwrap()), Some(&1));
        assert_eq!(t.lookup("8.8.8.8".parse().unwrap()), Some(&0));
        assert_eq!(t.lookup("::1".parse().unwrap()), None);
        assert!(t.allows(&1, "10.9.3.1".parse().unwrap()));
        assert!(!t.allows(&1, "10.9.0.7".parse().unwrap()));
    }

    #[test]
    fn removing_a_peer_leaves_the_others_routes() {
        let mut t: AllowedIps<[u8; 2]> = AllowedIps::default();
        t.insert(p("0.0.0.0/0"), *b"gw");
        t.insert(p("10.9.0.0/16"), *b"s1");
        t.insert(p("10.9.0.7/32"), *b"s1");
        t.insert(p("10.8.0.0/16"), *b"s2");
        assert_eq!(t.remove_peer(b"s1"), 2);
        // What s1 owned now falls through to the next most specific owner.
        assert_eq!(t.lookup("10.9.0.7".parse().unwrap()), Some(b"gw"));
        assert!(!t.allows(b"s1", "10.9.0.7".parse().unwrap()));
        assert_eq!(t.lookup("10.8.1.1".parse().unwrap()), Some(b"s2"));
        assert_eq!(t.remove_peer(b"s1"), 0, "removing twice removes nothing");
        assert_eq!(t.remove(p("10.8.0.0/16")), Some(*b"s2"));
        assert_eq!(t.remove(p("10.8.0.0/16")), None);
        assert_eq!(t.lookup("10.8.1.1".parse().unwrap()), Some(b"gw"));
    }

    #[test]
    fn replacing_a_peers_prefixes_drops_the_old_ones() {
        let mut t: AllowedIps<u8> = AllowedIps::default();
        t.insert(p("10.1.0.0/16"), 1);
        t.insert(p("10.2.0.0/16"), 1);
        t.insert(p("10.3.0.0/16"), 2);
        t.replace_peer(&1, &[p("10.2.0.0/16"), p("10.4.0.0/24")]);
        assert_eq!(t.lookup("10.1.0.1".parse().unwrap()), None);
        assert_eq!(t.lookup("10.2.0.1".parse().unwrap()), Some(&1));
        assert_eq!(t.lookup("10.4.0.1".parse().unwrap()), Some(&1));
        assert_eq!(t.prefixes_of(&1), vec![p("10.4.0.0/24"), p("10.2.0.0/16")]);
        assert_eq!(t.prefixes_of(&2), vec![p("10.3.0.0/16")]);
    }

    #[test]
    fn reads_addresses_from_ip_headers() {
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[12..16].copy_from_slice(&[10, 0, 0, 1]);
        v4[16..20].copy_from_slice(&[10, 0, 0, 2]);
        assert_eq!(packet_addrs(&v4), Some(("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap())));
        assert_eq!(packet_addrs(&v4[..19]), None);
        assert_eq!(packet_addrs(&[0x10; 40]), None);
    }
}
