//! Wire format of QuicEther DATAGRAM frames (one QUIC DATAGRAM = one of these).
//!
//! ```text
//! DATA        0x01 | seq: u64 BE | gap: u32 BE | inner IP packet
//!             seq: bond sequence number (per peer); gap: seq minus the sequence number of the previous
//!             DATA frame sent on the same path (0: none). Paths deliver in order, so a receiver that
//!             has not seen seq - gap on this path knows at once that it was lost.
//! PROBE       0x02 | id: u32 BE | next_seq: u64 BE       (path health; answered on the same path. next_seq:
//!                                                         the sender's next bond sequence, so the receiver
//!                                                         knows this path has passed every earlier one)
//! PROBE_REPLY 0x03 | id: u32 BE
//! NACK        0x04 | count: u16 BE | count × seq: u64 BE  (these DATA frames were lost: resend them)
//! ```
//! Control messages that must arrive (path hello) use a QUIC stream instead; these are all best-effort.

pub const DATA: u8 = 0x01;
pub const PROBE: u8 = 0x02;
pub const PROBE_REPLY: u8 = 0x03;
pub const NACK: u8 = 0x04;
/// Sequence numbers per NACK frame: keeps a NACK well inside any path's datagram size.
pub const MAX_NACK_SEQS: usize = 128;
/// Bytes in front of every inner packet: type + sequence number + gap to the path's previous packet.
pub const DATA_HEADER_LEN: usize = 13;

#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Data { seq: u64, prev_on_path: Option<u64>, packet: &'a [u8] },
    Probe { id: u32, next_seq: u64 },
    ProbeReply { id: u32 },
    Nack { seqs: Vec<u64> },
}

/// NACK frames for `seqs`, at most `MAX_NACK_SEQS` per frame.
pub fn encode_nacks(seqs: &[u64]) -> Vec<Vec<u8>> {
    seqs.chunks(MAX_NACK_SEQS)
        .map(|chunk| {
            let mut f = Vec::with_capacity(3 + 8 * chunk.len());
            f.push(NACK);
            f.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            for seq in chunk {
                f.extend_from_slice(&seq.to_be_bytes());
            }
            f
        })
        .collect()
}

/// The sequence number of an encoded DATA frame, if it is one.
pub fn data_seq(datagram: &[u8]) -> Option<u64> {
    match datagram.first() {
        Some(&DATA) if datagram.len() >= DATA_HEADER_LEN => Some(u64::from_be_bytes(datagram[1..9].try_into().ok()?)),
        _ => None,
    }
}

/// Clears the gap field of an encoded DATA frame (for a copy resent on another path: the previous packet
/// it names was on the first path and says nothing about the new one).
pub fn clear_data_gap(datagram: &mut [u8]) {
    if datagram.first() == Some(&DATA) && datagram.len() >= DATA_HEADER_LEN {
        datagram[9..DATA_HEADER_LEN].fill(0);
    }
}

/// `prev_on_path`: the sequence number of the previous DATA frame on the same path, if any and close
/// enough to express (a gap beyond u32 is sent as "none").
pub fn encode_data_header(seq: u64, prev_on_path: Option<u64>) -> [u8; DATA_HEADER_LEN] {
    let gap = prev_on_path.and_then(|p| seq.checked_sub(p)).and_then(|g| u32::try_from(g).ok()).unwrap_or(0);
    let mut h = [0u8; DATA_HEADER_LEN];
    h[0] = DATA;
    h[1..9].copy_from_slice(&seq.to_be_bytes());
    h[9..].copy_from_slice(&gap.to_be_bytes());
    h
}

pub fn encode_probe(id: u32, next_seq: u64) -> [u8; 13] {
    let mut p = [0u8; 13];
    p[0] = PROBE;
    p[1..5].copy_from_slice(&id.to_be_bytes());
    p[5..].copy_from_slice(&next_seq.to_be_bytes());
    p
}

pub fn encode_probe_reply(id: u32) -> [u8; 5] {
    let mut p = [PROBE_REPLY, 0, 0, 0, 0];
    p[1..].copy_from_slice(&id.to_be_bytes());
    p
}

