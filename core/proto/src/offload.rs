//! TUN offloads: the virtio-net header a TUN device opened with `IFF_VNET_HDR` puts in front of every
//! packet, splitting the TCP/UDP super-packets (GSO) the kernel hands over when TSO/USO is enabled into
//! packets of at most the inner MTU, and finishing the checksums it left to us (`NEEDS_CSUM`).
//!
//! Why: one TUN read of up to 64 KB instead of ~45 reads of one MTU each, and the inner TCP sender's
//! kernel builds one large segment instead of many. The segments are exactly what the kernel's own GSO
//! would have sent (same headers, sequence numbers, IPv4 IDs, checksums), so the peer needs nothing new.
//!
//! Header layout (`struct virtio_net_hdr`, little-endian on the hosts we run on, 10 bytes):
//! `flags u8, gso_type u8, hdr_len u16, gso_size u16, csum_start u16, csum_offset u16`.

/// Length of `struct virtio_net_hdr` (no `num_buffers`: we do not set `TUNSETVNETHDRSZ`).
pub const VNET_HDR_LEN: usize = 10;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the L4 checksum is partial (pseudo-header sum only), to be finished.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_*` values.
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
/// Set with a TCP GSO type: the segments carry ECN (CWR goes on the first one only).
pub const GSO_ECN: u8 = 0x80;

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// A parsed virtio-net header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let b: &[u8; VNET_HDR_LEN] = b.get(..VNET_HDR_LEN)?.try_into().ok()?;
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    pub fn encode(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }
}

/// Why a packet read from the TUN could not be turned into plain packets (it is dropped, and counted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitError {
    /// Header fields that do not fit the packet (offsets past its end, a segment size of 0...).
    Malformed,
    /// A GSO type or header layout we do not segment (IPv6 extension headers, legacy UFO).
    Unsupported,
}

/// The one's-complement sum of `data` (RFC 1071) added to `initial`, not folded.
pub fn sum(data: &[u8], initial: u64) -> u64 {
    let mut acc = initial;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        // Adding 32-bit halves into a 64-bit accumulator cannot overflow for any packet we handle.
        let v = u64::from_be_bytes(c.try_into().expect("8 bytes"));
        acc += (v >> 32) + (v & 0xffff_ffff);
    }
    let rest = chunks.remainder();
    let mut pairs = rest.chunks_exact(2);
    for p in &mut pairs {
        acc += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [last] = pairs.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds a sum to 16 bits (not complemented).
pub fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The Internet checksum of `data` as it goes in a header field.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data, 0))
}

/// Sum of the TCP/UDP pseudo-header of `packet` (an IPv4 or IPv6 packet) for `l4_len` bytes of `proto`.
pub(crate) fn pseudo_sum(packet: &[u8], proto: u8, l4_len: usize) -> u64 {
    let addrs = if packet[0] >> 4 == 4 { &packet[12..20] } else { &packet[8..40] };
    sum(addrs, u64::from(proto) + l4_len as u64)
}

/// Where the L4 header starts and which protocol it is, for a packet whose IP header we accept for
/// segmentation: IPv4 (any options) or IPv6 without extension headers.
fn l4_of(packet: &[u8]) -> Result<(usize, u8), SplitError> {
    match packet.first().map(|b| b >> 4) {
        Some(4) if packet.len() >= 20 => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            if ihl < 20 || packet.len() < ihl {
                return Err(SplitError::Malformed);
            }
            Ok((ihl, packet[9]))
        }
        Some(6) if packet.len() >= 40 => match packet[6] {
            PROTO_TCP | PROTO_UDP => Ok((40, packet[6])),
            _ => Err(SplitError::Unsupported),
        },
        _ => Err(SplitError::Malformed),
    }
}

/// Finishes a partial checksum in place (`NEEDS_CSUM`): the field already holds the pseudo-header sum.
fn finish_checksum(packet: &mut [u8], start: usize, offset: usize) -> Result<(), SplitError> {
    let field = start.checked_add(offset).filter(|&f| f + 2 <= packet.len()).ok_or(SplitError::Malformed)?;
    let c = match checksum(&packet[start..]) {
        // UDP sends 0 as "no checksum": a computed 0 goes as its other form (like the kernel does).
        0 => 0xffff,
        c => c,
    };
    packet[field..field + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Plain packets out of one TUN read, appended to `out` back to back; their lengths go to `lens`.
/// `packet` is what followed the virtio-net header `hdr`. A packet without GSO comes out as it is (its
/// checksum finished if it was partial); a TCP or UDP GSO packet comes out as its segments. On error
/// nothing is appended.
pub fn split(hdr: &VnetHdr, packet: &mut [u8], out: &mut Vec<u8>, lens: &mut Vec<usize>) -> Result<(), SplitError> {
    let gso = hdr.gso_type & !GSO_ECN;
    if gso == GSO_NONE {
        if hdr.flags & F_NEEDS_CSUM != 0 {
            finish_checksum(packet, usize::from(hdr.csum_start), usize::from(hdr.csum_offset))?;
        }
        out.extend_from_slice(packet);
        lens.push(packet.len());
        return Ok(());
    }
    let (l4, proto) = l4_of(packet)?;
    let v4 = packet[0] >> 4 == 4;
    let tcp = match (gso, proto, v4) {
        (GSO_TCPV4, PROTO_TCP, true) | (GSO_TCPV6, PROTO_TCP, false) => true,
        (GSO_UDP_L4, PROTO_UDP, _) => false,
        _ => return Err(SplitError::Unsupported),
    };
    let l4_hlen = if tcp {
        let off = *packet.get(l4 + 12).ok_or(SplitError::Malformed)?;
        usize::from(off >> 4) * 4
    } else {
        8
    };
    let hlen = l4 + l4_hlen;
    let mss = usize::from(hdr.gso_size);
    if l4_hlen < if tcp { 20 } else { 8 } || hlen >= packet.len() || mss == 0 {
        return Err(SplitError::Malformed);
    }
    let (headers, payload) = packet.split_at(hlen);
    let segments = payload.len().div_ceil(mss).max(1);
    let start = out.len();
    out.reserve(payload.len() + segments * hlen);
    for (i, chunk) in payload.chunks(mss).enumerate() {
        let seg_start = out.len();
        out.extend_from_slice(headers);
        out.extend_from_slice(chunk);
        let seg = &mut out[seg_start..];
        let seg_len = seg.len();
        if v4 {
            seg[2..4].copy_from_slice(&(seg_len as u16).to_be_bytes());
            let id = u16::from_be_bytes([headers[4], headers[5]]).wrapping_add(i as u16);
            seg[4..6].copy_from_slice(&id.to_be_bytes());
            seg[10..12].copy_from_slice(&[0, 0]);
            let c = checksum(&seg[..l4]);
            seg[10..12].copy_from_slice(&c.to_be_bytes());
        } else {
            seg[4..6].copy_from_slice(&((seg_len - 40) as u16).to_be_bytes());
        }
        let l4_len = seg_len - l4;
        let check_at = if tcp {
            let seq = u32::from_be_bytes(headers[l4 + 4..l4 + 8].try_into().expect("4 bytes"));
            let seq = seq.wrapping_add((i * mss) as u32);
            seg[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
            // FIN and PSH belong to the last segment only, CWR to the first only (as the kernel's GSO does).
            if i + 1 < segments {
                seg[l4 + 13] &= !(TCP_FIN | TCP_PSH);
            }
            if i > 0 {
                seg[l4 + 13] &= !TCP_CWR;
            }
            l4 + 16
        } else {
            seg[l4 + 4..l4 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            l4 + 6
        };
        seg[check_at..check_at + 2].copy_from_slice(&[0, 0]);
        let c = !fold(sum(&seg[l4..], pseudo_sum(seg, proto, l4_len)));
        let c = if !tcp && c == 0 { 0xffff } else { c };
        seg[check_at..check_at + 2].copy_from_slice(&c.to_be_bytes());
        lens.push(seg_len);
    }
    debug_assert_eq!(out.len() - start, lens[lens.len() - segments..].iter().sum::<usize>());
    Ok(())
}

#[cfg(test)]
#[path = "offload_tests.rs"]
pub(crate) mod tests;
