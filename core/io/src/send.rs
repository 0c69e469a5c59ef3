//! Outbound packet path, in order: TUN read (with offloads: a super-packet split into inner-MTU packets,
//! checksums finished, `quicether_proto::offload`) → peer by destination (allowed IPs) → traffic class →
//! scheduler → bond sequence number + DATA frame (the peer's `BondSender`) → QUIC DATAGRAM on the chosen
//! path(s) → remembered by the sender if quinn took it. The packets of one read (a super-packet's
//! segments) pass each step together: one lookup, one look at the paths, one lock of the sender per step.
//! A read error ends it with a fatal `TunFailed` event. Resends come last: the frames the peer reports
//! lost (NACK, from `receive.rs`) and those a failed path sent lately (`timers.rs`, a removed WAN, a path
//! closed as a duplicate in `peer.rs`) go out on the path where each arrives first.

use std::io::{self, Read};
use std::net::IpAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use quicether_proto::allowed_ips::packet_addrs;
use quicether_proto::bond_send::Resend;
use quicether_proto::classify::mode_for;
use quicether_proto::frame::DATA_HEADER_LEN;
use quicether_proto::offload::{split, VnetHdr, F_NEEDS_CSUM, GSO_NONE};
use quicether_proto::scheduler::{choose, Batch, Choice, Mode, PathView};
use tokio::io::Interest;

use crate::peer::{Event, Path, Peer, Shared};
use crate::peers::PeerTable;

/// Bytes reserved per read: an inner packet, or with TSO a super-packet of at most 64 KB, after the
/// virtio-net header.
const READ_BUFFER: usize = 65_536 + quicether_proto::offload::VNET_HDR_LEN;

/// Paths of one peer whose scheduler views fit on the stack (more go to the heap).
const VIEWS_ON_STACK: usize = 8;

pub async fn tun_reader(shared: Arc<Shared>) {
    let mut buf = vec![0u8; READ_BUFFER];
    let header_len = shared.tun.header_len();
    // The packets of one read, back to back, and where each is (reused: no allocation per read).
    let (mut segments, mut lens) = (Vec::with_capacity(READ_BUFFER + 4096), Vec::new());
    let mut spans = Vec::new();
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
        spans.clear();
        if header_len == 0 {
            spans.push(0..n);
            route(&shared, &buf, &spans);
            continue;
        }
        let Some(hdr) = VnetHdr::parse(&buf[..n]) else { continue };
        if hdr.gso_type == GSO_NONE && hdr.flags & F_NEEDS_CSUM == 0 {
            spans.push(header_len..n);
            route(&shared, &buf, &spans);
            continue;
        }
        segments.clear();
        lens.clear();
        if split(&hdr, &mut buf[header_len..n], &mut segments, &mut lens).is_err() {
            shared.tun.unsplittable.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let mut at = 0;
        for &len in &lens {
            spans.push(at..at + len);
            at += len;
        }
        route(&shared, &segments, &spans);
    }
}

/// Sends the inner packets of one TUN read (`spans` of `bytes`, in order) to the peers their destinations
/// belong to (counted if none). A super-packet's segments share a destination: they go as one batch.
fn route(shared: &Shared, bytes: &[u8], spans: &[Range<usize>]) {
    let table = shared.table.read().unwrap();
    let now_us = shared.now_us();
    let mut run_start = 0;
    let mut run_dst = None;
    for (i, span) in spans.iter().enumerate() {
        let dst = packet_addrs(&bytes[span.clone()]).map(|(_, dst)| dst);
        if i > run_start && dst != run_dst {
            send_run(shared, &table, run_dst, bytes, &spans[run_start..i], now_us);
            run_start = i;
        }
        run_dst = dst;
    }
    if run_start < spans.len() {
        send_run(shared, &table, run_dst, bytes, &spans[run_start..], now_us);
    }
}

/// Packets to one destination `dst` (none: not IP, dropped uncounted) to the peer it belongs to.
fn send_run(
    shared: &Shared,
    table: &PeerTable,
    dst: Option<IpAddr>,
    bytes: &[u8],
    spans: &[Range<usize>],
    now_us: u64,
) {
    let Some(dst) = dst else { return };
    match table.route(dst) {
        Some(peer) => send_to_peer(peer, bytes, spans, now_us),
        None => {
            shared.no_route.fetch_add(spans.len() as u64, Ordering::Relaxed);
        }
    }
}

fn tun_failed(shared: &Shared, e: io::Error) {
    shared.emit(Event::TunFailed { error: format!("reading the TUN device failed: {e}") });
}

/// One packet's scheduling decision in a batch: the packet, and the paths (indices into the peer's paths)
/// to send it on. `Choice::Drop` here means the peer has no path at all: with paths that are all down it
/// becomes `Each` of them (see `plan`).
struct Planned {
    span: Range<usize>,
    choice: Choice,
}

