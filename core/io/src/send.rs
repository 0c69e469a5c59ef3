//! Outbound packet path, in order: TUN read (with offloads: a super-packet split into inner-MTU packets,
//! checksums finished, `quicether_proto::offload`) → peer by destination (allowed IPs) → traffic class →
//! scheduler → bond sequence number + DATA frame (the peer's `BondSender`) → QUIC DATAGRAM on the chosen
//! path(s) → remembered by the sender if quinn took it. A read error ends it with a fatal `TunFailed`
//! event. Resends come last: the frames the peer reports lost (NACK, from `receive.rs`) and those a failed
//! path sent lately (`timers.rs`, a removed WAN, a path closed as a duplicate in `peer.rs`) go out on the
//! path where each arrives first.

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use quicether_proto::allowed_ips::packet_addrs;
use quicether_proto::bond_send::Resend;
use quicether_proto::classify::mode_for;
use quicether_proto::frame::DATA_HEADER_LEN;
use quicether_proto::offload::{split, VnetHdr, F_NEEDS_CSUM, GSO_NONE};
use quicether_proto::scheduler::{choose, Choice, Mode, PathView};
use tokio::io::Interest;

use crate::peer::{Event, Path, Peer, Shared};

/// Bytes reserved per read: an inner packet, or with TSO a super-packet of at most 64 KB, after the
/// virtio-net header.
const READ_BUFFER: usize = 65_536 + quicether_proto::offload::VNET_HDR_LEN;

/// Paths of one peer whose scheduler views fit on the stack (more go to the heap).
const VIEWS_ON_STACK: usize = 8;

