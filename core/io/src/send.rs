//! Outbound packet path, in order: TUN read → peer by destination (allowed IPs) → traffic class → bond
//! sequence number + header → scheduler → QUIC DATAGRAM on the chosen path(s). A read error ends it with a
//! fatal `TunFailed` event.

use std::io::{self, Read};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use quicether_proto::allowed_ips::packet_addrs;
use quicether_proto::classify::mode_for;
use quicether_proto::frame::DATA_HEADER_LEN;
use quicether_proto::scheduler::{choose, Choice};
use tokio::io::Interest;

use crate::peer::{Event, Peer, Shared};

/// Bytes reserved per read; an inner packet is at most the TUN MTU.
const READ_BUFFER: usize = 65_536;

pub async fn tun_reader(shared: Arc<Shared>) {
    let mut buf = vec![0u8; READ_BUFFER];
    loop {
        // ERROR too: a deleted device reports only EPOLLERR, which would never wake a readable() wait.
        let n = match shared.tun.ready(Interest::READABLE | Interest::ERROR).await {
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
        let packet = &buf[..n];
        let Some((_, dst)) = packet_addrs(packet) else {
            continue;
        };
        let table = shared.table.read().unwrap();
        match table.route(dst) {
            Some(peer) => send_to_peer(peer, packet, shared.now_us()),
            None => {
                shared.no_route.fetch_add(1, Ordering::Relaxed);
            }
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
        let views: Vec<_> = paths.iter().map(|p| p.view()).collect();
        match choose(mode, &views, len) {
            // No path is up: try them all rather than drop; whichever still works carries it.
            Choice::Drop => Choice::Each((0..paths.len()).collect()),
            c => c,
        }
    };
    if matches!(choice, Choice::Drop | Choice::Congested) {
        // Dropped before taking a sequence number: the receiver sees no gap to wait for.
        peer.counters.tx_dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let seq = peer.next_seq.fetch_add(1, Ordering::Relaxed);
    let sent = match choice {
        Choice::One(i) => paths[i].send_data(seq, packet, now_us, &peer.resend),
        // Every copy must go out: count the sends, don't stop at the first success.
        Choice::Each(list) => {
            list.iter().filter(|&&i| paths[i].send_data(seq, packet, now_us, &peer.resend)).count() > 0
        }
        Choice::Drop | Choice::Congested => false,
    };
    if sent {
        crate::peer::Counters::count(&peer.counters.tx_packets, &peer.counters.tx_bytes, packet.len());
    } else {
        peer.counters.tx_dropped.fetch_add(1, Ordering::Relaxed);
    }
}