/// Parses one datagram; None for unknown types or truncated frames (dropped and counted by the caller).
pub fn parse(datagram: &[u8]) -> Option<Frame<'_>> {
    let (&kind, rest) = datagram.split_first()?;
    match kind {
        DATA if rest.len() >= DATA_HEADER_LEN - 1 => {
            let seq = u64::from_be_bytes(rest[..8].try_into().ok()?);
            let gap = u32::from_be_bytes(rest[8..12].try_into().ok()?) as u64;
            let prev_on_path = if gap == 0 { None } else { seq.checked_sub(gap) };
            Some(Frame::Data { seq, prev_on_path, packet: &rest[12..] })
        }
        PROBE if rest.len() == 12 => Some(Frame::Probe {
            id: u32::from_be_bytes(rest[..4].try_into().ok()?),
            next_seq: u64::from_be_bytes(rest[4..].try_into().ok()?),
        }),
        PROBE_REPLY if rest.len() == 4 => Some(Frame::ProbeReply { id: u32::from_be_bytes(rest.try_into().ok()?) }),
        NACK if rest.len() >= 2 => {
            let count = u16::from_be_bytes([rest[0], rest[1]]) as usize;
            let body = &rest[2..];
            if body.len() != 8 * count {
                return None;
            }
            Some(Frame::Nack {
                seqs: body.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().unwrap())).collect(),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let mut d = encode_data_header(0x0102_0304_0506_0708, Some(0x0102_0304_0506_0700)).to_vec();
        d.extend_from_slice(b"packet");
        let expected =
            Frame::Data { seq: 0x0102_0304_0506_0708, prev_on_path: Some(0x0102_0304_0506_0700), packet: b"packet" };
        assert_eq!(parse(&d), Some(expected));
        let first = encode_data_header(5, None);
        assert_eq!(parse(&first), Some(Frame::Data { seq: 5, prev_on_path: None, packet: b"" }));
        assert_eq!(
            parse(&encode_data_header(1 << 40, Some(1))),
            Some(Frame::Data { seq: 1 << 40, prev_on_path: None, packet: b"" })
        );
        assert_eq!(parse(&encode_probe(7, 1 << 40)), Some(Frame::Probe { id: 7, next_seq: 1 << 40 }));
        assert_eq!(parse(&encode_probe_reply(9)), Some(Frame::ProbeReply { id: 9 }));
    }

    #[test]
    fn nacks_round_trip_in_bounded_frames() {
        let seqs: Vec<u64> = (1000..1000 + MAX_NACK_SEQS as u64 + 5).collect();
        let frames = encode_nacks(&seqs);
        assert_eq!(frames.len(), 2);
        let parsed: Vec<u64> = frames
            .iter()
            .flat_map(|f| match parse(f) {
                Some(Frame::Nack { seqs }) => seqs,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(parsed, seqs);
        assert_eq!(parse(&[NACK, 0, 2, 1, 2, 3]), None);
        assert_eq!(data_seq(&encode_data_header(77, None)), Some(77));
    }

    #[test]
    fn a_cleared_gap_names_no_previous_packet() {
        let mut frame = encode_data_header(1 << 33, Some((1 << 33) - 4)).to_vec();
        frame.extend_from_slice(b"inner");
        clear_data_gap(&mut frame);
        assert_eq!(parse(&frame), Some(Frame::Data { seq: 1 << 33, prev_on_path: None, packet: b"inner" }));
        let mut probe = encode_probe(1, 2).to_vec();
        clear_data_gap(&mut probe);
        assert_eq!(probe, encode_probe(1, 2).to_vec(), "only DATA frames are touched");
    }

    #[test]
    fn rejects_truncated_and_unknown() {
        assert_eq!(parse(&[]), None);
        assert_eq!(parse(&[DATA, 0, 0]), None);
        assert_eq!(parse(&[PROBE, 0, 0, 0]), None);
        assert_eq!(parse(&[0x45, 0, 0, 0, 0]), None);
    }
}
