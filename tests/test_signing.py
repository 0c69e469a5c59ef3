"""Ed25519 signatures through the core (`_core.sign` / `_core.verify`), made with the node key seed."""

from __future__ import annotations

import pytest

from quicether import _core

# RFC 8032 section 7.1, TEST 2 (one-byte message 0x72).
RFC_SEED = bytes.fromhex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
RFC_PUBLIC = bytes.fromhex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
RFC_SIGNATURE = bytes.fromhex(
    "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
    "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
)


def test_sign_matches_rfc8032_and_the_node_public_key() -> None:
    assert _core.public_key_of_seed(RFC_SEED) == RFC_PUBLIC
    assert _core.sign(RFC_SEED, b"\x72") == RFC_SIGNATURE
    assert _core.verify(RFC_PUBLIC, b"\x72", RFC_SIGNATURE)


def test_verify_refuses_changed_message_signature_or_key() -> None:
    seed = _core.generate_seed()
    key = _core.public_key_of_seed(seed)
    sig = _core.sign(seed, b"certificate body")
    assert _core.verify(key, b"certificate body", sig)
    assert not _core.verify(key, b"certificate bodY", sig)
    assert not _core.verify(key, b"certificate body", bytes([sig[0] ^ 1]) + sig[1:])
    assert not _core.verify(_core.public_key_of_seed(_core.generate_seed()), b"certificate body", sig)
    assert not _core.verify(key[:31], b"certificate body", sig)
    assert not _core.verify(key, b"certificate body", sig[:63])


def test_sign_needs_a_32_byte_seed() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        _core.sign(b"short", b"m")
