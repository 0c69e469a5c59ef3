//! Coverage-guided fuzz targets for the core's decoders (certificates, revocations, DHT records, member
//! news batches, join requests and answers), built
//! with cargo-afl on the stable toolchain. From core/fuzz:
//!
//!     cargo install cargo-afl && cargo afl build --release
//!     cargo run --release --bin seeds          # corpus/<target>/seed: one valid input each
//!     mkdir -p out && cargo afl fuzz -V 60 -i corpus/record -o out/record target/release/record
//!
//! What each fuzz target feeds its input to. The properties: no input panics, allocates beyond the
//! decoders' fixed limits or loops; whatever decodes encodes back to the same bytes (one encoding per
//! value), so a refusal cannot be sidestepped by an alternative spelling.

use quicether_proto::join::{decode_answer, decode_request, encode_answer, JoinAnswer};
use quicether_proto::member_news;
use quicether_proto::membership::{read_certificate, read_revocation, RevocationSet};
use quicether_proto::record::{NetworkKeys, Record};

/// The network key the fuzzed certificates and revocations are checked against (any fixed key will do:
/// the decoder runs before the signature check, which fails for fuzzed input).
pub const NETWORK_KEY: [u8; 32] = [0x42; 32];

pub fn certificate(data: &[u8]) {
    let _ = read_certificate(data, &NETWORK_KEY, 1_800_000_000, &RevocationSet::default());
}

pub fn revocation(data: &[u8]) {
    let _ = read_revocation(data, &NETWORK_KEY);
}

pub fn record(data: &[u8]) {
    if let Ok(r) = Record::decode(data) {
        assert_eq!(r.encode().as_deref(), Ok(data), "a decoded record must encode to the same bytes");
    }
    // The sealed form: authentication fails first for anything not made with the key.
    let _ = NetworkKeys::new(&NETWORK_KEY).open(&[1; 32], 1, data);
}

pub fn member_news(data: &[u8]) {
    if let Ok(items) = member_news::decode(data) {
        assert_eq!(member_news::encode(&items), data, "a decoded batch must encode to the same bytes");
    }
}

/// The invite key the fuzzed join requests are read for.
pub const INVITE_KEY: [u8; 32] = [0x24; 32];

pub fn join(data: &[u8]) {
    let _ = decode_request(data, &INVITE_KEY);
    if let Ok(answer @ JoinAnswer::Certified(_)) = decode_answer(data) {
        assert_eq!(encode_answer(&answer), data, "a decoded answer must encode to the same bytes");
    }
}

#[cfg(test)]
mod tests {
    /// Each target on its seed (`cargo run --bin seeds` first): a valid input passes its own property.
    #[test]
    fn every_target_takes_its_seed() {
        let targets: [(&str, fn(&[u8])); 5] = [
            ("certificate", super::certificate),
            ("revocation", super::revocation),
            ("record", super::record),
            ("member_news", super::member_news),
            ("join", super::join),
        ];
        for (name, target) in targets {
            target(&std::fs::read(format!("corpus/{name}/seed")).unwrap());
        }
    }
}
