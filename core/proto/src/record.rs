//! A member's discovery record: how to reach it (per-WAN endpoints, LAN addresses, relays), published in
//! the mainline DHT as a BEP 44 mutable item signed with its node key. The value is sealed so only members
//! of the network can read it. No I/O: the caller passes the nonce and `now`.
//!
//! Keys derived from the network key (HKDF-SHA256, salt `NETWORK_HKDF_SALT`, one info string each):
//! - the BEP 44 salt (16 bytes, info "dht salt"): the item's target is sha1(node key ‖ salt), so who
//!   does not hold the network key cannot even compute where a member's record is;
//! - the record key (32 bytes, info "record key") for ChaCha20-Poly1305;
//! - the LAN tag (8 bytes, info "lan tag"), announced in mDNS so members on a LAN tell their network's
//!   announcements from others' without showing the network key.
//!
//! Sealed value (the BEP 44 `v`, at most `MAX_VALUE_LEN` = 1000 bytes):
//! ```text
//!   u8 version = 0x01, [12] nonce (random), ciphertext ‖ [16] tag
//!   associated data: SEAL_CONTEXT ‖ [32] node key (the BEP 44 signer) ‖ i64 seq (the BEP 44 seq)
//! ```
//! The associated data binds the plaintext to the item that carries it: a member cannot pass another
//! member's record off as its own, nor move it to another sequence number.
//!
//! Plaintext, version 1 (at most `MAX_PLAINTEXT_LEN` bytes; integers big-endian; no trailing bytes):
//! ```text
//!   u8 version = 0x01, u64 expires_at (Unix s)
//!   u8 n <= 12, n × endpoint: u8 kind (0 public, 1 reflexive, 2 mapped), u8 len + WAN label (1..=32 of
//!                             [A-Za-z0-9._-]), address
//!   u8 n <= 8,  n × address   LAN addresses
//!   u8 n <= 4,  n × [32]      relays: node keys of members that relay to this one
//!   address = u8 family (4|6), [4|16] ip, u16 port
//! ```

use std::net::{IpAddr, SocketAddr};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::hkdf::{Salt, HKDF_SHA256};

use crate::peer_text::{is_safe_label, MAX_LABEL_LEN};
use crate::wire::{Malformed, Reader, Writer};

pub const RECORD_V1: u8 = 0x01;
pub const SEALED_V1: u8 = 0x01;
/// BEP 44 limits `v` to 1000 bytes (bencoded; ours is one byte string, so its header takes a few of them).
pub const MAX_VALUE_LEN: usize = 990;
const TAG_LEN: usize = 16;
pub const MAX_PLAINTEXT_LEN: usize = MAX_VALUE_LEN - 1 - NONCE_LEN - TAG_LEN;
pub const MAX_ENDPOINTS: usize = 12;
pub const MAX_LAN_ADDRS: usize = 8;
pub const MAX_RELAYS: usize = 4;
pub const SALT_LEN: usize = 16;
const NETWORK_HKDF_SALT: &[u8] = b"quicether network v1";
const SEAL_CONTEXT: &[u8] = b"quicether record v1\0";

const ADDR_MAX: usize = 1 + 16 + 2;
// The largest plaintext the limits allow must fit the sealed value.
const _: () = assert!(
    1 + 8 + 1 + MAX_ENDPOINTS * (2 + MAX_LABEL_LEN + ADDR_MAX) + 1 + MAX_LAN_ADDRS * ADDR_MAX + 1 + MAX_RELAYS * 32
        <= MAX_PLAINTEXT_LEN
);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointKind {
    /// The WAN's own address is public.
    Public,
    /// The address a peer saw us at (server-reflexive, behind NAT).
    Reflexive,
    /// A port mapping we made on the NAT (UPnP, NAT-PMP, PCP).
    Mapped,
}

