//! Inbound packet path, in order: QUIC DATAGRAMs on a path (`path_reader`, all those already queued at
//! once) → the peer's bond receiver (`quicether_proto::bond`: frame dispatch, reordering, NACK and probe
//! decisions) → what it decides is done here: probe replies on the same path, NACKs on the fastest path,
//! probe replies fed to path health, retransmissions by the sending half, released packets → source check
//! → runs of one TCP flow's segments merged (`quicether_proto::gro`) → TUN write. `reorder_timer` sleeps
//! until the receiver's next deadline (gaps that time out), and re-derives the timeouts from the paths'
//! RTTs.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use quicether_proto::allowed_ips::packet_addrs;
use quicether_proto::bond::Output;
use quicether_proto::gro::{coalesce, Write};
use quicether_proto::health::PathState;
use quicether_proto::offload::VnetHdr;

use crate::events::UpReason;
use crate::peer::{Counters, Event, Path, Peer, Shared};

/// How often the reorder timeout is re-derived from the paths' RTTs (and the learned timeout decays).
const REORDER_RETUNE: Duration = Duration::from_millis(100);
/// Datagrams a path reader takes at once when more are already queued: one bond lock and one delivery for
/// all of them, so the TUN gets runs of a flow's segments to merge.
const READ_BATCH: usize = 32;

/// The output of `future` if it is ready at its first poll (nothing is waited for).
fn ready_now<F: Future>(future: F) -> Option<F::Output> {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

pub async fn path_reader(shared: Arc<Shared>, peer_arc: Arc<Peer>, path: Arc<Path>) {
    let peer = &*peer_arc;
    let mut ready = Vec::new();
    let mut outputs = Vec::new();
    let mut batch = Vec::with_capacity(READ_BATCH);
    let reason = loop {
        let datagram = match path.conn.read_datagram().await {
            Ok(d) => d,
            Err(e) => break crate::connect::net_text(e),
        };
        // Taken before the lock: a probe reply's arrival time must not include waiting for it.
        let now = shared.now_us();
        batch.push(datagram);
        // An error here (the connection ended) comes again at the next read, which ends the loop.
        while batch.len() < READ_BATCH {
            match ready_now(path.conn.read_datagram()) {
                Some(Ok(d)) => batch.push(d),
                _ => break,
            }
        }
        batch.retain(|datagram| {
            Counters::count(&path.counters.rx_packets, &path.counters.rx_bytes, datagram.len());
            // Another member's QUIC packets through us as relay, or to us through a relay (`relay.rs`).
            let relayed = quicether_proto::relay::is_relay(datagram);
            if relayed {
                crate::relay::received(&shared, &peer_arc, &path, datagram.clone());
            }
            !relayed
        });
        if batch.is_empty() {
            continue;
        }
        let turn = {
            let mut bond = peer.bond.lock().unwrap();
            for datagram in batch.drain(..) {
                bond.handle_datagram(path.id, datagram, now);
            }
            if bond.timeout_moved_earlier() {
                peer.reorder_wake.notify_one();
            }
            take_outputs(&mut bond, &mut ready, &mut outputs);
            delivery_turn(peer, &ready)
        };
        for output in outputs.drain(..) {
            act(&shared, peer, Some(&path), output, now);
        }
        deliver_ready(&shared, peer, &mut ready, turn);
    };
    peer.bond.lock().unwrap().handle_path_closed(path.id);
    shared.remove_path(peer, &path, reason);
    // After the removal: no packet is framed for it any more (the TUN reader frames under the paths lock).
    peer.sender.lock().unwrap().handle_path_closed(path.id);
}

/// Runs until the peer is removed (the node also aborts it then; the flag covers a removal between wakes).
/// Sleeps until the bond receiver's next deadline, or until a path reader says it moved earlier, and at
/// least every `REORDER_RETUNE` to retune.
pub async fn reorder_timer(shared: Arc<Shared>, peer: Arc<Peer>) {
    let peer = &*peer;
    let mut ready = Vec::new();
    let mut outputs = Vec::new();
    let mut last_retune = std::time::Instant::now();
    let mut deadline_us: Option<u64> = None;
    while !peer.removed.load(Ordering::Relaxed) {
        let retune_at = last_retune + REORDER_RETUNE;
        let wake_at = deadline_us.map_or(retune_at, |d| retune_at.min(shared.epoch + Duration::from_micros(d)));
        let _ = tokio::time::timeout_at(wake_at.into(), peer.reorder_wake.notified()).await;
        let retune = last_retune.elapsed() >= REORDER_RETUNE;
        let rtts: Vec<u64> = if retune {
            last_retune = std::time::Instant::now();
            peer.paths
                .read()
                .unwrap()
                .iter()
                .filter(|p| p.up.load(Ordering::Relaxed))
                .map(|p| p.srtt_us.load(Ordering::Relaxed))
                .collect()
        } else {
            Vec::new()
        };
        let now = shared.now_us();
        let turn = {
            let mut bond = peer.bond.lock().unwrap();
            if retune {
                bond.set_path_rtts(&rtts);
            }
            bond.handle_timeout(now);
            take_outputs(&mut bond, &mut ready, &mut outputs);
            deadline_us = bond.poll_timeout();
            delivery_turn(peer, &ready)
        };
        for output in outputs.drain(..) {
            act(&shared, peer, None, output, now);
        }
        deliver_ready(&shared, peer, &mut ready, turn);
    }
}

/// Moves what the bond receiver released and decided out of it (call with its lock held).
fn take_outputs(bond: &mut quicether_proto::bond::BondReceiver, ready: &mut Vec<Bytes>, outputs: &mut Vec<Output>) {
    bond.take_delivered(ready);
    outputs.extend(std::iter::from_fn(|| bond.poll_output()));
}

/// Carries out one decision of the bond receiver. `reader`: the path whose datagram led to it, if any (the
/// path a probe reply goes back on, found without a lookup).
fn act(shared: &Shared, peer: &Peer, reader: Option<&Arc<Path>>, output: Output, now_us: u64) {
    match output {
        Output::ProbeReply { path, frame } => {
            if let Some(path) = path_by_id(peer, reader, path) {
                let _ = path.conn.send_datagram(frame);
            }
        }
        Output::SendNacks(frames) => send_nacks(peer, frames),
        Output::ProbeAnswered { path, id } => {
            let Some(path) = path_by_id(peer, reader, path) else { return };
            let change = path.health.lock().unwrap().handle_reply(id, now_us);
            if change == Some(PathState::Up) {
                path.up.store(true, Ordering::Relaxed);
                shared.emit(Event::PathUp {
                    key: peer.key,
                    route: path.route.clone(),
                    remote: path.conn.remote_address(),
                    reason: UpReason::Recovered,
                });
            }
        }
        Output::Retransmit(seqs) => {
            peer.retransmit(&seqs, shared.now_us());
        }
    }
}

/// The path with id `id`: the reader's own (always, for what a path's datagram leads to), else looked up.
fn path_by_id(peer: &Peer, reader: Option<&Arc<Path>>, id: u64) -> Option<Arc<Path>> {
    match reader {
        Some(path) if path.id == id => Some(path.clone()),
        _ => peer.paths.read().unwrap().iter().find(|p| p.id == id).cloned(),
    }
}

/// Asks the peer to resend lost DATA frames, over the fastest path.
fn send_nacks(peer: &Peer, frames: Vec<Vec<u8>>) {
    if let Some(path) = peer.fastest_path() {
        for frame in frames {
            let _ = path.conn.send_datagram(Bytes::from(frame));
        }
    }
}

/// The peer's delivery turn, if the receiver released anything. Call it with the bond lock held: whoever
/// releases later gets the turn later, so releases reach the TUN in sequence order.
fn delivery_turn<'a>(peer: &'a Peer, ready: &[Bytes]) -> Option<MutexGuard<'a, ()>> {
    (!ready.is_empty()).then(|| peer.delivery.lock().unwrap())
}

