//! Which AEAD a node prefers for its QUIC paths and TCP lane (issue 17). On a CPU without AES instructions
//! (a Raspberry Pi 4's Cortex-A72 has none) AES-GCM runs in constant-time software several times slower
//! than ChaCha20-Poly1305, which needs no special instructions; with them, AES-GCM is the faster one.
//! `QUICETHER_CIPHER` ("aes" or "chacha20") overrides the choice, for benchmarks and tests.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cipher {
    AesGcm,
    ChaCha20Poly1305,
}

impl Cipher {
    pub fn name(self) -> &'static str {
        match self {
            Cipher::AesGcm => "aes-gcm",
            Cipher::ChaCha20Poly1305 => "chacha20-poly1305",
        }
    }
}

/// The cipher to prefer and why: `forced` (the environment's override) if it names one, else by whether the
/// CPU has AES instructions. An override that names nothing known is an error, not ignored.
pub fn choose(aes_instructions: bool, forced: Option<&str>) -> Result<(Cipher, String), String> {
    match forced {
        Some("aes") => Ok((Cipher::AesGcm, "set by QUICETHER_CIPHER".to_string())),
        Some("chacha20") => Ok((Cipher::ChaCha20Poly1305, "set by QUICETHER_CIPHER".to_string())),
        Some(other) => Err(format!("QUICETHER_CIPHER={other:?}: expected \"aes\" or \"chacha20\"")),
        None if aes_instructions => Ok((Cipher::AesGcm, "the CPU has AES instructions".to_string())),
        None => Ok((Cipher::ChaCha20Poly1305, "the CPU has no AES instructions".to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_decides_unless_overridden_and_a_bad_override_is_an_error() {
        assert_eq!(choose(true, None).unwrap().0, Cipher::AesGcm);
        assert_eq!(choose(false, None).unwrap().0, Cipher::ChaCha20Poly1305);
        assert_eq!(choose(true, Some("chacha20")).unwrap().0, Cipher::ChaCha20Poly1305);
        assert_eq!(choose(false, Some("aes")).unwrap().0, Cipher::AesGcm);
        assert!(choose(true, Some("des")).unwrap_err().contains("expected"));
    }
}