impl EndpointKind {
    pub fn name(self) -> &'static str {
        match self {
            EndpointKind::Public => "public",
            EndpointKind::Reflexive => "reflexive",
            EndpointKind::Mapped => "mapped",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [EndpointKind::Public, EndpointKind::Reflexive, EndpointKind::Mapped].into_iter().find(|k| k.name() == name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub kind: EndpointKind,
    pub wan: String,
    pub addr: SocketAddr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub expires_at: u64,
    pub endpoints: Vec<Endpoint>,
    pub lan: Vec<SocketAddr>,
    pub relays: Vec<[u8; 32]>,
}

fn write_addr(w: &mut Writer, a: &SocketAddr) {
    w.ip(a.ip());
    w.u16(a.port());
}

fn read_addr(r: &mut Reader<'_>) -> Result<SocketAddr, Malformed> {
    let ip: IpAddr = r.ip()?;
    Ok(SocketAddr::new(ip, r.u16()?))
}

impl Record {
    pub fn validate(&self) -> Result<(), Malformed> {
        if self.endpoints.len() > MAX_ENDPOINTS {
            return Err("too many endpoints");
        }
        if !self.endpoints.iter().all(|e| is_safe_label(&e.wan)) {
            return Err("WAN label must be 1 to 32 of A-Z, a-z, 0-9, '.', '_' and '-'");
        }
        if self.lan.len() > MAX_LAN_ADDRS {
            return Err("too many LAN addresses");
        }
        if self.relays.len() > MAX_RELAYS {
            return Err("too many relays");
        }
        Ok(())
    }

    pub fn encode(&self) -> Result<Vec<u8>, Malformed> {
        self.validate()?;
        let mut w = Writer::default();
        w.u8(RECORD_V1);
        w.u64(self.expires_at);
        w.u8(self.endpoints.len() as u8);
        for e in &self.endpoints {
            w.u8(match e.kind {
                EndpointKind::Public => 0,
                EndpointKind::Reflexive => 1,
                EndpointKind::Mapped => 2,
            });
            w.short_bytes(e.wan.as_bytes());
            write_addr(&mut w, &e.addr);
        }
        w.u8(self.lan.len() as u8);
        for a in &self.lan {
            write_addr(&mut w, a);
        }
        w.u8(self.relays.len() as u8);
        for k in &self.relays {
            w.bytes(k);
        }
        Ok(w.out)
    }

    /// Bounded decoder: refuses more than `MAX_PLAINTEXT_LEN` bytes first, checks each count before it
    /// allocates for it.
    pub fn decode(data: &[u8]) -> Result<Self, Malformed> {
        if data.len() > MAX_PLAINTEXT_LEN {
            return Err("longer than any record");
        }
        let mut r = Reader::new(data);
        if r.u8()? != RECORD_V1 {
            return Err("not a version 1 record");
        }
        let expires_at = r.u64()?;
        let n = r.u8()? as usize;
        if n > MAX_ENDPOINTS {
            return Err("too many endpoints");
        }
        let mut endpoints = Vec::with_capacity(n);
        for _ in 0..n {
            let kind = match r.u8()? {
                0 => EndpointKind::Public,
                1 => EndpointKind::Reflexive,
                2 => EndpointKind::Mapped,
                _ => return Err("unknown endpoint kind"),
            };
            let label = r.short_bytes(MAX_LABEL_LEN, "bad WAN label")?;
            let wan = std::str::from_utf8(label).ok().filter(|l| is_safe_label(l)).ok_or("bad WAN label")?;
            endpoints.push(Endpoint { kind, wan: wan.to_string(), addr: read_addr(&mut r)? });
        }
        let n = r.u8()? as usize;
        if n > MAX_LAN_ADDRS {
            return Err("too many LAN addresses");
        }
        let mut lan = Vec::with_capacity(n);
        for _ in 0..n {
            lan.push(read_addr(&mut r)?);
        }
        let n = r.u8()? as usize;
        if n > MAX_RELAYS {
            return Err("too many relays");
        }
        let mut relays = Vec::with_capacity(n);
        for _ in 0..n {
            relays.push(r.array()?);
        }
        if r.remaining() != 0 {
            return Err("trailing bytes");
        }
        Ok(Record { expires_at, endpoints, lan, relays })
    }
}

/// What members derive from the network key to find and read each other's records.
pub struct NetworkKeys {
    pub salt: [u8; SALT_LEN],
    pub lan_tag: [u8; 8],
    record_key: LessSafeKey,
}

struct Len(usize);
impl ring::hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn derive<const N: usize>(network_key: &[u8; 32], info: &[u8]) -> [u8; N] {
    let prk = Salt::new(HKDF_SHA256, NETWORK_HKDF_SALT).extract(network_key);
    let mut out = [0u8; N];
    prk.expand(&[info], Len(N)).and_then(|okm| okm.fill(&mut out)).expect("HKDF output of at most 255 blocks");
    out
}

fn associated_data(node: &[u8; 32], seq: i64) -> Vec<u8> {
    [SEAL_CONTEXT, node, &seq.to_be_bytes()].concat()
}

/// Why a sealed value did not open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenError {
    /// Not sealed with our network's record key (a non-member's, or altered): nothing was parsed.
    NotMember,
    /// Opened, but the plaintext is not a record.
    Malformed(Malformed),
}

impl NetworkKeys {
    pub fn new(network_key: &[u8; 32]) -> Self {
        let key = derive::<32>(network_key, b"record key");
        let record_key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key).expect("32-byte key"));
        Self { salt: derive(network_key, b"dht salt"), lan_tag: derive(network_key, b"lan tag"), record_key }
    }

    /// The BEP 44 value for `record` published by `node` at `seq`; `nonce` must never repeat for the
    /// key (the caller draws it from the OS random source).
    pub fn seal(
        &self,
        node: &[u8; 32],
        seq: i64,
        record: &Record,
        nonce: [u8; NONCE_LEN],
    ) -> Result<Vec<u8>, Malformed> {
        let mut body = record.encode()?;
        self.record_key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(associated_data(node, seq)),
                &mut body,
            )
            .expect("a record is far below ChaCha20-Poly1305's message limit");
        Ok([&[SEALED_V1][..], &nonce, &body].concat())
    }

    /// Opens and decodes a BEP 44 value of `node` at `seq`. Authenticated before anything is parsed.
    pub fn open(&self, node: &[u8; 32], seq: i64, value: &[u8]) -> Result<Record, OpenError> {
        if value.len() > MAX_VALUE_LEN || value.len() < 1 + NONCE_LEN + TAG_LEN || value[0] != SEALED_V1 {
            // Not something a member seals; which of the ways it is wrong does not matter to anyone.
            return Err(OpenError::NotMember);
        }
        let nonce: [u8; NONCE_LEN] = value[1..1 + NONCE_LEN].try_into().expect("checked length");
        let mut body = value[1 + NONCE_LEN..].to_vec();
        let plain = self
            .record_key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(associated_data(node, seq)), &mut body)
            .map_err(|_| OpenError::NotMember)?;
        Record::decode(plain).map_err(OpenError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            expires_at: 1_800_000_000,
            endpoints: vec![
                Endpoint { kind: EndpointKind::Public, wan: "wan0".into(), addr: "203.0.113.5:4433".parse().unwrap() },
                Endpoint {
                    kind: EndpointKind::Reflexive,
                    wan: "lte".into(),
                    addr: "[2001:db8::1]:4433".parse().unwrap(),
                },
            ],
            lan: vec!["192.168.1.2:4433".parse().unwrap()],
            relays: vec![[9; 32]],
        }
    }

    #[test]
    fn seal_and_open_round_trip() {
        let keys = NetworkKeys::new(&[1; 32]);
        let v = keys.seal(&[2; 32], 77, &record(), [3; 12]).unwrap();
        assert!(v.len() <= MAX_VALUE_LEN);
        assert_eq!(keys.open(&[2; 32], 77, &v), Ok(record()));
    }

    #[test]
    fn the_largest_record_fits_a_bep44_value() {
        let label = "w".repeat(MAX_LABEL_LEN);
        let addr: SocketAddr = "[2001:db8::1]:65535".parse().unwrap();
        let big = Record {
            expires_at: u64::MAX,
            endpoints: vec![Endpoint { kind: EndpointKind::Mapped, wan: label, addr }; MAX_ENDPOINTS],
            lan: vec![addr; MAX_LAN_ADDRS],
            relays: vec![[0xff; 32]; MAX_RELAYS],
        };
        let v = NetworkKeys::new(&[1; 32]).seal(&[2; 32], i64::MAX, &big, [0; 12]).unwrap();
        assert!(v.len() <= MAX_VALUE_LEN, "{}", v.len());
        assert_eq!(NetworkKeys::new(&[1; 32]).open(&[2; 32], i64::MAX, &v), Ok(big));
    }

    #[test]
    fn another_network_key_node_or_seq_does_not_open() {
        let keys = NetworkKeys::new(&[1; 32]);
        let v = keys.seal(&[2; 32], 77, &record(), [3; 12]).unwrap();
        assert_eq!(NetworkKeys::new(&[4; 32]).open(&[2; 32], 77, &v), Err(OpenError::NotMember));
        assert_eq!(keys.open(&[5; 32], 77, &v), Err(OpenError::NotMember));
        assert_eq!(keys.open(&[2; 32], 78, &v), Err(OpenError::NotMember));
        for i in 0..v.len() {
            let mut bad = v.clone();
            bad[i] ^= 0x20;
            assert_eq!(keys.open(&[2; 32], 77, &bad), Err(OpenError::NotMember), "flip at {i}");
        }
        assert_eq!(keys.open(&[2; 32], 77, &v[..20]), Err(OpenError::NotMember));
        assert_eq!(keys.open(&[2; 32], 77, &[]), Err(OpenError::NotMember));
    }

    #[test]
    fn salts_differ_per_network_and_keys_are_not_the_salt() {
        assert_ne!(NetworkKeys::new(&[1; 32]).salt, NetworkKeys::new(&[2; 32]).salt);
        assert_ne!(NetworkKeys::new(&[1; 32]).lan_tag, NetworkKeys::new(&[2; 32]).lan_tag);
        assert_ne!(NetworkKeys::new(&[1; 32]).lan_tag[..], NetworkKeys::new(&[1; 32]).salt[..8]);
        assert_eq!(NetworkKeys::new(&[1; 32]).salt, NetworkKeys::new(&[1; 32]).salt);
    }

    #[test]
    fn a_sealed_non_record_is_malformed_not_trusted() {
        let keys = NetworkKeys::new(&[1; 32]);
        // Seal arbitrary bytes the way a member's broken software might: authenticated, but not a record.
        let mut body = vec![RECORD_V1, 0, 0];
        keys.record_key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key([1; 12]),
                Aad::from(associated_data(&[2; 32], 5)),
                &mut body,
            )
            .unwrap();
        let v = [&[SEALED_V1][..], &[1; 12], &body].concat();
        assert_eq!(keys.open(&[2; 32], 5, &v), Err(OpenError::Malformed("truncated")));
    }

    #[test]
    fn decoder_refusals() {
        let good = record().encode().unwrap();
        for n in 0..good.len() {
            assert!(Record::decode(&good[..n]).is_err());
        }
        assert_eq!(Record::decode(&[&good[..], &[0]].concat()), Err("trailing bytes"));
        assert_eq!(Record::decode(&[2]), Err("not a version 1 record"));
        assert_eq!(Record::decode(&vec![1; MAX_PLAINTEXT_LEN + 1]), Err("longer than any record"));
        let mut kind = good.clone();
        kind[10] = 3;
        assert_eq!(Record::decode(&kind), Err("unknown endpoint kind"));
        let mut label = good.clone();
        label[12] = b' ';
        assert_eq!(Record::decode(&label), Err("bad WAN label"));
        let mut many = good.clone();
        many[9] = 13;
        assert_eq!(Record::decode(&many), Err("too many endpoints"));
        let mut r = record();
        r.relays = vec![[0; 32]; 5];
        assert_eq!(r.encode(), Err("too many relays"));
        r.relays.clear();
        r.endpoints[0].wan = "a b".into();
        assert!(r.encode().unwrap_err().starts_with("WAN label"));
    }
}
