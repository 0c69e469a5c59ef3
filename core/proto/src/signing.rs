//! Ed25519 signatures with a node or network key seed: the same 32-byte seed the node key file holds and
//! `quicether-io`'s TLS identity is made from (RFC 8032 keys, `ring`), so a signature made here verifies
//! against the public key peers pin. Certificates, revocations and invites (Python) are signed with it.

use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

pub const SEED_LEN: usize = 32;
pub const PUBLIC_KEY_LEN: usize = 32;
pub const SIGNATURE_LEN: usize = 64;

fn pair(seed: &[u8; SEED_LEN]) -> Ed25519KeyPair {
    Ed25519KeyPair::from_seed_unchecked(seed).expect("any 32 bytes are an Ed25519 seed")
}

/// The Ed25519 public key of a seed.
pub fn public_key(seed: &[u8; SEED_LEN]) -> [u8; PUBLIC_KEY_LEN] {
    pair(seed).public_key().as_ref().try_into().expect("Ed25519 public keys are 32 bytes")
}

/// Signs `message` (Ed25519 is deterministic: the same seed and message give the same signature).
pub fn sign(seed: &[u8; SEED_LEN], message: &[u8]) -> [u8; SIGNATURE_LEN] {
    pair(seed).sign(message).as_ref().try_into().expect("Ed25519 signatures are 64 bytes")
}

/// True if `signature` is `public_key`'s signature of `message`. Wrong lengths are simply invalid.
pub fn verify(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    public_key.len() == PUBLIC_KEY_LEN
        && signature.len() == SIGNATURE_LEN
        && UnparsedPublicKey::new(&ED25519, public_key).verify(message, signature).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc8032_test_vector_1() {
        // RFC 8032 section 7.1, TEST 1 (empty message).
        let seed: [u8; 32] =
            hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60").try_into().unwrap();
        let public = hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
        let sig = hex(concat!(
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155",
            "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        ));
        assert_eq!(public_key(&seed).to_vec(), public);
        assert_eq!(sign(&seed, b"").to_vec(), sig);
        assert!(verify(&public, b"", &sig));
    }

    #[test]
    fn refuses_other_message_key_or_length() {
        let seed = [7u8; 32];
        let sig = sign(&seed, b"hello");
        let key = public_key(&seed);
        assert!(verify(&key, b"hello", &sig));
        assert!(!verify(&key, b"hellp", &sig));
        assert!(!verify(&public_key(&[8u8; 32]), b"hello", &sig));
        let mut bad = sig;
        bad[10] ^= 1;
        assert!(!verify(&key, b"hello", &bad));
        assert!(!verify(&key[..31], b"hello", &sig));
        assert!(!verify(&key, b"hello", &sig[..63]));
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }
}