pub async fn tun_reader(shared: Arc<Shared>) {
    let mut buf = vec![0u8; READ_BUFFER];
    let header_len = shared.tun.header_len();
    // The segments of one super-packet, back to back, and their lengths (reused: no allocation per read).
    let (mut segments, mut lens) = (Vec::with_capacity(READ_BUFFER + 4096), Vec::new());
    loop {
        // ERROR too: a deleted device reports only EPOLLERR, which would never wake a readable() wait.
        let n = match shared.tun.fd.ready(Interest::READABLE | Interest::ERROR).await {
            Ok(mut guard) => match guard.try_io(|fd| fd.get_ref().read(&mut buf)) {
                Ok(Ok(n)) => n,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A stopping node cancels this task before it closes the device, so an error here is a
                // real failure (the device deleted under us, say): nothing leaves the node any more.
                Ok(Err(e)) => return tun_failed(&shared, e),
                Err(_would_block) => continue,
            },
            Err(e) => return tun_failed(&shared, e),
        };
        if header_len == 0 {
            route(&shared, &buf[..n]);
            continue;
        }
        let Some(hdr) = VnetHdr::parse(&buf[..n]) else { continue };
        let packet = &mut buf[header_len..n];
        if hdr.gso_type == GSO_NONE && hdr.flags & F_NEEDS_CSUM == 0 {
            route(&shared, packet);
            continue;
        }
        segments.clear();
        lens.clear();
        if split(&hdr, packet, &mut segments, &mut lens).is_err() {
            shared.tun.unsplittable.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let mut at = 0;
        for &len in &lens {
            route(&shared, &segments[at..at + len]);
            at += len;
        }
    }
}

/// Sends one inner packet to the peer its destination belongs to (counted if none).
fn route(shared: &Shared, packet: &[u8]) {
    let Some((_, dst)) = packet_addrs(packet) else {
        return;
    };
    let table = shared.table.read().unwrap();
    match table.route(dst) {
        Some(peer) => send_to_peer(peer, packet, shared.now_us()),
        None => {
            shared.no_route.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn tun_failed(shared: &Shared, e: io::Error) {
    shared.emit(Event::TunFailed { error: format!("reading the TUN device failed: {e}") });
}

fn send_to_peer(peer: &Peer, packet: &[u8], now_us: u64) {
    let paths = peer.paths.read().unwrap();
    let len = DATA_HEADER_LEN + packet.len();
    // Even with one path the scheduler decides: its queue limit turns a queue the outer congestion
    // control cannot drain into drops the inner TCP reacts to, instead of ever-growing latency.
    let choice = if paths.is_empty() {
        Choice::Drop
    } else {
        let mode = {
            let policy = peer.policy.read().unwrap();
            mode_for(packet, &policy.rules, policy.bulk_mode, policy.realtime_mode)
        };
        // On the stack for the usual few paths: this runs for every packet (a Vec here showed in profiles).
        let mut on_stack = [PathView::default(); VIEWS_ON_STACK];
        let heap: Vec<PathView>;
        let views: &[PathView] = if paths.len() <= VIEWS_ON_STACK {
            for (view, path) in on_stack.iter_mut().zip(paths.iter()) {
                *view = path.view();
            }
            &on_stack[..paths.len()]
        } else {
            heap = paths.iter().map(|p| p.view()).collect();
            &heap
        };
        match choose(mode, views, len) {
            // No path is up: try them all rather than drop; whichever still works carries it.
            Choice::Drop => Choice::Each((0..paths.len()).collect()),
            c => c,
        }
    };
    let targets = match &choice {
        Choice::One(i) => std::slice::from_ref(i),
        Choice::Each(list) => &list[..],
        // Dropped before taking a sequence number: the receiver sees no gap to wait for.
        Choice::Drop => return drop_counted(peer, None),
        Choice::Congested => return drop_counted(peer, Some(&peer.counters.tx_queue_full)),
    };
    if send_data(peer, &paths, targets, packet, now_us) {
        crate::peer::Counters::count(&peer.counters.tx_packets, &peer.counters.tx_bytes, packet.len());
    } else {
        drop_counted(peer, Some(&peer.counters.tx_refused));
    }
}

/// Counts an outbound packet dropped, and its cause (none: no path; `Peer::drops` tells it by elimination).
fn drop_counted(peer: &Peer, cause: Option<&AtomicU64>) {
    peer.counters.tx_dropped.fetch_add(1, Ordering::Relaxed);
    if let Some(counter) = cause {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Sends inner `packet` as one bond sequence number on `paths[i]` for each `i` in `targets` (several:
/// redundant mode, every copy must go out: all are tried). True if quinn took at least one copy.
fn send_data(peer: &Peer, paths: &[Arc<Path>], targets: &[usize], packet: &[u8], now_us: u64) -> bool {
    let Some((&first_target, others)) = targets.split_first() else { return false };
    let (seq, first, copies) = {
        let mut sender = peer.sender.lock().unwrap();
        let seq = sender.take_seq();
        let first = sender.frame_data(paths[first_target].id, seq, packet);
        // Empty in the usual single-path case: no allocation.
        let copies: Vec<_> = others.iter().map(|&i| sender.frame_data(paths[i].id, seq, packet)).collect();
        (seq, first, copies)
    };
    let mut sent = false;
    for (&i, datagram) in targets.iter().zip(std::iter::once(first).chain(copies)) {
        if paths[i].send_data(&datagram) {
            peer.sender.lock().unwrap().handle_sent(paths[i].id, seq, datagram, now_us);
            sent = true;
        }
    }
    sent
}

impl Peer {
    /// Resends the DATA frames the peer reported lost (`bond::Output::Retransmit`), from what the sender
    /// remembers, on the path where each arrives first: the fastest path by RTT may have the longest queue,
    /// and a repair that comes after the receiver stopped waiting for it is one more loss for the inner TCP.
    pub fn retransmit(&self, seqs: &[u64], now_us: u64) -> usize {
        let resends = self.sender.lock().unwrap().handle_nacks(seqs);
        let resent = self.resend_on_earliest(resends, None, now_us);
        self.counters.retransmitted.fetch_add(resent as u64, Ordering::Relaxed);
        resent
    }

    /// Resends what path `failed` (its id) sent in its last `window_us` on the other usable paths (earliest
    /// arrival first). Call it when a path is found down or its WAN is removed (before closing it), or is
    /// closed as a duplicate.
    pub fn resend_from_failed(&self, failed: u64, window_us: u64, now_us: u64) -> usize {
        let resends = self.sender.lock().unwrap().handle_path_failed(failed, window_us, now_us);
        self.resend_on_earliest(resends, Some(failed), now_us)
    }

    /// Sends each resend on the usable path where it would arrive first (never on path `exclude`), and has
    /// the sender remember those quinn took. Skipped if every queue is full or no path is up (a frame of
    /// failed path `exclude` is then remembered as its again). How many went.
    fn resend_on_earliest(&self, resends: Vec<Resend>, exclude: Option<u64>, now_us: u64) -> usize {
        if resends.is_empty() {
            return 0;
        }
        let paths = self.paths.read().unwrap();
        let mut resent = 0;
        for resend in resends {
            let seq = resend.seq;
            let datagram = resend.into_datagram();
            // Views again for each one: the queues grow with every resend.
            let views: Vec<_> =
                paths.iter().map(|p| if Some(p.id) == exclude { PathView::default() } else { p.view() }).collect();
            let carrier = match choose(Mode::Aggregate, &views, datagram.len()) {
                Choice::One(i) if paths[i].send_data(&datagram) => Some(paths[i].id),
                _ => None,
            };
            match (carrier, exclude) {
                (Some(id), _) => {
                    self.sender.lock().unwrap().handle_sent(id, seq, datagram, now_us);
                    resent += 1;
                }
                // Every queue is full (or no path is up): a failed path's frame stays remembered as its, for
                // a NACK to find later. A NACK's frame is still remembered where it was.
                (None, Some(failed)) => self.sender.lock().unwrap().handle_sent(failed, seq, datagram, now_us),
                (None, None) => {}
            }
        }
        resent
    }
}
