//! Member news: what members of one network tell each other on every path, so that each learns every
//! member's certificate (whom to look up and dial) and every revocation (whom to cut off) from whichever
//! peers it is connected to, with no server in the middle. A batch travels on its own QUIC stream; each
//! item in it is verified on its own (`membership::read_certificate` / `read_revocation`) before it
//! changes anything, and an item already known is not passed on again, so news floods the mesh once.
//!
//! Wire format of a batch (integers big-endian; trailing bytes refused):
//! ```text
//!   [4]   magic "QEN1"
//!   u16   count                          at most MAX_ITEMS
//!   count × ( u8 kind (1 certificate, 2 revocation), u16 len, len bytes )
//! ```

use crate::membership::{MAX_CERTIFICATE_LEN, REVOCATION_LEN};
use crate::wire::{Malformed, Reader, Writer};

pub const MAGIC: &[u8; 4] = b"QEN1";
/// Items in one batch; a network holds at most this many members and revocations worth telling at once.
pub const MAX_ITEMS: usize = 1024;
/// Largest batch: every item at its largest.
pub const MAX_BATCH_LEN: usize = 4 + 2 + MAX_ITEMS * (3 + MAX_CERTIFICATE_LEN);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    Certificate(Vec<u8>),
    Revocation(Vec<u8>),
}

const KIND_CERTIFICATE: u8 = 1;
const KIND_REVOCATION: u8 = 2;

/// Encodes `items` (at most `MAX_ITEMS`; more are left out, as the receiver would refuse them).
pub fn encode(items: &[Item]) -> Vec<u8> {
    let items = &items[..items.len().min(MAX_ITEMS)];
    let mut w = Writer::default();
    w.bytes(MAGIC);
    w.u16(items.len() as u16);
    for item in items {
        let (kind, data) = match item {
            Item::Certificate(d) => (KIND_CERTIFICATE, d),
            Item::Revocation(d) => (KIND_REVOCATION, d),
        };
        w.u8(kind);
        w.u16(data.len() as u16);
        w.bytes(data);
    }
    w.out
}

/// Decodes a batch; bounded: the count and every length are checked against the limits before use.
pub fn decode(data: &[u8]) -> Result<Vec<Item>, Malformed> {
    if data.len() > MAX_BATCH_LEN {
        return Err("batch too long");
    }
    let mut r = Reader::new(data);
    if r.bytes(4)? != MAGIC {
        return Err("not member news");
    }
    let count = r.u16()? as usize;
    if count > MAX_ITEMS {
        return Err("too many items");
    }
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        let kind = r.u8()?;
        let len = r.u16()? as usize;
        let item = match kind {
            KIND_CERTIFICATE if len <= MAX_CERTIFICATE_LEN => Item::Certificate(r.bytes(len)?.to_vec()),
            KIND_REVOCATION if len == REVOCATION_LEN => Item::Revocation(r.bytes(len)?.to_vec()),
            KIND_CERTIFICATE | KIND_REVOCATION => return Err("item length out of range"),
            _ => return Err("unknown item kind"),
        };
        items.push(item);
    }
    if r.remaining() != 0 {
        return Err("trailing bytes");
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_reads_back_and_damage_is_refused() {
        let items = vec![Item::Certificate(vec![1; 200]), Item::Revocation(vec![2; REVOCATION_LEN])];
        let data = encode(&items);
        assert_eq!(decode(&data), Ok(items));
        assert_eq!(decode(&data[..data.len() - 1]).unwrap_err(), "truncated");
        assert_eq!(decode(&[data.as_slice(), &[0]].concat()), Err("trailing bytes"));
        assert_eq!(decode(b"QEH1\0\0"), Err("not member news"));
        let mut wrong_len = encode(&[Item::Revocation(vec![2; REVOCATION_LEN])]);
        wrong_len[8] = 1; // low byte of the revocation's length
        assert!(decode(&wrong_len).is_err());
        let mut unknown = encode(&[Item::Certificate(vec![1; 3])]);
        unknown[6] = 9;
        assert_eq!(decode(&unknown), Err("unknown item kind"));
        let mut many = encode(&[]);
        many[4..6].copy_from_slice(&((MAX_ITEMS + 1) as u16).to_be_bytes());
        assert_eq!(decode(&many), Err("too many items"));
        assert_eq!(decode(&encode(&[])), Ok(vec![]));
    }
}
