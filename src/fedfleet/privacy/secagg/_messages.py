"""The messages of SecAgg / SecAgg+, one frozen dataclass per stage and direction.

They hold only bytes, integers and arrays, so any transport can serialise them; ``nbytes()`` is
the size of a compact wire encoding (4-byte ids, 32-byte keys, 66-byte shares, ciphertexts as
they are, each masked coordinate in ceil(b / 8) bytes), which is what the cost benchmark counts.

    stage 0  server -> client  Setup            parameters and the client's neighbours
    stage 1  client -> server  AdvertiseKeys    two X25519 public keys
             server -> client  PublicKeys       the neighbours' public keys
    stage 2  client -> server  ShareKeys        encrypted shares, one ciphertext per neighbour
             server -> client  ForwardedShares  the ciphertexts addressed to that client
    stage 3  client -> server  MaskedInput      the masked, quantised update
             server -> client  UnmaskRequest    which neighbours sent a masked input
    stage 4  client -> server  UnmaskResponse   shares of b_v (v survived) or of sk_v (v dropped)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedfleet.privacy.secagg._shamir import SHARE_BYTES

__all__ = [
    "AdvertiseKeys",
    "ForwardedShares",
    "MaskedInput",
    "PublicKeys",
    "Setup",
    "ShareKeys",
    "UnmaskRequest",
    "UnmaskResponse",
]

_ID = 4
_KEY = 32


@dataclass(frozen=True)
class Setup:
    """Stage 0: the aggregation's parameters and this client's neighbours (itself excluded)."""

    client_id: int
    round_id: int
    vector_length: int
    clip_range: float
    quant_range: int
    modulus_bits: int
    threshold: int
    neighbours: tuple[int, ...]

    def nbytes(self) -> int:
        return 6 * 8 + _ID * (1 + len(self.neighbours))


@dataclass(frozen=True)
class AdvertiseKeys:
    """Stage 1: the client's public keys: ``enc_public`` for encrypting shares to it,
    ``mask_public`` for the pairwise mask seeds."""

    client_id: int
    enc_public: bytes
    mask_public: bytes

    def nbytes(self) -> int:
        return _ID + 2 * _KEY


@dataclass(frozen=True)
class PublicKeys:
    """Stage 1 -> 2: ``keys[v] = (enc_public, mask_public)`` of each neighbour v that advertised."""

    client_id: int
    keys: Mapping[int, tuple[bytes, bytes]]

    def nbytes(self) -> int:
        return _ID + len(self.keys) * (_ID + 2 * _KEY)


@dataclass(frozen=True)
class ShareKeys:
    """Stage 2: ``ciphertexts[v]`` = AEAD to neighbour v of (u, v, share of b_u, share of sk_u)."""

    client_id: int
    ciphertexts: Mapping[int, bytes]

    def nbytes(self) -> int:
        return _ID + sum(_ID + len(c) for c in self.ciphertexts.values())


@dataclass(frozen=True)
class ForwardedShares:
    """Stage 2 -> 3: ``ciphertexts[v]``, the ciphertext neighbour v addressed to this client;
    its keys are the neighbours that completed stage 2 (the client masks with exactly those)."""

    client_id: int
    ciphertexts: Mapping[int, bytes]

    def nbytes(self) -> int:
        return _ID + sum(_ID + len(c) for c in self.ciphertexts.values())


@dataclass(frozen=True)
class MaskedInput:
    """Stage 3: y_u = x_u + PRG(b_u) + sum_v +-PRG(s_uv) in Z_{2^b} (uint64 array)."""

    client_id: int
    masked: np.ndarray
    modulus_bits: int

    def nbytes(self) -> int:
        return _ID + self.masked.size * ((self.modulus_bits + 7) // 8)


@dataclass(frozen=True)
class UnmaskRequest:
    """Stage 3 -> 4: the client's neighbours that sent a masked input (U3); the other
    neighbours that had shared keys count as dropped."""

    client_id: int
    survivors: tuple[int, ...]

    def nbytes(self) -> int:
        return _ID * (1 + len(self.survivors))


@dataclass(frozen=True)
class UnmaskResponse:
    """Stage 4: this client's shares of b_v for surviving v and of sk_v for dropped v, keyed by
    v. The two maps never share a key."""

    client_id: int
    self_mask_shares: Mapping[int, int]
    key_shares: Mapping[int, int]

    def nbytes(self) -> int:
        return _ID + (len(self.self_mask_shares) + len(self.key_shares)) * (_ID + SHARE_BYTES)
