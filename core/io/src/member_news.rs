//! Member news on the paths (format and rules in `quicether_proto::member_news`). When a path to a peer
//! starts, each side sends everything it knows about its network (its own certificate, the members it
//! learned, the revocations it holds) on a unidirectional stream, then reads the peer's batches for as
//! long as the path lives. Whatever is new and verifies is reported to the daemon (which looks members up
//! and applies revocations) and passed on to every other peer, once. A certificate is new if its member
//! was not known or if it expires later than the one known: that is how a renewal (issued by the admin
//! node, `Node::tell_members`) reaches every member, the renewed member itself included.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use quicether_proto::certkey::membership_of_cert;
use quicether_proto::member_news::{decode, encode, Item, MAX_BATCH_LEN};
use quicether_proto::membership::{read_certificate, read_certificate_at_any_time, read_revocation, RevocationSet};

use crate::peer::{Event, Path, Peer, Shared};
use crate::tls::peer_certificate;

/// Members whose certificates a node keeps to tell others (bounded memory; the network's size limit).
pub const MAX_KNOWN_MEMBERS: usize = 1024;

/// What this node knows of its network beyond its own certificate.
#[derive(Default)]
pub struct NewsBook {
    /// This node's own membership certificate (told first).
    pub own: Option<Vec<u8>>,
    /// The latest expiry seen of a certificate of this node (its own, or a renewal told by a peer).
    own_seen: u64,
    /// Each member's latest certificate, with its expiry.
    certificates: HashMap<[u8; 32], (u64, Vec<u8>)>,
    revocations: Vec<Vec<u8>>,
    revoked: HashSet<[u8; 32]>,
    /// Items refused (bad signature, foreign, expired, malformed batch): counted, never passed on.
    pub refused: u64,
}

impl NewsBook {
    pub fn new(own: Option<Vec<u8>>) -> Self {
        Self { own, ..Default::default() }
    }

    fn items(&self) -> Vec<Item> {
        let certs =
            self.own.iter().chain(self.certificates.values().map(|(_, data)| data)).cloned().map(Item::Certificate);
        certs.chain(self.revocations.iter().cloned().map(Item::Revocation)).collect()
    }

    /// Members learned so far (not counting this node).
    pub fn members(&self) -> usize {
        self.certificates.len()
    }

    /// The latest certificate learned of member `key`: a renewal of the one it was admitted by.
    pub fn certificate(&self, key: &[u8; 32]) -> Option<&[u8]> {
        self.certificates.get(key).map(|(_, data)| data.as_slice())
    }

    /// Whether a certificate of this node expiring at `not_after` is later than any seen so far (and
    /// records it, so a renewal told by several peers is reported once).
    fn renews_own(&mut self, network_key: &[u8; 32], not_after: u64) -> bool {
        if self.own_seen == 0 {
            self.own_seen = self
                .own
                .as_deref()
                .and_then(|own| read_certificate_at_any_time(own, network_key, &RevocationSet::default()).ok())
                .map_or(0, |cert| cert.not_after);
        }
        let later = not_after > self.own_seen;
        self.own_seen = self.own_seen.max(not_after);
        later
    }

    /// Forgets revocations the daemon no longer holds (another network): what it holds now is told.
    /// Returns the revocations that are new here, to be told to every peer.
    pub fn set_revocations(&mut self, revocations: &[Vec<u8>], nodes: HashSet<[u8; 32]>) -> Vec<Item> {
        let fresh =
            revocations.iter().filter(|r| !self.revocations.contains(r)).cloned().map(Item::Revocation).collect();
        self.revocations = revocations.to_vec();
        self.certificates.retain(|k, _| !nodes.contains(k));
        self.revoked = nodes;
        fresh
    }
}

