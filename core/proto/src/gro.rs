//! GRO for TUN writes, the reverse of `offload::split`: consecutive segments of one TCP flow, as the bond
//! releases them in order, are written to the TUN device as one super-packet behind a virtio-net header
//! (`GSO_TCPV4` / `GSO_TCPV6`, checksum left to the kernel with `NEEDS_CSUM`).
//!
//! Why: one TUN write (one system call, one trip up the kernel's stack) instead of up to `MAX_SEGMENTS`;
//! where the node forwards the flow on to a LAN host, the kernel segments it again at that egress, as it
//! does for a NIC's GRO. Only segments the kernel could have cut from one super-packet are merged: same
//! addresses, ports, ack, window, options and IP header bits; sequence numbers back to back; every segment
//! as long as the first but the last, which may be shorter; ACK with PSH on the last only; IPv4 with DF and
//! no options, IPv6 with no extension headers. Anything else is written as it is.

use std::ops::Range;

use crate::offload::{checksum, fold, pseudo_sum, VnetHdr, F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6};

/// Segments merged into one super-packet at most (a 64 KB super-packet holds ~45 full segments).
pub const MAX_SEGMENTS: usize = 64;
/// An IP packet's length field is 16 bits.
const MAX_IP_LEN: usize = 65_535;
const PROTO_TCP: u8 = 6;
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;

/// One write to the TUN device: packet `i` of the input as it is (with an all-zero header), or a
/// super-packet built in the output buffer at `range` from `segments` packets of the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    Packet(usize),
    Super { hdr: VnetHdr, range: Range<usize>, segments: usize },
}

/// A TCP segment that may be merged, and what merging needs of it.
#[derive(Clone, Copy)]
struct Segment<'a> {
    packet: &'a [u8],
    v4: bool,
    /// Where the TCP header starts, and where the payload does.
    l4: usize,
    hlen: usize,
    seq: u32,
    flags: u8,
}

impl Segment<'_> {
    fn payload(&self) -> usize {
        self.packet.len() - self.hlen
    }
}

fn segment(p: &[u8]) -> Option<Segment<'_>> {
    let u16_at = |i: usize| usize::from(u16::from_be_bytes([p[i], p[i + 1]]));
    let (v4, l4) = match p.first()? >> 4 {
        4 if p.len() >= 20 => {
            let fragment = u16_at(6);
            // No options, the whole packet, TCP; DF set and not a fragment (the IDs of merged segments are then
            // of no consequence: the kernel numbers the segments it cuts again).
            let plain = p[0] == 0x45 && u16_at(2) == p.len() && p[9] == PROTO_TCP;
            (plain && fragment == 0x4000).then_some((true, 20))?
        }
        6 if p.len() >= 40 => (p[6] == PROTO_TCP && u16_at(4) + 40 == p.len()).then_some((false, 40))?,
        _ => return None,
    };
    let hlen = l4 + usize::from(*p.get(l4 + 12)? >> 4) * 4;
    let flags = *p.get(l4 + 13)?;
    // A payload (pure ACKs go as they are), a TCP header of at least 20 bytes, ACK and maybe PSH only (SYN,
    // FIN, RST, URG, ECE and CWR go alone).
    if hlen < l4 + 20 || hlen >= p.len() || flags & !TCP_PSH != TCP_ACK {
        return None;
    }
    let seq = u32::from_be_bytes(p[l4 + 4..l4 + 8].try_into().ok()?);
    Some(Segment { packet: p, v4, l4, hlen, seq, flags })
}

/// Whether every header field of `a` and `b` is the same but those that differ between the segments of one
/// super-packet: IP length, ID and checksum; TCP sequence number, flags and checksum.
fn same_headers(a: &Segment, b: &Segment) -> bool {
    let (p, q) = (a.packet, b.packet);
    if a.v4 != b.v4 || a.hlen != b.hlen {
        return false;
    }
    let ip = if a.v4 {
        p[..2] == q[..2] && p[6..10] == q[6..10] && p[12..20] == q[12..20]
    } else {
        p[..4] == q[..4] && p[6..40] == q[6..40]
    };
    let l4 = a.l4;
    ip && p[l4..l4 + 4] == q[l4..l4 + 4]
        && p[l4 + 8..l4 + 13] == q[l4 + 8..l4 + 13]
        && p[l4 + 14..l4 + 16] == q[l4 + 14..l4 + 16]
        && p[l4 + 18..a.hlen] == q[l4 + 18..a.hlen]
}

/// Whether `next` can follow a super-packet that starts with `first`, ends with `last` and is `len` long.
fn follows(first: &Segment, last: &Segment, next: &Segment, len: usize) -> bool {
    last.flags & TCP_PSH == 0
        && last.payload() == first.payload()
        && next.payload() <= first.payload()
        && next.seq == last.seq.wrapping_add(last.payload() as u32)
        && len + next.payload() <= MAX_IP_LEN
        && same_headers(first, next)
}

/// The writes for `packets`, in their order: runs of segments that can be merged become super-packets,
/// built in `out` (appended); the rest go as they are.
pub fn coalesce<P: AsRef<[u8]>>(packets: &[P], out: &mut Vec<u8>, writes: &mut Vec<Write>) {
    let mut i = 0;
    while i < packets.len() {
        let Some(first) = segment(packets[i].as_ref()) else {
            writes.push(Write::Packet(i));
            i += 1;
            continue;
        };
        let (mut last, mut len, mut end) = (first, first.packet.len(), i + 1);
        while end < packets.len() && end - i < MAX_SEGMENTS {
            match segment(packets[end].as_ref()) {
                Some(next) if follows(&first, &last, &next, len) => {
                    len += next.payload();
                    last = next;
                    end += 1;
                }
                _ => break,
            }
        }
        if end == i + 1 {
            writes.push(Write::Packet(i));
        } else {
            writes.push(build(packets[i..end].iter().map(AsRef::as_ref), &first, last.flags, out));
        }
        i = end;
    }
}

/// One super-packet of `segments` (mergeable, `first` the first of them) appended to `out`.
fn build<'a>(segments: impl Iterator<Item = &'a [u8]>, first: &Segment, last_flags: u8, out: &mut Vec<u8>) -> Write {
    let start = out.len();
    let mut count = 0;
    out.extend_from_slice(&first.packet[..first.hlen]);
    for s in segments {
        out.extend_from_slice(&s[first.hlen..]);
        count += 1;
    }
    let p = &mut out[start..];
    let (len, l4) = (p.len(), first.l4);
    p[l4 + 13] |= last_flags & TCP_PSH;
    if first.v4 {
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[10..12].copy_from_slice(&[0, 0]);
        let c = checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
    } else {
        p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
    }
    // NEEDS_CSUM: the field holds the pseudo-header sum; the kernel finishes it (or trusts it, delivering).
    let partial = fold(pseudo_sum(p, PROTO_TCP, len - l4));
    p[l4 + 16..l4 + 18].copy_from_slice(&partial.to_be_bytes());
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: if first.v4 { GSO_TCPV4 } else { GSO_TCPV6 },
        hdr_len: first.hlen as u16,
        gso_size: first.payload() as u16,
        csum_start: l4 as u16,
        csum_offset: 16,
    };
    Write::Super { hdr, range: start..start + len, segments: count }
}

#[cfg(test)]
#[path = "gro_tests.rs"]
mod tests;
