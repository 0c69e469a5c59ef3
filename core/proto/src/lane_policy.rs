//! Which TCP lane connections a node's far end opens (issue 16): the same verdict its firewall's forward
//! chain gives a packet that comes out of the tunnel (quicether/net/nft.py), since a lane connection is
//! that traffic carried another way. The `[[acl]]` rules in order, first match wins; when none matches, with
//! `acl_default = "deny"` a connection to another site (a peer's allowed_ips or this node's LAN) is refused
//! and one to anywhere else (the exit) is let through, as the firewall does.

use std::net::{IpAddr, SocketAddr};

use crate::allowed_ips::Prefix;

/// IP protocol number of TCP (a rule's `protocol`).
pub const TCP: u8 = 6;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclRule {
    pub allow: bool,
    /// Empty: any address.
    pub sources: Vec<Prefix>,
    pub destinations: Vec<Prefix>,
    /// None: any protocol.
    pub protocol: Option<u8>,
    /// None: any destination port.
    pub port: Option<u16>,
}

impl AclRule {
    fn matches(&self, source: IpAddr, destination: SocketAddr) -> bool {
        let within = |set: &[Prefix], ip: IpAddr| set.is_empty() || set.iter().any(|p| p.contains(ip));
        within(&self.sources, source)
            && within(&self.destinations, destination.ip())
            && self.protocol.is_none_or(|p| p == TCP)
            && self.port.is_none_or(|p| p == destination.port())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LanePolicy {
    pub rules: Vec<AclRule>,
    /// `acl_default = "deny"`: what no rule allows is refused when it goes to a site.
    pub default_deny: bool,
    /// The sites as this node routes them: every peer's allowed_ips and this node's LAN.
    pub sites: Vec<Prefix>,
    /// This node's ports, which decide the address a connection comes from (`Ports::keeps_source`).
    pub ports: Ports,
}

/// This node's ports as its firewall sees them (quicether/net/nft.py `Firewall`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ports {
    pub tun: String,
    /// A router's LAN port: a router takes every port but this one, loopback and the tunnel for outside.
    pub lan: Option<String>,
    /// The ports that face the internet: the WANs and a gateway's internet port.
    pub outside: Vec<String>,
}

impl Ports {
    /// Whether a lane connection that leaves by `device` comes from the LAN host's own address, as the
    /// tunnel's packets forwarded out of that port do: the firewall masquerades the tunnel's traffic out of
    /// the internet port, and out of another outside port it would have no way back but this node's own
    /// address; to this node itself, or on into the tunnel (another hop), the connection is this node's.
    pub fn keeps_source(&self, device: &str) -> bool {
        if device == "lo" || device == self.tun {
            return false;
        }
        match &self.lan {
            Some(lan) => device == lan,
            None => !self.outside.iter().any(|d| d == device),
        }
    }
}

impl LanePolicy {
    /// Ok if a TCP connection from `source` to `destination` may be opened, else why not.
    pub fn judge(&self, source: IpAddr, destination: SocketAddr) -> Result<(), String> {
        if let Some((i, rule)) = self.rules.iter().enumerate().find(|(_, r)| r.matches(source, destination)) {
            return if rule.allow { Ok(()) } else { Err(format!("denied by ACL rule {}", i + 1)) };
        }
        if self.default_deny && self.sites.iter().any(|p| p.contains(destination.ip())) {
            return Err("denied by acl_default (a connection to another site that no rule allows)".to_string());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefixes(list: &[&str]) -> Vec<Prefix> {
        list.iter().map(|p| p.parse().unwrap()).collect()
    }

    fn rule(allow: bool, from: &[&str], to: &[&str], protocol: Option<u8>, port: Option<u16>) -> AclRule {
        AclRule { allow, sources: prefixes(from), destinations: prefixes(to), protocol, port }
    }

    fn judge(policy: &LanePolicy, from: &str, to: &str) -> Result<(), String> {
        policy.judge(from.parse().unwrap(), to.parse().unwrap())
    }

    #[test]
    fn the_first_matching_rule_wins_and_no_rule_allows() {
        let policy = LanePolicy {
            rules: vec![
                rule(false, &["192.168.1.0/24"], &["10.0.80.0/24"], Some(TCP), Some(22)),
                rule(true, &[], &["10.0.80.0/24"], None, None),
                rule(false, &["192.168.1.7/32"], &[], None, None),
            ],
            default_deny: false,
            sites: prefixes(&["10.0.80.0/24"]),
            ..Default::default()
        };
        assert_eq!(judge(&policy, "192.168.1.7", "10.0.80.5:22"), Err("denied by ACL rule 1".into()));
        assert_eq!(judge(&policy, "192.168.1.7", "10.0.80.5:443"), Ok(()), "rule 2 before rule 3");
        assert_eq!(judge(&policy, "192.168.1.7", "203.0.113.9:443"), Err("denied by ACL rule 3".into()));
        assert_eq!(judge(&policy, "192.168.1.8", "203.0.113.9:443"), Ok(()), "no rule: allowed");
    }

    #[test]
    fn rules_for_other_protocols_do_not_match_tcp() {
        let policy = LanePolicy { rules: vec![rule(false, &[], &[], Some(17), None)], ..Default::default() };
        assert_eq!(judge(&policy, "192.168.1.7", "10.0.80.5:53"), Ok(()));
    }

    #[test]
    fn the_deny_default_refuses_sites_only_and_lets_the_exit_through() {
        let policy = LanePolicy {
            rules: vec![rule(true, &["192.168.1.0/24"], &["10.0.80.10/32"], None, Some(443))],
            default_deny: true,
            sites: prefixes(&["10.0.80.0/24", "192.168.61.0/24"]),
            ..Default::default()
        };
        assert_eq!(judge(&policy, "192.168.1.7", "10.0.80.10:443"), Ok(()));
        assert!(judge(&policy, "192.168.1.7", "10.0.80.10:22").unwrap_err().contains("acl_default"));
        assert!(judge(&policy, "192.168.1.7", "192.168.61.3:80").is_err(), "this node's LAN is a site too");
        assert_eq!(judge(&policy, "192.168.1.7", "203.0.113.9:443"), Ok(()), "the exit");
    }

    #[test]
    fn a_connection_keeps_the_lan_hosts_address_only_where_the_tunnels_packets_would() {
        let gateway = Ports { tun: "qe0".into(), lan: None, outside: vec!["eth0".into(), "wan1".into()] };
        assert!(gateway.keeps_source("dc"), "a port the firewall does not masquerade out of");
        for own in ["eth0", "wan1", "lo", "qe0"] {
            assert!(!gateway.keeps_source(own), "{own}");
        }
        let router = Ports { tun: "qe0".into(), lan: Some("br-lan".into()), outside: vec!["wan0".into()] };
        assert!(router.keeps_source("br-lan"));
        // A router takes a port it does not know for outside, as its firewall does.
        for own in ["wan0", "eth9", "lo", "qe0"] {
            assert!(!router.keeps_source(own), "{own}");
        }
    }
}
