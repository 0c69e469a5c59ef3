"""Node identity: an Ed25519 key pair. The node id is the public key, written `qe1` + base32 (lower case).

The private key file holds the 32-byte seed in base64 and must not be readable by group or others: a key
that others can read is no longer a secret, so loading refuses it rather than silently trusting it.
"""

from __future__ import annotations

import base64
import binascii
import stat
from dataclasses import dataclass
from pathlib import Path

from quicether import _core
from quicether.atomic import write_private

NODE_ID_PREFIX = "qe1"
KEY_FILE_NAME = "node.key"


class IdentityError(ValueError):
    """A key or node id that cannot be used; the message says why."""


def encode_node_id(public_key: bytes) -> str:
    return NODE_ID_PREFIX + base64.b32encode(public_key).decode().rstrip("=").lower()


def decode_node_id(node_id: str) -> bytes:
    """Parses `qe1…` into the 32-byte public key, with a message saying what is wrong."""
    text = node_id.strip()
    if not text.startswith(NODE_ID_PREFIX):
        raise IdentityError(f"node id must start with {NODE_ID_PREFIX!r}")
    body = text[len(NODE_ID_PREFIX):].upper()
    try:
        key = base64.b32decode(body + "=" * (-len(body) % 8))
    except binascii.Error as exc:
        raise IdentityError(f"node id is not valid base32: {exc}") from None
    if len(key) != 32:
        raise IdentityError(f"node id encodes {len(key)} bytes, expected 32 (wrong length)")
    return key


def short_id(node_id: str) -> str:
    return node_id[:10] + "…"


@dataclass(frozen=True)
class Identity:
    seed: bytes
    public_key: bytes

    @property
    def node_id(self) -> str:
        return encode_node_id(self.public_key)


def generate(path: Path) -> Identity:
    """Writes a new key to `path` (mode 0600, atomically); refuses to overwrite an existing key."""
    if path.exists():
        raise IdentityError(f"{path} already exists; remove it first to replace this node's identity")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    seed = _core.generate_seed()
    write_private(path, base64.b64encode(seed) + b"\n")
    return Identity(seed=seed, public_key=_core.public_key_of_seed(seed))


def load(path: Path) -> Identity:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise IdentityError(f"no node key at {path}; create one with `quicether keygen`") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityError(f"{path} is readable by others (mode {stat.S_IMODE(mode):o}); run chmod 600 {path}")
    # A damaged key is never replaced here: a new one is a new identity that no peer or certificate knows.
    restore = "restore it from a backup (a new key would be a new identity, unknown to the peers)"
    try:
        text = path.read_bytes().strip()
    except OSError as exc:
        raise IdentityError(f"{path} cannot be read: {exc.strerror or exc}") from None
    if not text:
        raise IdentityError(f"{path} is empty (truncated?): {restore}")
    try:
        seed = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise IdentityError(f"{path} is damaged: not a QuicEther key (expected base64: {exc}); {restore}"
                            ) from None
    if len(seed) != 32:
        raise IdentityError(f"{path} holds {len(seed)} bytes, expected a 32-byte Ed25519 seed (truncated?); {restore}")
    return Identity(seed=seed, public_key=_core.public_key_of_seed(seed))