/// Verifies `items` against our network; records and reports what is new. Returns the new items.
pub fn learn(shared: &Shared, items: Vec<Item>) -> Vec<Item> {
    let now = crate::unix_time().as_secs();
    let mut fresh = Vec::new();
    let mut events = Vec::new();
    {
        let mut trust = shared.trust.write().unwrap();
        let Some(trust) = trust.as_mut() else { return fresh };
        let mut book = shared.news.lock().unwrap();
        for item in items {
            match &item {
                Item::Certificate(data) => match read_certificate(data, &trust.network_key, now, &trust.revocations) {
                    Ok(cert) if cert.node == shared.local_key => {
                        if book.renews_own(&trust.network_key, cert.not_after) {
                            events.push(Event::MembershipRenewed { certificate: data.clone() });
                            fresh.push(item);
                        }
                    }
                    Ok(cert) => match book.certificates.get(&cert.node) {
                        Some((not_after, _)) if *not_after >= cert.not_after => {}
                        known if known.is_some() || book.certificates.len() < MAX_KNOWN_MEMBERS => {
                            book.certificates.insert(cert.node, (cert.not_after, data.clone()));
                            events.push(Event::MemberLearned { key: cert.node, certificate: data.clone() });
                            fresh.push(item);
                        }
                        _ => book.refused += 1,
                    },
                    Err(_) => book.refused += 1,
                },
                Item::Revocation(data) => match read_revocation(data, &trust.network_key) {
                    Ok(rev) if book.revoked.contains(&rev.node) => {}
                    Ok(rev) => {
                        trust.revocations.insert(rev);
                        book.revoked.insert(rev.node);
                        book.revocations.push(data.clone());
                        book.certificates.remove(&rev.node);
                        events.push(Event::RevocationLearned { key: rev.node, revocation: data.clone() });
                        fresh.push(item);
                    }
                    Err(_) => book.refused += 1,
                },
            }
        }
    }
    for event in events {
        shared.emit(event);
    }
    fresh
}

async fn send(path: &Path, items: &[Item]) {
    let Ok(mut stream) = path.conn.open_uni().await else { return };
    if stream.write_all(&encode(items)).await.is_ok() {
        let _ = stream.finish();
    }
}

/// Passes `items` on to every peer but `from` (on its first path that is up). Call within the runtime.
pub fn pass_on(shared: &Arc<Shared>, from: Option<&[u8; 32]>, items: Vec<Item>) {
    let items = Arc::new(items);
    let peers: Vec<Arc<Peer>> =
        shared.table.read().unwrap().peers().filter(|p| Some(&p.key) != from).cloned().collect();
    for peer in peers {
        let path = peer.paths.read().unwrap().iter().find(|p| p.up.load(std::sync::atomic::Ordering::Relaxed)).cloned();
        if let Some(path) = path {
            let items = items.clone();
            tokio::spawn(async move { send(&path, &items).await });
        }
    }
}

/// Runs for the life of one path: learns the peer's own certificate from its handshake, tells it all we
/// know, then reads its news. Does nothing on a node in no network.
pub async fn exchange(shared: Arc<Shared>, peer: Arc<Peer>, path: Arc<Path>) {
    if shared.trust.read().unwrap().is_none() {
        return;
    }
    if let Some(data) = peer_certificate(&path.conn).as_deref().and_then(membership_of_cert) {
        let fresh = learn(&shared, vec![Item::Certificate(data.to_vec())]);
        if !fresh.is_empty() {
            pass_on(&shared, Some(&peer.key), fresh);
        }
    }
    let everything = shared.news.lock().unwrap().items();
    send(&path, &everything).await;
    while let Ok(mut stream) = path.conn.accept_uni().await {
        let data = stream.read_to_end(MAX_BATCH_LEN).await.ok();
        // Punch requests and offers share the path's unidirectional streams (`punch.rs`).
        if let Some(data) = data.as_deref().filter(|d| quicether_proto::punch::is_punch(d)) {
            crate::punch::received(&shared, &peer, &path, data);
            continue;
        }
        if data.as_deref() == Some(quicether_proto::relay::OFFER.as_slice()) {
            crate::relay::offered(&shared, &peer, true);
            continue;
        }
        if data.as_deref() == Some(quicether_proto::relay::WITHDRAW.as_slice()) {
            crate::relay::offered(&shared, &peer, false);
            continue;
        }
        let batch = data.and_then(|d| decode(&d).ok());
        let Some(items) = batch else {
            shared.news.lock().unwrap().refused += 1;
            continue;
        };
        let fresh = learn(&shared, items);
        if !fresh.is_empty() {
            pass_on(&shared, Some(&peer.key), fresh);
        }
    }
}
