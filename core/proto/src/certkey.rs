//! The node key inside a peer certificate. Nodes authenticate with self-signed X.509 certificates whose
//! subject public key is the node's Ed25519 key; trust comes from pinning that key, not from the chain.
//!
//! We walk the DER structure to the certificate's own SubjectPublicKeyInfo rather than searching for a
//! byte pattern: an attacker could otherwise plant another node's key in an extension.
//!
//! Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }
//! TBSCertificate ::= SEQUENCE { [0] version OPTIONAL, serialNumber, signature, issuer, validity,
//!                               subject, subjectPublicKeyInfo, [1] [2] unique IDs OPTIONAL,
//!                               [3] Extensions OPTIONAL }
//! Extension ::= SEQUENCE { extnID OID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING }
//!
//! A member of a mesh network also carries its membership certificate (`membership.rs`) in one extension,
//! `MEMBERSHIP_OID`, so a node accepts it during the TLS handshake without a configured key.

/// DER of `SEQUENCE { SEQUENCE { OID 1.3.101.112 (Ed25519) } BIT STRING (0 unused bits) }` up to the key.
const ED25519_SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// The membership extension's OID, 2.25.5856171850509472305 (an unregistered UUID-form arc, "QEMEMBR1";
/// only QuicEther nodes read it, and trust comes from the network key's signature inside, not from it).
pub const MEMBERSHIP_OID: [u64; 3] = [2, 25, 5_856_171_850_509_472_305];
/// The same OID as a DER element.
const MEMBERSHIP_OID_DER: [u8; 12] = [0x06, 0x0a, 0x69, 0xd1, 0xa2, 0xd3, 0xa8, 0xd4, 0xea, 0x89, 0xa4, 0x31];

/// One DER element split off the front of a buffer: (tag, whole element, content, rest of the buffer).
type Tlv<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

fn read_tlv(input: &[u8]) -> Option<Tlv<'_>> {
    let tag = *input.first()?;
    let first_len = *input.get(1)?;
    let (len, header) = if first_len < 0x80 {
        (first_len as usize, 2)
    } else {
        let n = (first_len & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *input.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    if end > input.len() {
        return None;
    }
    Some((tag, &input[..end], &input[header..end], &input[end..]))
}

/// The TBSCertificate of a DER certificate from its SubjectPublicKeyInfo on: (the SPKI element, what
/// follows it).
fn spki_and_rest(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let (tag, _, cert, _) = read_tlv(der)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, _, mut tbs, _) = read_tlv(cert)?;
    if tag != 0x30 {
        return None;
    }
    // Optional explicit [0] version.
    if tbs.first() == Some(&0xa0) {
        tbs = read_tlv(tbs)?.3;
    }
    // serialNumber, signature, issuer, validity, subject.
    for _ in 0..5 {
        tbs = read_tlv(tbs)?.3;
    }
    let (_, spki, _, rest) = read_tlv(tbs)?;
    Some((spki, rest))
}

/// Returns the Ed25519 public key of a DER certificate, or None if it is not one.
pub fn ed25519_key_of_cert(der: &[u8]) -> Option<[u8; 32]> {
    let (spki, _) = spki_and_rest(der)?;
    if spki.len() != ED25519_SPKI_PREFIX.len() + 32 || spki[..ED25519_SPKI_PREFIX.len()] != ED25519_SPKI_PREFIX {
        return None;
    }
    spki[ED25519_SPKI_PREFIX.len()..].try_into().ok()
}

/// The membership certificate a DER certificate carries in its `MEMBERSHIP_OID` extension (the bytes
/// inside the extension's OCTET STRING value), or None. Unverified: `membership::read_certificate` checks it.
pub fn membership_of_cert(der: &[u8]) -> Option<&[u8]> {
    let (_, mut rest) = spki_and_rest(der)?;
    while let Some((tag, _, content, next)) = read_tlv(rest) {
        rest = next;
        if tag != 0xa3 {
            continue; // [1] or [2] unique IDs
        }
        let (tag, _, mut extensions, _) = read_tlv(content)?;
        if tag != 0x30 {
            return None;
        }
        while let Some((tag, _, extension, next)) = read_tlv(extensions) {
            extensions = next;
            if tag != 0x30 {
                return None;
            }
            let (_, oid, _, mut fields) = read_tlv(extension)?;
            if oid != MEMBERSHIP_OID_DER {
                continue;
            }
            if fields.first() == Some(&0x01) {
                fields = read_tlv(fields)?.3; // critical
            }
            let (tag, _, value, _) = read_tlv(fields)?;
            let (inner_tag, _, inner, _) = read_tlv(value)?;
            return (tag == 0x04 && inner_tag == 0x04).then_some(inner);
        }
        return None;
    }
    None
}

/// DER of one value: `tag`, its definite length (short form, or long form up to 64 KiB), `content`.
pub fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = vec![tag];
    match len {
        0..=0x7f => out.push(len as u8),
        0x80..=0xff => out.extend([0x81, len as u8]),
        _ => out.extend([0x82, (len >> 8) as u8, len as u8]),
    }
    out.extend_from_slice(content);
    out
}

/// The DER value of the membership extension: the membership certificate as an OCTET STRING.
pub fn membership_extension_value(certificate: &[u8]) -> Vec<u8> {
    der(0x04, certificate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_long_form_lengths_and_rejects_truncation() {
        let mut long = vec![0x04, 0x81, 200];
        long.extend([7u8; 200]);
        let (tag, whole, content, rest) = read_tlv(&long).unwrap();
        assert_eq!((tag, whole.len(), content.len(), rest.len()), (4, 203, 200, 0));
        assert!(read_tlv(&long[..100]).is_none());
        assert!(read_tlv(&[0x30]).is_none());
    }

    #[test]
    fn rejects_non_certificates() {
        assert_eq!(ed25519_key_of_cert(b""), None);
        assert_eq!(ed25519_key_of_cert(&[0x30, 0x03, 0x02, 0x01, 0x01]), None);
    }
}
