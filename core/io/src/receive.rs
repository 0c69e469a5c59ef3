//! Inbound packet path, in order: QUIC DATAGRAM on a path (`path_reader`) → frame type → probes answered
//! on the same path / data into the peer's reorder buffer → source check → TUN write. `reorder_timer`
//! releases packets held behind a gap that timed out, and re-derives the timeout from the paths' RTTs.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use quicether_proto::allowed_ips::packet_addrs;
use quicether_proto::frame::{encode_nacks, encode_probe_reply, parse, Frame, DATA_HEADER_LEN};
use quicether_proto::health::PathState;
use quicether_proto::reorder::{retransmit_wait_for_rtts_us, timeout_for_rtts_us};

use crate::events::UpReason;
use crate::peer::{Counters, Event, Path, Peer, Shared};
use crate::peers::PeerTable;

/// How often the reorder timeout is re-derived from the paths' RTTs.
const REORDER_RETUNE: Duration = Duration::from_millis(100);
/// Granularity of gap timeouts while packets are held (a timer per packet would cost more than it saves).
const REORDER_TICK: Duration = Duration::from_millis(1);

pub async fn path_reader(shared: Arc<Shared>, peer: Arc<Peer>, path: Arc<Path>) {
    let peer = &*peer;
    let mut ready = Vec::new();
    let reason = loop {
        let datagram = match path.conn.read_datagram().await {
            Ok(d) => d,
            Err(e) => break crate::connect::net_text(e),
        };
        Counters::count(&path.counters.rx_packets, &path.counters.rx_bytes, datagram.len());
        match parse(&datagram) {
            Some(Frame::Data { seq, prev_on_path, .. }) => {
                let (held, nacks, turn) = {
                    let mut buffer = peer.reorder.lock().unwrap();
                    let was_empty = buffer.held() == 0;
                    let packet = datagram.slice(DATA_HEADER_LEN..);
                    buffer.push_from(path.id, seq, prev_on_path, packet, shared.now_us(), &mut ready);
                    (was_empty && buffer.held() > 0, buffer.take_nacks(), delivery_turn(peer, &ready))
                };
                if held {
                    peer.reorder_wake.notify_one();
                }
                send_nacks(peer, &nacks);
                deliver_ready(&shared, peer, &mut ready, turn);
            }
            Some(Frame::Probe { id, next_seq }) => {
                let _ = path.conn.send_datagram(Bytes::copy_from_slice(&encode_probe_reply(id)));
                let mut buffer = peer.reorder.lock().unwrap();
                buffer.mark_passed(path.id, next_seq.wrapping_sub(1), shared.now_us(), &mut ready);
                let nacks = buffer.take_nacks();
                let turn = delivery_turn(peer, &ready);
                drop(buffer);
                send_nacks(peer, &nacks);
                deliver_ready(&shared, peer, &mut ready, turn);
            }
            Some(Frame::ProbeReply { id }) => {
                let change = path.health.lock().unwrap().handle_reply(id, shared.now_us());
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
            Some(Frame::Nack { seqs }) => {
                peer.retransmit(&seqs, shared.now_us());
            }
            None => {
                peer.counters.rx_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    peer.reorder.lock().unwrap().forget_path(path.id);
    shared.remove_path(peer, &path, reason);
}

/// Runs until the peer is removed (the node also aborts it then; the flag covers a removal between ticks).
pub async fn reorder_timer(shared: Arc<Shared>, peer: Arc<Peer>) {
    let peer = &*peer;
    let mut ready = Vec::new();
    let mut last_retune = std::time::Instant::now();
    while !peer.removed.load(Ordering::Relaxed) {
        let holding = peer.reorder.lock().unwrap().held() > 0;
        if holding {
            tokio::time::sleep(REORDER_TICK).await;
        } else {
            // Nothing held: sleep until a gap appears, waking now and then to retune the timeout.
            let _ = tokio::time::timeout(REORDER_RETUNE, peer.reorder_wake.notified()).await;
        }
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
        let turn = {
            let mut buffer = peer.reorder.lock().unwrap();
            if retune {
                buffer.set_timeout_us(timeout_for_rtts_us(&rtts));
                buffer.set_retransmit_wait_us(retransmit_wait_for_rtts_us(&rtts));
            }
            buffer.poll(shared.now_us(), &mut ready);
            delivery_turn(peer, &ready)
        };
        deliver_ready(&shared, peer, &mut ready, turn);
    }
}

/// Asks the peer to resend lost DATA frames, over the fastest path.
fn send_nacks(peer: &Peer, seqs: &[u64]) {
    if seqs.is_empty() {
        return;
    }
    if let Some(path) = peer.fastest_path() {
        for frame in encode_nacks(seqs) {
            let _ = path.conn.send_datagram(Bytes::from(frame));
        }
    }
}

/// The peer's delivery turn, if the buffer released anything. Call it with the reorder lock held: whoever
/// releases later gets the turn later, so releases reach the TUN in sequence order.
fn delivery_turn<'a>(peer: &'a Peer, ready: &[Bytes]) -> Option<MutexGuard<'a, ()>> {
    (!ready.is_empty()).then(|| peer.delivery.lock().unwrap())
}

/// Delivers, in order, what the reorder buffer released (called with its lock released, holding `turn`).
fn deliver_ready(shared: &Shared, peer: &Peer, ready: &mut Vec<Bytes>, turn: Option<MutexGuard<'_, ()>>) {
    if ready.is_empty() {
        return;
    }
    let table = shared.table.read().unwrap();
    for packet in ready.drain(..) {
        deliver(shared, &table, peer, &packet);
    }
    drop(table);
    drop(turn);
}

/// Writes one inner packet from `peer` to the TUN device if its source is the peer's to use.
fn deliver(shared: &Shared, table: &PeerTable, peer: &Peer, packet: &[u8]) {
    let allowed = packet_addrs(packet).is_some_and(|(src, _)| table.allows(&peer.key, src));
    // SAFETY: writing a valid buffer to the TUN fd; EAGAIN/failure drops this packet only.
    let written = allowed
        && unsafe { libc::write(shared.tun.as_raw_fd(), packet.as_ptr().cast(), packet.len()) }
            == packet.len() as isize;
    let c = &peer.counters;
    if written {
        Counters::count(&c.rx_packets, &c.rx_bytes, packet.len());
    } else {
        c.rx_dropped.fetch_add(1, Ordering::Relaxed);
    }
}
