//! Members on the same LAN find each other with mDNS / DNS-SD (the `mdns-sd` crate), without the internet.
//! Each member announces `_quicether._udp.local.` with its QUIC port, its LAN addresses and a TXT record:
//! `k` = node key (64 hex digits), `n` = the network's LAN tag (16 hex digits, derived from the network
//! key: `quicether_proto::record::NetworkKeys::lan_tag`). Announcements of other networks, of ourselves
//! and malformed ones are dropped and counted.
//!
//! Nothing announced is trusted: anyone on the LAN can announce anything. A member found here is only a
//! candidate address to dial; the QUIC handshake (certificate of the network) decides.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};
use quicether_proto::record::NetworkKeys;

pub const SERVICE_TYPE: &str = "_quicether._udp.local.";
/// Candidates kept; an announcement flood from one LAN host costs at most this many entries.
pub const MAX_LAN_MEMBERS: usize = 256;
/// Addresses kept per candidate.
pub const MAX_ADDRS_PER_MEMBER: usize = 8;

#[derive(Debug, Default)]
pub struct LanCounters {
    pub resolved: AtomicU64,
    pub foreign_network: AtomicU64,
    pub malformed: AtomicU64,
    /// Dropped because `MAX_LAN_MEMBERS` candidates were already held.
    pub full: AtomicU64,
}

impl LanCounters {
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let c = |a: &AtomicU64| a.load(Relaxed);
        vec![
            ("resolved", c(&self.resolved)),
            ("foreign_network", c(&self.foreign_network)),
            ("malformed", c(&self.malformed)),
            ("full", c(&self.full)),
        ]
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanMember {
    pub node_key: [u8; 32],
    pub addrs: Vec<SocketAddr>,
    pub seen: Instant,
}

struct State {
    /// By mDNS instance full name, so a removal (goodbye) finds its entry.
    members: Mutex<HashMap<String, LanMember>>,
    counters: LanCounters,
}

pub struct LanDiscovery {
    daemon: ServiceDaemon,
    state: Arc<State>,
    browser: Option<std::thread::JoinHandle<()>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn err(e: mdns_sd::Error) -> std::io::Error {
    std::io::Error::other(format!("mDNS: {e}"))
}

impl LanDiscovery {
    /// Announces this member (`addrs` are its LAN addresses, `port` its QUIC port) and browses for others.
    /// `interfaces`: the LAN interfaces to speak on (None: every interface but loopback).
    pub fn start(
        network_key: &[u8; 32],
        node_key: [u8; 32],
        port: u16,
        addrs: &[IpAddr],
        interfaces: Option<&[String]>,
    ) -> std::io::Result<Self> {
        let tag = hex(&NetworkKeys::new(network_key).lan_tag);
        let daemon = ServiceDaemon::new().map_err(err)?;
        if let Some(names) = interfaces {
            daemon.disable_interface(mdns_sd::IfKind::All).map_err(err)?;
            for name in names {
                daemon.enable_interface(mdns_sd::IfKind::Name(name.clone())).map_err(err)?;
            }
        }
        let key_hex = hex(&node_key);
        // The instance and host names are the key's first 12 hex digits: unique enough on one LAN, and
        // the full key is in the TXT record.
        let instance = format!("qe-{}", &key_hex[..12]);
        let info = ServiceInfo::new(
            SERVICE_TYPE,
            &instance,
            &format!("{instance}.local."),
            addrs,
            port,
            &[("k", key_hex.as_str()), ("n", tag.as_str())][..],
        )
        .map_err(err)?;
        daemon.register(info).map_err(err)?;
        let events = daemon.browse(SERVICE_TYPE).map_err(err)?;
        let state = Arc::new(State { members: Mutex::new(HashMap::new()), counters: LanCounters::default() });
        let s = state.clone();
        let browser = std::thread::Builder::new().name("qe-mdns".into()).spawn(move || {
            // Ends when the daemon shuts down and drops the sender.
            while let Ok(event) = events.recv() {
                s.handle(event, &tag, &node_key);
            }
        })?;
        Ok(Self { daemon, state, browser: Some(browser) })
    }

    /// Candidates seen (other members of our network on the LAN), newest first.
    pub fn members(&self) -> Vec<LanMember> {
        let mut list: Vec<_> = self.state.members.lock().unwrap().values().cloned().collect();
        list.sort_by_key(|m| std::cmp::Reverse(m.seen));
        list
    }

    pub fn counters(&self) -> &LanCounters {
        &self.state.counters
    }
}

impl State {
    fn handle(&self, event: ServiceEvent, tag: &str, own_key: &[u8; 32]) {
        match event {
            ServiceEvent::ServiceResolved(info) => {
                let props = &info.txt_properties;
                if props.get_property_val_str("n") != Some(tag) {
                    self.counters.foreign_network.fetch_add(1, Relaxed);
                    return;
                }
                let Some(node_key) = props.get_property_val_str("k").and_then(unhex::<32>) else {
                    self.counters.malformed.fetch_add(1, Relaxed);
                    return;
                };
                if &node_key == own_key {
                    return;
                }
                let addrs: Vec<SocketAddr> = info
                    .get_addresses()
                    .iter()
                    .take(MAX_ADDRS_PER_MEMBER)
                    .map(|ip| SocketAddr::new(ip.to_ip_addr(), info.get_port()))
                    .collect();
                let mut members = self.members.lock().unwrap();
                if members.len() >= MAX_LAN_MEMBERS && !members.contains_key(info.get_fullname()) {
                    self.counters.full.fetch_add(1, Relaxed);
                    return;
                }
                self.counters.resolved.fetch_add(1, Relaxed);
                members.insert(info.get_fullname().to_string(), LanMember { node_key, addrs, seen: Instant::now() });
            }
            ServiceEvent::ServiceRemoved(_, fullname) => {
                self.members.lock().unwrap().remove(&fullname);
            }
            _ => {}
        }
    }
}

impl Drop for LanDiscovery {
    fn drop(&mut self) {
        // Shutting down sends goodbyes for our announcement and ends the browser thread.
        if let Ok(done) = self.daemon.shutdown() {
            let _ = done.recv_timeout(Duration::from_secs(2));
        }
        if let Some(t) = self.browser.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_refusals() {
        let key = [0xab; 32];
        assert_eq!(unhex::<32>(&hex(&key)), Some(key));
        assert_eq!(unhex::<32>(&hex(&key)[..63]), None);
        assert_eq!(unhex::<2>("zz00"), None);
        assert_eq!(unhex::<2>("é0a"), None);
    }
}
