//! A bounded reader and a writer for our compact binary encodings (certificates, revocations, DHT
//! records). The reader only ever borrows from the input: lengths come from the input, so every caller
//! checks them against its own fixed limits before it allocates anything.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::allowed_ips::Prefix;

/// Why a value did not decode: a short fixed text, so a malformed input never costs an allocation.
pub type Malformed = &'static str;

pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { rest: data }
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.rest.len() < n {
            return Err("truncated");
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], Malformed> {
        Ok(self.bytes(N)?.try_into().expect("bytes(N) has N bytes"))
    }

    pub fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u16(&mut self) -> Result<u16, Malformed> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> Result<u32, Malformed> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, Malformed> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A length byte, checked against `max` before the bytes are read.
    pub fn short_bytes(&mut self, max: usize, too_long: Malformed) -> Result<&'a [u8], Malformed> {
        let n = self.u8()? as usize;
        if n > max {
            return Err(too_long);
        }
        self.bytes(n)
    }

    /// A family byte (4 or 6) and the address.
    pub fn ip(&mut self) -> Result<IpAddr, Malformed> {
        match self.u8()? {
            4 => Ok(IpAddr::V4(Ipv4Addr::from(self.array::<4>()?))),
            6 => Ok(IpAddr::V6(Ipv6Addr::from(self.array::<16>()?))),
            _ => Err("unknown address family"),
        }
    }

    /// An address (as `ip`) and a prefix length; the prefix must be canonical (no host bits set).
    pub fn prefix(&mut self) -> Result<Prefix, Malformed> {
        let addr = self.ip()?;
        let len = self.u8()?;
        let prefix = Prefix { addr, len };
        if len > if addr.is_ipv4() { 32 } else { 128 } {
            return Err("prefix length out of range");
        }
        if !is_canonical(&prefix) {
            return Err("prefix has host bits set");
        }
        Ok(prefix)
    }

    /// What is left; decoders refuse trailing bytes so one value has one encoding.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }
}

/// True if no bit after the prefix length is set (10.1.0.0/16, not 10.1.2.3/16).
pub fn is_canonical(p: &Prefix) -> bool {
    match p.addr {
        IpAddr::V4(a) => p.len >= 32 || u32::from(a) & (u32::MAX >> p.len) == 0,
        IpAddr::V6(a) => p.len >= 128 || u128::from(a) & (u128::MAX >> p.len) == 0,
    }
}

#[derive(Default)]
pub struct Writer {
    pub out: Vec<u8>,
}

impl Writer {
    pub fn u8(&mut self, v: u8) {
        self.out.push(v);
    }
    pub fn u16(&mut self, v: u16) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }
    pub fn bytes(&mut self, v: &[u8]) {
        self.out.extend_from_slice(v);
    }
    /// A length byte then the bytes; callers have checked `v.len() <= 255` against their own limit.
    pub fn short_bytes(&mut self, v: &[u8]) {
        self.u8(u8::try_from(v.len()).expect("checked by the caller"));
        self.bytes(v);
    }
    pub fn ip(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(a) => {
                self.u8(4);
                self.bytes(&a.octets());
            }
            IpAddr::V6(a) => {
                self.u8(6);
                self.bytes(&a.octets());
            }
        }
    }
    pub fn prefix(&mut self, p: &Prefix) {
        self.ip(p.addr);
        self.u8(p.len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_refuses_truncation_long_lengths_and_loose_prefixes() {
        assert_eq!(Reader::new(&[1]).u16(), Err("truncated"));
        assert_eq!(Reader::new(&[5, 1, 2]).short_bytes(4, "too long"), Err("too long"));
        assert_eq!(Reader::new(&[3, 1, 2]).short_bytes(4, "too long"), Err("truncated"));
        assert_eq!(Reader::new(&[4, 10, 1, 2, 3, 16]).prefix(), Err("prefix has host bits set"));
        assert_eq!(Reader::new(&[4, 10, 1, 0, 0, 33]).prefix(), Err("prefix length out of range"));
        assert_eq!(Reader::new(&[5, 10, 1, 0, 0, 16]).prefix(), Err("unknown address family"));
        let p = Reader::new(&[4, 10, 1, 0, 0, 16]).prefix().unwrap();
        assert_eq!(p, "10.1.0.0/16".parse().unwrap());
    }

    #[test]
    fn writer_and_reader_round_trip() {
        let mut w = Writer::default();
        w.u64(7);
        w.short_bytes(b"abc");
        w.prefix(&"fd00:1::/32".parse().unwrap());
        let mut r = Reader::new(&w.out);
        assert_eq!(r.u64(), Ok(7));
        assert_eq!(r.short_bytes(3, "long"), Ok(&b"abc"[..]));
        assert_eq!(r.prefix(), Ok("fd00:1::/32".parse().unwrap()));
        assert_eq!(r.remaining(), 0);
    }
}
