"""CKKS (approximate) additively homomorphic aggregation, with ``tenseal``: the public context
clients encrypt with and the server adds under, and the key holder's secret context.

The ciphertexts travel in :class:`fedfleet.privacy.EncryptedVector`'s format like
Paillier's; sums are within :data:`CKKS_TOLERANCE` of the plaintext mean. Paillier and what
both schemes share are in :mod:`fedfleet.privacy._he`.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

import numpy as np

from fedfleet._extras import require
from fedfleet.privacy._he import EncryptedVector, HEError, _check

__all__ = ["CKKS_SECRET_MAGIC", "CKKS_TOLERANCE", "CkksKeyHolder", "CkksPublic"]

CKKS_SECRET_MAGIC = b"FFCS"  # key holders' files (fedfleet.net.secure._he_keys reads them)

CKKS_TOLERANCE = 1e-5
"""Absolute per-coordinate error bound of a CKKS-aggregated mean delta (defaults, |n_k d_k| <=
1e5); measured errors are around 1e-7."""


def _tenseal():
    return require("tenseal", feature="CKKS HE aggregation")


class CkksPublic:
    """A CKKS context without its secret key (clients encrypt, the server adds)."""

    def __init__(self, context_bytes: bytes) -> None:
        ts = _tenseal()
        self._bytes = context_bytes
        self._ctx = ts.context_from(context_bytes)
        if self._ctx.has_secret_key():
            raise HEError("CkksPublic was given a context with a secret key; make it public first")
        self.chunk = _ckks_slots(self._ctx)

    @property
    def key_id(self) -> bytes:
        return hashlib.sha256(b"ckks" + self._bytes).digest()[:16]

    def to_bytes(self) -> bytes:
        return self._bytes

    @classmethod
    def from_bytes(cls, data: bytes) -> CkksPublic:
        return cls(data)

    def encrypt(self, delta: np.ndarray, weight: int) -> EncryptedVector:
        ts = _tenseal()
        v = np.asarray(delta, dtype=np.float64) * int(weight)
        if not np.isfinite(v).all():
            raise HEError("cannot encrypt non-finite values (NaN or Inf)")
        chunks = tuple(
            ts.ckks_vector(self._ctx, v[i : i + self.chunk].tolist()).serialize()
            for i in range(0, len(v), self.chunk)
        )
        return EncryptedVector("ckks", self.key_id, len(v), int(weight), chunks)

    def validate(self, vector: EncryptedVector, length: int) -> None:
        _check([vector], "ckks", self.key_id)
        if vector.length != length:
            raise HEError(f"it holds {vector.length} values, expected {length}")
        if len(vector.chunks) != -(-length // self.chunk):
            raise HEError("its ciphertext count does not match the vector length")
        if vector.weight < 1:
            raise HEError(f"its weight {vector.weight} is not a positive sample count")
        ts = _tenseal()
        for i, chunk in enumerate(vector.chunks):  # parsed now, so a bad one fails here alone
            size = _ckks_load(ts, self._ctx, chunk).size()
            if size != min(self.chunk, length - i * self.chunk):
                raise HEError(f"its ciphertext {i} holds {size} values, not what its place needs")

    def sum(self, vectors: Sequence[EncryptedVector]) -> EncryptedVector:
        ts = _tenseal()
        _check(vectors, "ckks", self.key_id)
        out = []
        for parts in zip(*(v.chunks for v in vectors), strict=True):
            acc = _ckks_load(ts, self._ctx, parts[0])
            for c in parts[1:]:
                acc += _ckks_load(ts, self._ctx, c)
            out.append(acc.serialize())
        weight = sum(v.weight for v in vectors)
        return EncryptedVector("ckks", self.key_id, vectors[0].length, weight, tuple(out))


def _ckks_slots(ctx) -> int:
    # tenseal does not expose the degree directly; a one-slot vector's size() does not help, so
    # read it from the SEAL parameters behind the context
    return int(ctx.seal_context().data.first_context_data().parms().poly_modulus_degree() // 2)


def _ckks_load(ts, ctx, data: bytes):
    try:
        return ts.ckks_vector_from(ctx, data)
    except Exception as err:  # tenseal raises bare ValueError/RuntimeError on bad bytes
        raise HEError(f"malformed CKKS ciphertext: {err}") from err


class CkksKeyHolder:
    """The CKKS secret context, held by a client (never the server)."""

    def __init__(self, context, public_bytes: bytes | None = None) -> None:
        self._ctx = context
        if public_bytes is None:
            public = context.copy()
            public.make_context_public()
            public_bytes = public.serialize()
        self.public = CkksPublic(public_bytes)

    @classmethod
    def generate(
        cls,
        poly_modulus_degree: int = 8192,
        coeff_mod_bit_sizes: Sequence[int] = (60, 40, 40, 60),
        scale_bits: int = 40,
    ) -> CkksKeyHolder:
        """A fresh CKKS context (128-bit security at the defaults)."""
        ts = _tenseal()
        ctx = ts.context(
            ts.SCHEME_TYPE.CKKS, poly_modulus_degree, coeff_mod_bit_sizes=list(coeff_mod_bit_sizes)
        )
        ctx.global_scale = 2.0**scale_bits
        return cls(ctx)

    def secret_bytes(self) -> bytes:
        """The context with its secret key (tenseal's format) for the key holders' own files."""
        # the public context is kept as it was serialised: its bytes are the key id
        public = self.public.to_bytes()
        secret = self._ctx.serialize(save_secret_key=True)
        return CKKS_SECRET_MAGIC + struct.pack(">Q", len(public)) + public + secret

    def decrypt_mean(self, aggregate: EncryptedVector) -> np.ndarray:
        """The weighted mean delta (sum of n_k d_k over n), within :data:`CKKS_TOLERANCE`."""
        ts = _tenseal()
        _check([aggregate], "ckks", self.public.key_id)
        parts = [np.asarray(_ckks_load(ts, self._ctx, c).decrypt()) for c in aggregate.chunks]
        total = np.concatenate(parts) if parts else np.zeros(0)
        if total.shape != (aggregate.length,):
            raise HEError(f"CKKS aggregate holds {total.size} values, expected {aggregate.length}")
        return total / aggregate.weight