/// Delivers, in order, what the bond receiver released (called with its lock released, holding `turn`):
/// the packets whose source is the peer's to use, runs of one TCP flow's segments merged into one write
/// where the TUN device takes super-packets.
fn deliver_ready(shared: &Shared, peer: &Peer, ready: &mut Vec<Bytes>, turn: Option<MutexGuard<'_, ()>>) {
    if ready.is_empty() {
        return;
    }
    let c = &peer.counters;
    {
        let table = shared.table.read().unwrap();
        ready.retain(|packet| {
            let allowed = packet_addrs(packet).is_some_and(|(src, _)| table.allows(&peer.key, src));
            if !allowed {
                c.rx_dropped.fetch_add(1, Ordering::Relaxed);
            }
            allowed
        });
    }
    let written = |packets: &[Bytes], ok: bool| {
        for packet in packets {
            if ok {
                Counters::count(&c.rx_packets, &c.rx_bytes, packet.len());
            } else {
                c.rx_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    if ready.len() > 1 && shared.tun.takes_super_packets() && crate::debug::tun_gro() {
        let (mut merged, mut writes) = (Vec::new(), Vec::new());
        coalesce(ready, &mut merged, &mut writes);
        let mut next = 0;
        for write in writes {
            let (hdr, packet, count) = match write {
                Write::Packet(i) => (VnetHdr::default(), &ready[i][..], 1),
                Write::Super { hdr, range, segments } => (hdr, &merged[range], segments),
            };
            written(&ready[next..next + count], shared.tun.write(&hdr, packet));
            next += count;
        }
    } else {
        for packet in ready.iter() {
            written(std::slice::from_ref(packet), shared.tun.write(&VnetHdr::default(), packet));
        }
    }
    ready.clear();
    drop(turn);
}
