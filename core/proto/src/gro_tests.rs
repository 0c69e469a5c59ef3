use super::*;
use crate::offload::tests::{payload, segments, tcp_v4_super, tcp_v6_super};
use crate::offload::{split, VnetHdr, GSO_NONE};

/// The plain segments the kernel's GSO would cut from `super_packet` (as our peer's TUN reader does).
fn cut(hdr: &VnetHdr, super_packet: &[u8]) -> Vec<Vec<u8>> {
    let (mut out, mut lens) = (Vec::new(), Vec::new());
    split(hdr, &mut super_packet.to_vec(), &mut out, &mut lens).unwrap();
    segments(&out, &lens).into_iter().map(<[u8]>::to_vec).collect()
}

fn v4_hdr(mss: u16) -> VnetHdr {
    VnetHdr { flags: F_NEEDS_CSUM, gso_type: GSO_TCPV4, hdr_len: 40, gso_size: mss, csum_start: 20, csum_offset: 16 }
}

fn run(packets: &[Vec<u8>]) -> (Vec<u8>, Vec<Write>) {
    let (mut out, mut writes) = (Vec::new(), Vec::new());
    coalesce(packets, &mut out, &mut writes);
    (out, writes)
}

/// Each write as the TUN device gets it: the header and the packet.
fn written<'a>(packets: &'a [Vec<u8>], out: &'a [u8], writes: &[Write]) -> Vec<(VnetHdr, &'a [u8])> {
    writes
        .iter()
        .map(|w| match w {
            Write::Packet(i) => (VnetHdr::default(), &packets[*i][..]),
            Write::Super { hdr, range, .. } => (*hdr, &out[range.clone()]),
        })
        .collect()
}

#[test]
fn segments_cut_from_a_super_packet_merge_back_into_one_that_cuts_the_same() {
    for (hdr, original) in [
        (v4_hdr(1000), tcp_v4_super(&payload(3 * 1000 + 123), 0x10 | 0x08)),
        (
            VnetHdr { gso_type: GSO_TCPV6, csum_start: 40, hdr_len: 60, ..v4_hdr(1000) },
            tcp_v6_super(&payload(5 * 1000)),
        ),
    ] {
        let segs = cut(&hdr, &original);
        let (out, writes) = run(&segs);
        assert_eq!(writes.len(), 1, "{writes:?}");
        let Write::Super { hdr: merged_hdr, range, segments } = &writes[0] else { panic!("{writes:?}") };
        assert_eq!(*segments, segs.len());
        assert_eq!(*merged_hdr, hdr, "the header the kernel's TSO gave");
        let merged = &out[range.clone()];
        assert_eq!(merged.len(), original.len());
        assert_eq!(cut(merged_hdr, merged), segs, "cut again, the same segments, checksums included");
    }
}

#[test]
fn only_segments_that_one_super_packet_could_hold_are_merged() {
    let segs = cut(&v4_hdr(1000), &tcp_v4_super(&payload(6 * 1000), 0x10));
    let pure_ack = {
        let mut p = segs[0][..40].to_vec();
        p[2..4].copy_from_slice(&40u16.to_be_bytes());
        p
    };
    let mut other_flow = segs[3].clone();
    other_flow[20] ^= 1; // another source port
    let mut syn = segs[0].clone();
    syn[33] |= 0x02;
    let mut no_df = segs[0].clone();
    no_df[6] = 0;
    let mut psh = segs[1].clone();
    psh[33] |= 0x08;
    // What, the packets, and the segments in each write.
    type Case<'a> = (&'a str, Vec<Vec<u8>>, Vec<usize>);
    let cases: Vec<Case> = vec![
        ("back to back", segs.clone(), vec![6]),
        (
            "a gap in the sequence numbers",
            vec![segs[0].clone(), segs[1].clone(), segs[3].clone(), segs[4].clone()],
            vec![2, 2],
        ),
        ("another flow in between", vec![segs[0].clone(), segs[1].clone(), other_flow, segs[2].clone()], vec![2, 1, 1]),
        ("a pure ACK", vec![segs[0].clone(), pure_ack, segs[1].clone()], vec![1, 1, 1]),
        ("a SYN", vec![syn, segs[1].clone()], vec![1, 1]),
        ("no DF", vec![no_df, segs[1].clone()], vec![1, 1]),
        ("PSH ends a super-packet", vec![segs[0].clone(), psh, segs[2].clone(), segs[3].clone()], vec![2, 2]),
    ];
    for (what, packets, want) in cases {
        let (out, writes) = run(&packets);
        let got: Vec<usize> = writes
            .iter()
            .map(|w| match w {
                Write::Packet(_) => 1,
                Write::Super { segments, .. } => *segments,
            })
            .collect();
        assert_eq!(got, want, "{what}");
        // In order, every packet once, and a write of one packet is the packet as it came.
        let bytes: usize = written(&packets, &out, &writes).iter().map(|(_, p)| p.len() - 40).sum();
        assert_eq!(bytes, packets.iter().map(|p| p.len() - 40).sum::<usize>(), "{what}");
        for (hdr, p) in written(&packets, &out, &writes) {
            if hdr.gso_type == GSO_NONE {
                assert!(packets.iter().any(|q| q == p), "{what}");
            }
        }
    }
}

#[test]
fn a_short_segment_ends_a_super_packet_and_size_and_count_are_capped() {
    let segs = cut(&v4_hdr(1000), &tcp_v4_super(&payload(2 * 1000 + 500), 0x10));
    let next = cut(&v4_hdr(1000), &{
        // The segment that follows the short one in sequence.
        let mut p = tcp_v4_super(&payload(1000), 0x10);
        p[24..28].copy_from_slice(&0xffff_f000u32.wrapping_add(2500).to_be_bytes());
        p
    });
    let (_, writes) = run(&[segs.clone(), next].concat());
    assert!(matches!(writes[..], [Write::Super { segments: 3, .. }, Write::Packet(3)]), "{writes:?}");
    // Back-to-back runs: at most 64 KB and at most MAX_SEGMENTS per super-packet, the bytes in order.
    for (mss, first, second, want) in [(1400u16, 40, 20, [46, 14]), (500, 60, 40, [MAX_SEGMENTS, 36])] {
        let size = usize::from(mss);
        let run_of = |count: usize, offset: usize| {
            let mut p = tcp_v4_super(&payload(count * size), 0x10);
            p[24..28].copy_from_slice(&0xffff_f000u32.wrapping_add(offset as u32).to_be_bytes());
            cut(&v4_hdr(mss), &p)
        };
        let all = [run_of(first, 0), run_of(second, first * size)].concat();
        let (out, writes) = run(&all);
        let counts: Vec<usize> = writes
            .iter()
            .map(|w| match w {
                Write::Super { range, segments, .. } => {
                    assert!(range.len() <= 65_535);
                    *segments
                }
                Write::Packet(_) => 1,
            })
            .collect();
        assert_eq!(counts, want, "segments of {mss}");
        let joined: Vec<u8> = written(&all, &out, &writes).iter().flat_map(|(_, p)| p[40..].to_vec()).collect();
        let sent: Vec<u8> = all.iter().flat_map(|p| p[40..].to_vec()).collect();
        assert_eq!(joined, sent, "the bytes in order");
    }
}
