"""Additively homomorphic encryption of model updates: Paillier (exact) and CKKS (approximate).

Who holds what:

- **Key holder** (a designated client, or every client sharing one keypair generated among them,
  never the server): :class:`PaillierKeyHolder` / :class:`CkksKeyHolder` hold the secret key and
  decrypt only the *aggregate*.
- **Clients** encrypt their weighted update with the public side.
- **Server**: holds only the public side (:class:`PaillierPublic` / :class:`CkksPublic`, built
  from bytes with no secret key in them) and sums ciphertexts it cannot read.

Paillier (``phe``; Paillier 1999): plaintexts are integers mod the key's n, and the product of
ciphertexts decrypts to the sum of plaintexts. A client with n_k samples encodes its delta in
fixed point, q = round(d * 2^f), checks |q| < 2^(b-1), and encrypts the slot values
n_k (q + 2^(b-1)) >= 0. Each slot is ``slot_bits = b + ceil(log2(max_weight + 1))`` wide, so a
sum over clients whose weights total n <= ``max_weight`` never carries into the next slot, and
``(key_bits - 1) // slot_bits`` slots are packed into one plaintext (39 for a 2048-bit key and
the defaults): one ciphertext per ~39 coordinates instead of one each. The key holder decrypts,
unpacks, subtracts n 2^(b-1) and gets S = sum_k n_k q_k exactly; the mean delta is
S / n / 2^f in float64, bit-identical to :func:`fixed_point_mean` on the plaintexts.

CKKS (``tenseal``; Cheon et al. 2017; :mod:`fedfleet.privacy._he_ckks`) encrypts vectors of
reals approximately: clients encrypt n_k d_k in chunks of ``poly_modulus_degree / 2`` slots, the
server adds, the key holder decrypts and divides by n. With the defaults (degree 8192, scale
2^40) the error of the mean is below ``he_ckks.CKKS_TOLERANCE`` (absolute, per coordinate) for
weighted values |n_k d_k| up to ~1e5.

Ciphertexts travel as :class:`EncryptedVector`, serialised to bytes by a fixed binary format
(no pickle): a header naming the scheme, the key's fingerprint, the vector length and weight,
the ciphertext chunks, and a SHA-256 checksum. A ciphertext under another key, a truncated or
garbled one, or (Paillier) an aggregate that decrypts out of range raises :class:`HEError`.
The checksum detects corruption, not forgery: a client can still encrypt a bad update, which the
server cannot see, so HE aggregation fits cross-silo federations of known participants.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from fedfleet._extras import require
from fedfleet.errors import FedfleetError

if TYPE_CHECKING:  # phe (the `he` extra) is imported where Paillier keys are made
    import phe

__all__ = [
    "EncryptedVector",
    "FixedPoint",
    "HEError",
    "HEPublic",
    "PaillierKeyHolder",
    "PaillierPublic",
    "fixed_point_mean",
]

Scheme = Literal["paillier", "ckks"]
_SCHEME_CODE = {"paillier": 1, "ckks": 2}
_MAGIC = b"FFHE"
_HEADER = struct.Struct(">4sBB16sQQI")  # magic, version, scheme, key id, length, weight, chunks
_VERSION = 1
PAILLIER_SECRET_MAGIC = b"FFPS"


class HEError(FedfleetError, ValueError):
    """A ciphertext is malformed, under another key, or decrypts to an impossible value."""


@dataclass(frozen=True, kw_only=True)
class FixedPoint:
    """Fixed-point encoding of update coordinates for Paillier.

    Attributes:
        frac_bits: f; values are rounded to multiples of 2^-f.
        value_bits: b; encoded values must satisfy |round(d 2^f)| < 2^(b-1), i.e.
            |d| < 2^(b-1-f) (128 with the defaults); clip updates below that.
        max_weight: the largest total weight n (sum of clients' sample counts) a sum may
            carry; sets the headroom bits of each packed slot.
    """

    frac_bits: int = 24
    value_bits: int = 32
    max_weight: int = 2**20

    @property
    def slot_bits(self) -> int:
        return self.value_bits + math.ceil(math.log2(self.max_weight + 1))

    @property
    def max_abs(self) -> float:
        """The largest magnitude that encodes."""
        return (2 ** (self.value_bits - 1) - 1) / 2**self.frac_bits

    def encode(self, values: np.ndarray) -> np.ndarray:
        """``round(values * 2^f)`` as int64, refusing values out of range."""
        v = np.asarray(values, dtype=np.float64)
        if not np.isfinite(v).all():
            raise HEError("cannot encode non-finite values (NaN or Inf) in fixed point")
        q = np.rint(v * 2.0**self.frac_bits)
        limit = 2 ** (self.value_bits - 1)
        if q.size and np.abs(q).max() >= limit:
            i = int(np.abs(q).argmax())
            raise HEError(
                f"coordinate {i} = {v[i]:g} is outside the fixed-point range +-{self.max_abs:g} "
                f"(value_bits={self.value_bits}, frac_bits={self.frac_bits}); clip the update or "
                "raise value_bits"
            )
        return q.astype(np.int64)


def fixed_point_mean(
    deltas: Sequence[np.ndarray], weights: Sequence[int], fixed_point: FixedPoint
) -> np.ndarray:
    """The plaintext computation Paillier aggregation reproduces bit for bit:
    ``(sum_k n_k round(d_k 2^f)) / n / 2^f`` with an exact integer sum."""
    total = np.zeros(len(deltas[0]), dtype=object)
    for d, n_k in zip(deltas, weights, strict=True):
        total += fixed_point.encode(d).astype(object) * int(n_k)
    return _decode_sum(total, int(sum(weights)), fixed_point)


def _decode_sum(total: np.ndarray, weight: int, fp: FixedPoint) -> np.ndarray:
    # exact integer sums -> float64 once, then two divisions, identical on either path
    return total.astype(np.float64) / weight / 2.0**fp.frac_bits


@dataclass(frozen=True)
class EncryptedVector:
    """A vector of ``length`` values encrypted under the key ``key_id``, carrying ``weight``
    (n_k for one client, n for a sum) in the clear, as ciphertext ``chunks``."""

    scheme: Scheme
    key_id: bytes
    length: int
    weight: int
    chunks: tuple[bytes, ...]

    def to_bytes(self) -> bytes:
        head = _HEADER.pack(
            _MAGIC,
            _VERSION,
            _SCHEME_CODE[self.scheme],
            self.key_id,
            self.length,
            self.weight,
            len(self.chunks),
        )
        body = b"".join(struct.pack(">I", len(c)) + c for c in self.chunks)
        return head + body + hashlib.sha256(head + body).digest()

    @classmethod
    def from_bytes(cls, data: bytes) -> EncryptedVector:
        """Parse :meth:`to_bytes` output; raises :class:`HEError` on anything else."""
        if len(data) < _HEADER.size + 32:
            raise HEError(f"encrypted vector of {len(data)} bytes is too short to be one")
        payload, digest = data[:-32], data[-32:]
        if hashlib.sha256(payload).digest() != digest:
            raise HEError(
                "encrypted vector failed its checksum: it was truncated or garbled in transit"
            )
        magic, version, code, key_id, length, weight, count = _HEADER.unpack_from(payload)
        if magic != _MAGIC or version != _VERSION:
            raise HEError(f"not a fedfleet encrypted vector (magic {magic!r}, version {version})")
        schemes = {v: k for k, v in _SCHEME_CODE.items()}
        if code not in schemes:
            raise HEError(f"unknown HE scheme code {code}")
        chunks, pos = [], _HEADER.size
        for _ in range(count):
            if pos + 4 > len(payload):
                raise HEError("encrypted vector ends inside its chunk table")
            (size,) = struct.unpack_from(">I", payload, pos)
            chunks.append(payload[pos + 4 : pos + 4 + size])
            pos += 4 + size
        if pos != len(payload):
            raise HEError("encrypted vector has trailing bytes after its chunks")
        return cls(schemes[code], key_id, length, weight, tuple(chunks))  # type: ignore[arg-type]


class HEPublic(Protocol):
    """What clients and the server hold: encrypt, sum, and the key's fingerprint. No secret."""

    @property
    def key_id(self) -> bytes: ...

    def encrypt(self, delta: np.ndarray, weight: int) -> EncryptedVector:
        """Encrypt ``weight * delta`` (client side)."""
        ...

    def sum(self, vectors: Sequence[EncryptedVector]) -> EncryptedVector:
        """Sum ciphertexts (server side); weights add in the clear."""
        ...

    def validate(self, vector: EncryptedVector, length: int) -> None:
        """Raise :class:`HEError` unless ``vector`` is ``length`` values under this key."""
        ...

    def to_bytes(self) -> bytes: ...


def _check(vectors: Sequence[EncryptedVector], scheme: Scheme, key_id: bytes) -> None:
    if not vectors:
        raise HEError("nothing to sum: no encrypted vectors")
    for i, v in enumerate(vectors):
        if v.scheme != scheme:
            raise HEError(f"vector {i} is a {v.scheme} ciphertext, expected {scheme}")
        if v.key_id != key_id:
            raise HEError(
                f"vector {i} was encrypted under key {v.key_id.hex()}, not this federation's "
                f"key {key_id.hex()}; is the client using a stale or foreign public key?"
            )
        if v.length != vectors[0].length:
            raise HEError(f"vector {i} has {v.length} values, vector 0 has {vectors[0].length}")


# ---------------------------------------------------------------------------------- Paillier


def _phe() -> ModuleType:
    """The ``phe`` package (Paillier), or MissingExtra naming the ``he`` extra."""
    return require("phe", feature="Paillier HE aggregation")


class PaillierPublic:
    """The public side of a Paillier key plus the fixed-point format (clients and server)."""

    def __init__(self, n: int, fixed_point: FixedPoint) -> None:
        self._pk = _phe().PaillierPublicKey(n)
        self.fixed_point = fixed_point
        self.slots = (n.bit_length() - 1) // fixed_point.slot_bits
        if self.slots < 1:
            raise HEError(
                f"a {n.bit_length()}-bit key cannot hold one {fixed_point.slot_bits}-bit slot"
            )
        self._width = (2 * n.bit_length() + 7) // 8  # bytes of a ciphertext mod n^2

    @property
    def n(self) -> int:
        return int(self._pk.n)

    @property
    def key_id(self) -> bytes:
        return hashlib.sha256(b"paillier" + self.n.to_bytes(self._width, "big")).digest()[:16]

    def to_bytes(self) -> bytes:
        fp = self.fixed_point
        head = struct.pack(">III", fp.frac_bits, fp.value_bits, fp.max_weight.bit_length())
        return head + self.n.to_bytes((self.n.bit_length() + 7) // 8, "big")

    @classmethod
    def from_bytes(cls, data: bytes) -> PaillierPublic:
        frac, value, wbits = struct.unpack_from(">III", data)
        fp = FixedPoint(frac_bits=frac, value_bits=value, max_weight=2**wbits - 1)
        return cls(int.from_bytes(data[12:], "big"), fp)

    def pack(self, slots: np.ndarray) -> list[int]:
        """Non-negative slot integers -> plaintexts of ``self.slots`` slots each."""
        bits = self.fixed_point.slot_bits
        out = []
        for start in range(0, len(slots), self.slots):
            m = 0
            for s in reversed(slots[start : start + self.slots].tolist()):
                m = (m << bits) | int(s)
            out.append(m)
        return out

    def encrypt(self, delta: np.ndarray, weight: int) -> EncryptedVector:
        fp = self.fixed_point
        if not 0 < int(weight) <= fp.max_weight:
            raise HEError(f"weight {weight} must be in 1..max_weight={fp.max_weight}")
        q = fp.encode(delta).astype(object)
        slots = (q + 2 ** (fp.value_bits - 1)) * int(weight)  # >= 0, < weight * 2^b
        chunks = tuple(
            int(self._pk.raw_encrypt(m)).to_bytes(self._width, "big") for m in self.pack(slots)
        )
        return EncryptedVector("paillier", self.key_id, len(q), int(weight), chunks)

    def validate(self, vector: EncryptedVector, length: int) -> None:
        _check([vector], "paillier", self.key_id)
        if vector.length != length:
            raise HEError(f"it holds {vector.length} values, expected {length}")
        if not 0 < vector.weight <= self.fixed_point.max_weight:
            raise HEError(
                f"its weight {vector.weight} is outside 1..max_weight={self.fixed_point.max_weight}"
            )
        if len(vector.chunks) != -(-length // self.slots) or any(
            len(c) != self._width for c in vector.chunks
        ):
            raise HEError("its ciphertext count or widths do not match the vector length")

    def sum(self, vectors: Sequence[EncryptedVector]) -> EncryptedVector:
        _check(vectors, "paillier", self.key_id)
        weight = sum(v.weight for v in vectors)
        if weight > self.fixed_point.max_weight:
            raise HEError(
                f"total weight {weight} exceeds max_weight={self.fixed_point.max_weight}: the "
                "packed slots could overflow; raise FixedPoint.max_weight"
            )
        counts = {len(v.chunks) for v in vectors}
        if counts != {-(-vectors[0].length // self.slots)}:
            raise HEError(f"ciphertext counts {sorted(counts)} do not match the vector length")
        nsq = self._pk.nsquare
        out = []
        for parts in zip(*(v.chunks for v in vectors), strict=True):
            acc = 1
            for c in parts:
                acc = acc * int.from_bytes(c, "big") % nsq
            out.append(acc.to_bytes(self._width, "big"))
        return EncryptedVector("paillier", self.key_id, vectors[0].length, weight, tuple(out))


class PaillierKeyHolder:
    """The secret side, held by a client (never the server): generates the keypair and
    decrypts aggregates.

    Examples:
        >>> holder = PaillierKeyHolder.generate(key_bits=2048)
        >>> server_key = PaillierPublic.from_bytes(holder.public.to_bytes())  # no secret in it
    """

    def __init__(self, private_key: phe.PaillierPrivateKey, fixed_point: FixedPoint) -> None:
        self._sk = private_key
        self.public = PaillierPublic(int(private_key.public_key.n), fixed_point)

    @classmethod
    def generate(
        cls, key_bits: int = 2048, fixed_point: FixedPoint | None = None
    ) -> PaillierKeyHolder:
        """A fresh keypair (``phe`` draws its primes from the OS CSPRNG). Use >= 2048 bits;
        smaller keys are for tests only."""
        _, sk = _phe().generate_paillier_keypair(n_length=key_bits)
        return cls(sk, fixed_point or FixedPoint())

    def secret_bytes(self) -> bytes:
        """Secret key (p, q) and fixed-point format for the key holders' own files (never the
        server's); raw integers, read by ``fedfleet.net.secure._he_keys.load_key_holder``."""
        fp, sk = self.public.fixed_point, self._sk
        p, q = int(sk.p), int(sk.q)
        width = (max(p, q).bit_length() + 7) // 8
        head = struct.pack(">4sIIIH", PAILLIER_SECRET_MAGIC, fp.frac_bits, fp.value_bits,
                           fp.max_weight.bit_length(), width)  # fmt: skip
        return head + p.to_bytes(width, "big") + q.to_bytes(width, "big")

    def decrypt_sum(self, aggregate: EncryptedVector) -> np.ndarray:
        """The exact integer sum S = sum_k n_k q_k (object array of Python ints)."""
        pub = self.public
        _check([aggregate], "paillier", pub.key_id)
        fp, bits = pub.fixed_point, pub.fixed_point.slot_bits
        if len(aggregate.chunks) != -(-aggregate.length // pub.slots):
            raise HEError("ciphertext count does not match the vector length")
        mask = (1 << bits) - 1
        offset = aggregate.weight * 2 ** (fp.value_bits - 1)
        bound = aggregate.weight * 2**fp.value_bits
        values: list[int] = []
        for i, c in enumerate(aggregate.chunks):
            m = int(self._sk.raw_decrypt(int.from_bytes(c, "big")))
            take = min(pub.slots, aggregate.length - i * pub.slots)
            for _ in range(take):
                s = m & mask
                if s >= bound:
                    raise HEError(
                        f"ciphertext {i} decrypts to a slot out of range: it was not produced "
                        "by this key's holders or was tampered with"
                    )
                values.append(s - offset)
                m >>= bits
            if m:
                raise HEError(
                    f"ciphertext {i} decrypts to bits beyond its slots: it was not produced by "
                    "this key's holders or was tampered with"
                )
        return np.array(values, dtype=object)

    def decrypt_mean(self, aggregate: EncryptedVector) -> np.ndarray:
        """The weighted mean delta S / n / 2^f (float64), equal to :func:`fixed_point_mean`."""
        return _decode_sum(self.decrypt_sum(aggregate), aggregate.weight, self.public.fixed_point)
