use super::*;

/// RFC 1071 the slow, obvious way: 16-bit words, end-around carry after every addition.
pub(crate) fn reference_checksum(data: &[u8]) -> u16 {
    let mut acc: u32 = 0;
    for i in (0..data.len()).step_by(2) {
        let word = u32::from(data[i]) << 8 | u32::from(*data.get(i + 1).unwrap_or(&0));
        acc += word;
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// True if the TCP/UDP checksum of `seg` (an IP packet with its L4 header at `l4`) verifies.
pub(crate) fn l4_checksum_ok(seg: &[u8], l4: usize, proto: u8) -> bool {
    let mut pseudo = Vec::new();
    if seg[0] >> 4 == 4 {
        pseudo.extend_from_slice(&seg[12..20]);
    } else {
        pseudo.extend_from_slice(&seg[8..40]);
    }
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&((seg.len() - l4) as u16).to_be_bytes());
    pseudo.extend_from_slice(&seg[l4..]);
    reference_checksum(&pseudo) == 0
}

pub(crate) fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// An IPv4 + TCP super-packet as the kernel hands it over with TSO: total length of the whole, checksum
/// field holding the (folded, not complemented) pseudo-header sum.
pub(crate) fn tcp_v4_super(data: &[u8], flags: u8) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&((40 + data.len()) as u16).to_be_bytes());
    p[4..6].copy_from_slice(&0xfffe_u16.to_be_bytes()); // the IPv4 ID wraps while segmenting
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = PROTO_TCP;
    p[12..16].copy_from_slice(&[10, 99, 0, 1]);
    p[16..20].copy_from_slice(&[10, 99, 0, 2]);
    p[20..22].copy_from_slice(&5201u16.to_be_bytes());
    p[22..24].copy_from_slice(&40000u16.to_be_bytes());
    p[24..28].copy_from_slice(&0xffff_f000u32.to_be_bytes()); // the sequence number wraps too
    p[28..32].copy_from_slice(&7u32.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = flags;
    p[34..36].copy_from_slice(&512u16.to_be_bytes());
    p.extend_from_slice(data);
    let pseudo = fold(pseudo_sum(&p, PROTO_TCP, p.len() - 20));
    p[36..38].copy_from_slice(&pseudo.to_be_bytes());
    p
}

pub(crate) fn tcp_v6_super(data: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 60];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&((20 + data.len()) as u16).to_be_bytes());
    p[6] = PROTO_TCP;
    p[7] = 64;
    p[8..24].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    p[24..40].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    p[44..48].copy_from_slice(&1000u32.to_be_bytes());
    p[52] = 5 << 4;
    p[53] = 0x10 | TCP_PSH;
    p.extend_from_slice(data);
    let pseudo = fold(pseudo_sum(&p, PROTO_TCP, p.len() - 40));
    p[56..58].copy_from_slice(&pseudo.to_be_bytes());
    p
}

pub(crate) fn gso_hdr(gso_type: u8, l4: u16, l4_hlen: u16, mss: u16, csum_offset: u16) -> VnetHdr {
    VnetHdr { flags: F_NEEDS_CSUM, gso_type, hdr_len: l4 + l4_hlen, gso_size: mss, csum_start: l4, csum_offset }
}

pub(crate) fn segments<'a>(out: &'a [u8], lens: &[usize]) -> Vec<&'a [u8]> {
    let mut at = 0;
    lens.iter()
        .map(|&l| {
            let s = &out[at..at + l];
            at += l;
            s
        })
        .collect()
}

#[test]
fn checksum_matches_the_reference_and_a_known_header() {
    // The IPv4 header example of RFC 1071's usual illustration: its checksum is 0xb861.
    let header = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8,
        0x00, 0xc7,
    ];
    assert_eq!(checksum(&header), 0xb861);
    for len in [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 63, 1499, 1500, 65_535] {
        let data = payload(len);
        assert_eq!(checksum(&data), reference_checksum(&data), "length {len}");
    }
    let ones = vec![0xffu8; 9001];
    assert_eq!(checksum(&ones), reference_checksum(&ones));
}

