//! The peer table: peers by node key, and which peer owns which inner prefix (allowed IPs). Read on every
//! packet (route by destination, check the source), written only when a peer is added, changed or
//! removed, so one `RwLock` around both keeps the two consistent at the cost of one uncontended read lock
//! per packet.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use quicether_proto::allowed_ips::{AllowedIps, Prefix};

use crate::peer::Peer;

#[derive(Default)]
pub struct PeerTable {
    by_key: HashMap<[u8; 32], Arc<Peer>>,
    /// In the order they were added, so status lists peers as the config does.
    order: Vec<[u8; 32]>,
    allowed: AllowedIps<[u8; 32]>,
}

impl PeerTable {
    pub fn get(&self, key: &[u8; 32]) -> Option<&Arc<Peer>> {
        self.by_key.get(key)
    }

    pub fn contains(&self, key: &[u8; 32]) -> bool {
        self.by_key.contains_key(key)
    }

    /// The peer that owns destination `dst` (longest prefix).
    pub fn route(&self, dst: IpAddr) -> Option<&Arc<Peer>> {
        self.allowed.lookup(dst).and_then(|key| self.by_key.get(key))
    }

    /// True if the peer with `key` may send packets from `src`.
    pub fn allows(&self, key: &[u8; 32], src: IpAddr) -> bool {
        self.allowed.allows(key, src)
    }

    /// Adds `peer` with its prefixes; false (and nothing changed) if its key is already there.
    pub fn insert(&mut self, peer: Arc<Peer>, allowed_ips: &[Prefix]) -> bool {
        if self.by_key.contains_key(&peer.key) {
            return false;
        }
        self.allowed.replace_peer(&peer.key, allowed_ips);
        self.order.push(peer.key);
        self.by_key.insert(peer.key, peer);
        true
    }

    /// Makes `allowed_ips` the whole prefix set of peer `key`.
    pub fn set_allowed_ips(&mut self, key: &[u8; 32], allowed_ips: &[Prefix]) {
        self.allowed.replace_peer(key, allowed_ips);
    }

    pub fn allowed_ips_of(&self, key: &[u8; 32]) -> Vec<Prefix> {
        self.allowed.prefixes_of(key)
    }

    /// Removes peer `key` and its prefixes.
    pub fn remove(&mut self, key: &[u8; 32]) -> Option<Arc<Peer>> {
        let peer = self.by_key.remove(key)?;
        self.allowed.remove_peer(key);
        self.order.retain(|k| k != key);
        Some(peer)
    }

    /// Every peer, in the order added.
    pub fn peers(&self) -> impl Iterator<Item = &Arc<Peer>> {
        self.order.iter().filter_map(|k| self.by_key.get(k))
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::{PeerConfig, PeerPolicy};
    use quicether_proto::scheduler::Mode;

    fn peer(key: u8, allowed: &[&str]) -> (Arc<Peer>, Vec<Prefix>) {
        let policy = PeerPolicy { bulk_mode: Mode::Aggregate, realtime_mode: Mode::Redundant, rules: vec![] };
        let allowed_ips: Vec<Prefix> = allowed.iter().map(|a| a.parse().unwrap()).collect();
        let cfg = PeerConfig {
            key: [key; 32],
            endpoints: vec![],
            allowed_ips: allowed_ips.clone(),
            policy,
            member_only: false,
        };
        (Arc::new(Peer::new(&cfg, 0)), allowed_ips)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn peers_come_and_go_with_their_routes() {
        let mut table = PeerTable::default();
        let (gw, gw_ips) = peer(1, &["0.0.0.0/0"]);
        let (site, site_ips) = peer(2, &["10.9.0.0/16"]);
        assert!(table.insert(gw.clone(), &gw_ips));
        assert!(table.insert(site.clone(), &site_ips));
        assert!(!table.insert(peer(2, &["10.8.0.0/16"]).0, &[]), "a key is added once");
        assert_eq!(table.route(ip("10.9.1.1")).map(|p| p.key), Some([2; 32]));
        assert!(table.allows(&[2; 32], ip("10.9.1.1")) && !table.allows(&[2; 32], ip("8.8.8.8")));
        assert_eq!(table.peers().map(|p| p.key[0]).collect::<Vec<_>>(), vec![1, 2]);

        table.set_allowed_ips(&[2; 32], &["10.7.0.0/16".parse().unwrap()]);
        assert_eq!(table.route(ip("10.9.1.1")).map(|p| p.key), Some([1; 32]), "the old prefix went to the default");
        assert_eq!(table.route(ip("10.7.1.1")).map(|p| p.key), Some([2; 32]));

        assert!(table.remove(&[2; 32]).is_some());
        assert!(table.remove(&[2; 32]).is_none());
        assert_eq!(table.route(ip("10.7.1.1")).map(|p| p.key), Some([1; 32]));
        assert!(table.allowed_ips_of(&[2; 32]).is_empty());
        assert_eq!(table.len(), 1);
    }
}