/// Sends inner packets (`spans` of `bytes`) to `peer`, each as one bond sequence number on the path(s) the
/// scheduler chose for it. One look at the paths, one framing and one recording under the sender's lock
/// serve the whole batch; each frame is handed to quinn on its own (quinn takes one datagram per call).
fn send_to_peer(peer: &Peer, bytes: &[u8], spans: &[Range<usize>], now_us: u64) {
    let paths = peer.paths.read().unwrap();
    let plan = plan(peer, &paths, bytes, spans);
    // The batch's frames for each path in one allocation of its own: a frame waiting in a slow path's
    // queue keeps only that path's frames of the batch in memory, not the whole batch.
    let mut frame_bytes = vec![0; paths.len()];
    for planned in &plan {
        for &i in planned.choice.paths() {
            frame_bytes[i] += DATA_HEADER_LEN + planned.span.len();
        }
    }
    let mut frames: Vec<BytesMut> = frame_bytes.into_iter().map(BytesMut::with_capacity).collect();
    // (packet index in `plan`, path index, sequence number, frame for quinn, frame), in sending order.
    let mut framed = Vec::with_capacity(plan.len());
    {
        let mut sender = peer.sender.lock().unwrap();
        for (k, planned) in plan.iter().enumerate() {
            let targets = planned.choice.paths();
            // Dropped before taking a sequence number: the receiver sees no gap to wait for.
            if targets.is_empty() {
                continue;
            }
            let seq = sender.take_seq();
            let packet = &bytes[planned.span.clone()];
            for &i in targets {
                let frame = sender.frame_data_into(paths[i].id, seq, packet, &mut frames[i]);
                // quinn's clone taken here, not when handing it over: a path's frames share one reference
                // count, which quinn's driver thread decrements as it sends them, and counting all of the
                // batch's up before that starts measured faster (2893 against 2771 Mbit/s, one stream,
                // when a whole batch shared one buffer).
                framed.push((k, i, seq, frame.clone(), frame));
            }
        }
    }
    let last_seq = framed.last().map(|&(_, _, seq, _, _)| seq);
    // Whether quinn took at least one copy of each planned packet.
    let mut taken = vec![false; plan.len()];
    let mut sent = Vec::with_capacity(framed.len());
    for (k, i, seq, for_quinn, datagram) in framed {
        if paths[i].send_data(for_quinn) {
            taken[k] = true;
            sent.push((paths[i].id, seq, datagram));
        }
    }
    if let Some(last_seq) = last_seq {
        let mut sender = peer.sender.lock().unwrap();
        for (path, seq, datagram) in sent {
            sender.handle_sent(path, seq, datagram, now_us);
        }
        // Probes may now tell the peer that every path passed these numbers.
        sender.handed_over(last_seq.wrapping_add(1));
    }
    for (planned, taken) in plan.iter().zip(taken) {
        match planned.choice {
            Choice::Drop => drop_counted(peer, None),
            Choice::Congested => drop_counted(peer, Some(&peer.counters.tx_queue_full)),
            _ if taken => {
                crate::peer::Counters::count(&peer.counters.tx_packets, &peer.counters.tx_bytes, planned.span.len());
            }
            _ => drop_counted(peer, Some(&peer.counters.tx_refused)),
        }
    }
}

/// The scheduler's decision for each packet of a batch, from one snapshot of `paths` (`scheduler::Batch`).
fn plan(peer: &Peer, paths: &[Arc<Path>], bytes: &[u8], spans: &[Range<usize>]) -> Vec<Planned> {
    let planned = |span: &Range<usize>, choice| Planned { span: span.clone(), choice };
    if paths.is_empty() {
        return spans.iter().map(|span| planned(span, Choice::Drop)).collect();
    }
    // Even with one path the scheduler decides: its queue limit turns a queue the outer congestion
    // control cannot drain into drops the inner TCP reacts to, instead of ever-growing latency.
    // On the stack for the usual few paths.
    let mut on_stack = [PathView::default(); VIEWS_ON_STACK];
    let mut heap: Vec<PathView>;
    let views: &mut [PathView] = if paths.len() <= VIEWS_ON_STACK {
        for (view, path) in on_stack.iter_mut().zip(paths.iter()) {
            *view = path.view();
        }
        &mut on_stack[..paths.len()]
    } else {
        heap = paths.iter().map(|p| p.view()).collect();
        &mut heap
    };
    let mut batch = Batch::new(views);
    let policy = peer.policy.read().unwrap();
    spans
        .iter()
        .map(|span| {
            let packet = &bytes[span.clone()];
            let mode = mode_for(packet, &policy.rules, policy.bulk_mode, policy.realtime_mode);
            let choice = match batch.choose(mode, DATA_HEADER_LEN + packet.len()) {
                // No path is up: try them all rather than drop; whichever still works carries it.
                Choice::Drop => Choice::Each((0..paths.len()).collect()),
                choice => choice,
            };
            planned(span, choice)
        })
        .collect()
}

/// Counts an outbound packet dropped, and its cause (none: no path; `Peer::drops` tells it by elimination).
fn drop_counted(peer: &Peer, cause: Option<&AtomicU64>) {
    peer.counters.tx_dropped.fetch_add(1, Ordering::Relaxed);
    if let Some(counter) = cause {
        counter.fetch_add(1, Ordering::Relaxed);
    }
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
                Choice::One(i) if paths[i].send_data(datagram.clone()) => Some(paths[i].id),
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