#[test]
fn header_round_trips() {
    let hdr = VnetHdr {
        flags: 1,
        gso_type: GSO_TCPV6 | GSO_ECN,
        hdr_len: 74,
        gso_size: 1348,
        csum_start: 40,
        csum_offset: 16,
    };
    assert_eq!(VnetHdr::parse(&hdr.encode()), Some(hdr));
    assert_eq!(VnetHdr::parse(&[0; 9]), None);
    // Little-endian on the wire (the TUN's native order on x86 and arm64).
    assert_eq!(&hdr.encode()[4..6], &1348u16.to_le_bytes());
}

#[test]
fn tcp_v4_super_packet_splits_like_the_kernel() {
    let data = payload(3 * 1000 + 123);
    let flags = 0x10 | TCP_PSH | TCP_FIN | TCP_CWR;
    let mut packet = tcp_v4_super(&data, flags);
    let hdr = gso_hdr(GSO_TCPV4 | GSO_ECN, 20, 20, 1000, 16);
    let (mut out, mut lens) = (vec![0xaa], vec![1]); // what is there already stays
    split(&hdr, &mut packet, &mut out, &mut lens).unwrap();
    let segs = segments(&out, &lens);
    assert_eq!(segs[0], &[0xaa]);
    let segs = &segs[1..];
    assert_eq!(segs.iter().map(|s| s.len()).collect::<Vec<_>>(), [1040, 1040, 1040, 163]);
    let mut joined = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        assert_eq!(usize::from(u16::from_be_bytes([s[2], s[3]])), s.len(), "IPv4 total length");
        assert_eq!(u16::from_be_bytes([s[4], s[5]]), 0xfffe_u16.wrapping_add(i as u16), "IPv4 ID");
        assert_eq!(reference_checksum(&s[..20]), 0, "IPv4 header checksum of segment {i}");
        let seq = u32::from_be_bytes(s[24..28].try_into().unwrap());
        assert_eq!(seq, 0xffff_f000u32.wrapping_add(1000 * i as u32));
        assert_eq!(&s[28..32], &7u32.to_be_bytes(), "ack unchanged");
        let last = i == segs.len() - 1;
        assert_eq!(s[33] & (TCP_FIN | TCP_PSH) != 0, last, "FIN/PSH on the last only");
        assert_eq!(s[33] & TCP_CWR != 0, i == 0, "CWR on the first only");
        assert!(s[33] & 0x10 != 0, "ACK on every segment");
        assert!(l4_checksum_ok(s, 20, PROTO_TCP), "TCP checksum of segment {i}");
        joined.extend_from_slice(&s[40..]);
    }
    assert_eq!(joined, data);
}

#[test]
fn tcp_v6_super_packet_splits() {
    let data = payload(2 * 1220);
    let mut packet = tcp_v6_super(&data);
    let (mut out, mut lens) = (Vec::new(), Vec::new());
    split(&gso_hdr(GSO_TCPV6, 40, 20, 1220, 16), &mut packet, &mut out, &mut lens).unwrap();
    let segs = segments(&out, &lens);
    assert_eq!(segs.len(), 2);
    for (i, s) in segs.iter().enumerate() {
        assert_eq!(usize::from(u16::from_be_bytes([s[4], s[5]])), s.len() - 40, "IPv6 payload length");
        assert_eq!(u32::from_be_bytes(s[44..48].try_into().unwrap()), 1000 + 1220 * i as u32);
        assert!(l4_checksum_ok(s, 40, PROTO_TCP));
        assert_eq!(&s[60..], &data[i * 1220..(i + 1) * 1220]);
    }
}

