"""The cryptographic primitives of SecAgg, all from ``cryptography``: X25519 key agreement,
HKDF-SHA256 key derivation, ChaCha20-Poly1305 authenticated encryption of the key shares, and the
ChaCha20 keystream as the PRG that expands a 256-bit seed into a mask vector.

Every derived key is bound by the HKDF ``info`` to its purpose and the aggregation's round id, so
the share-encryption key and the mask seed of the same pair of clients are independent, and keys
of one round say nothing about another's.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedfleet.privacy.secagg._errors import SecAggProtocolError

__all__ = [
    "KEY_BYTES",
    "agree",
    "decrypt",
    "encrypt",
    "expand_mask",
    "is_usable_public_key",
    "private_bytes",
    "private_key_from_bytes",
    "public_bytes",
]

KEY_BYTES = 32
"""X25519 keys, seeds and derived keys are all 32 bytes (256 bits)."""

_RAW = serialization.Encoding.Raw


def public_bytes(key: X25519PrivateKey) -> bytes:
    """The 32-byte public key of ``key``."""
    return key.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)


def private_bytes(key: X25519PrivateKey) -> bytes:
    """The 32 raw bytes of a private key (what gets secret-shared)."""
    return key.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def private_key_from_bytes(raw: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(raw)


def is_usable_public_key(public: bytes) -> bool:
    """False for the X25519 encodings of small-order points (e.g. all zeros): any exchange with
    them gives the all-zero secret, which ``cryptography`` refuses, so a client advertising one
    would make every neighbour's key agreement fail."""
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        return False
    return True


def agree(private: X25519PrivateKey, peer_public: bytes, purpose: bytes, round_id: int) -> bytes:
    """HKDF-SHA256(X25519(private, peer_public)) bound to ``purpose`` and the round: a 32-byte key
    both ends of the pair derive alike. A small-order peer key (see :func:`is_usable_public_key`,
    which the server applies to every advertised key) raises :class:`SecAggProtocolError`."""
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:
        raise SecAggProtocolError(
            f"key agreement ({purpose.decode()}) failed: the peer's public key is a small-order "
            "X25519 point"
        ) from None
    info = b"fedfleet-secagg/" + purpose + b"/" + round_id.to_bytes(8, "big")
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)


def _nonce(sender: int, recipient: int) -> bytes:
    # One key per unordered pair and round, one message per direction: (sender, recipient) is a
    # unique nonce under that key, so no random nonce is needed.
    return sender.to_bytes(6, "big") + recipient.to_bytes(6, "big")


def encrypt(key: bytes, sender: int, recipient: int, plaintext: bytes, aad: bytes) -> bytes:
    """ChaCha20-Poly1305 of ``plaintext`` from ``sender`` to ``recipient`` (16-byte tag added)."""
    return ChaCha20Poly1305(key).encrypt(_nonce(sender, recipient), plaintext, aad)


def decrypt(key: bytes, sender: int, recipient: int, ciphertext: bytes, aad: bytes) -> bytes:
    """Inverse of :func:`encrypt`; raises ``cryptography.exceptions.InvalidTag`` if tampered."""
    return ChaCha20Poly1305(key).decrypt(_nonce(sender, recipient), ciphertext, aad)


def expand_mask(seed: bytes, length: int, bits: int) -> np.ndarray:
    """PRG(seed): ``length`` uniform elements of Z_{2^bits} (uint64) from the ChaCha20 keystream
    under key ``seed`` (zero nonce: each seed is used for exactly one expansion). ``bits`` <= 64
    and the modulus is a power of two, so masking the low bits keeps every value exactly
    uniform."""
    encryptor = Cipher(algorithms.ChaCha20(seed, b"\x00" * 16), mode=None).encryptor()
    stream = encryptor.update(bytes(8 * length))
    out = np.frombuffer(stream, dtype=np.uint64).copy()
    if bits < 64:
        out &= np.uint64((1 << bits) - 1)
    return out