#[test]
fn udp_super_packet_gets_one_header_per_segment() {
    let data = payload(2500);
    let mut p = vec![0u8; 28];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&((28 + data.len()) as u16).to_be_bytes());
    p[8] = 64;
    p[9] = PROTO_UDP;
    p[12..16].copy_from_slice(&[10, 99, 0, 1]);
    p[16..20].copy_from_slice(&[10, 99, 0, 2]);
    p[20..22].copy_from_slice(&5000u16.to_be_bytes());
    p[22..24].copy_from_slice(&5001u16.to_be_bytes());
    p.extend_from_slice(&data);
    let pseudo = fold(pseudo_sum(&p, PROTO_UDP, p.len() - 20));
    p[26..28].copy_from_slice(&pseudo.to_be_bytes());
    let (mut out, mut lens) = (Vec::new(), Vec::new());
    split(&gso_hdr(GSO_UDP_L4, 20, 8, 1200, 6), &mut p, &mut out, &mut lens).unwrap();
    assert_eq!(lens, [1228, 1228, 128]);
    for s in segments(&out, &lens) {
        assert_eq!(usize::from(u16::from_be_bytes([s[24], s[25]])), s.len() - 20, "UDP length");
        assert_eq!(reference_checksum(&s[..20]), 0);
        assert!(l4_checksum_ok(s, 20, PROTO_UDP));
        assert_eq!(&s[20..24], &p[20..24], "ports");
    }
}

#[test]
fn partial_checksum_of_a_plain_packet_is_finished() {
    let data = payload(333);
    let mut packet = tcp_v4_super(&data, 0x10);
    let original = packet.clone();
    let hdr = VnetHdr { flags: F_NEEDS_CSUM, csum_start: 20, csum_offset: 16, ..Default::default() };
    let (mut out, mut lens) = (Vec::new(), Vec::new());
    split(&hdr, &mut packet, &mut out, &mut lens).unwrap();
    assert_eq!(lens, [original.len()]);
    assert!(l4_checksum_ok(&out, 20, PROTO_TCP));
    assert_eq!(&out[..36], &original[..36], "nothing but the checksum changes");
    assert_eq!(&out[38..], &original[38..]);
    // Without NEEDS_CSUM the packet passes untouched.
    let (mut out, mut lens) = (Vec::new(), Vec::new());
    split(&VnetHdr::default(), &mut original.clone(), &mut out, &mut lens).unwrap();
    assert_eq!(out, original);
}

#[test]
fn bad_headers_are_refused_and_append_nothing() {
    let data = payload(3000);
    let packet = tcp_v4_super(&data, 0x10);
    let (mut out, mut lens) = (Vec::new(), Vec::new());
    let mut try_split = |hdr: VnetHdr, mut p: Vec<u8>| split(&hdr, &mut p, &mut out, &mut lens);
    assert_eq!(try_split(gso_hdr(GSO_TCPV4, 20, 20, 0, 16), packet.clone()), Err(SplitError::Malformed));
    let beyond = VnetHdr { flags: F_NEEDS_CSUM, csum_start: 3039, csum_offset: 16, ..Default::default() };
    assert_eq!(try_split(beyond, packet.clone()), Err(SplitError::Malformed));
    assert_eq!(try_split(gso_hdr(GSO_TCPV6, 20, 20, 1000, 16), packet.clone()), Err(SplitError::Unsupported));
    assert_eq!(try_split(gso_hdr(3, 20, 20, 1000, 16), packet.clone()), Err(SplitError::Unsupported));
    let mut ext = tcp_v6_super(&data);
    ext[6] = 0; // hop-by-hop options header first
    assert_eq!(try_split(gso_hdr(GSO_TCPV6, 40, 20, 1000, 16), ext), Err(SplitError::Unsupported));
    let mut short = packet[..40].to_vec();
    short[32] = 15 << 4; // a TCP header longer than the packet
    assert_eq!(try_split(gso_hdr(GSO_TCPV4, 20, 60, 1000, 16), short), Err(SplitError::Malformed));
    assert!(out.is_empty() && lens.is_empty());
}
