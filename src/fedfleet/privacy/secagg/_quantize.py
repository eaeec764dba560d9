"""Fixed-point quantisation of float updates into Z_m, m = 2^bits, and back.

A coordinate x is clipped to [-c, c] and mapped to q = rint(x * R / c), an integer in [-R, R]
(R = ``quant_range``), stored mod m in two's-complement style. The quantisation error is at most
c / (2R) per coordinate and client.

Overflow bound: the sum over n clients lies in [-nR, nR], which the signed representatives of
Z_m ({-m/2, ..., m/2 - 1}) hold exactly iff 2nR < m, i.e. ``bits >= ceil(log2(2 n R + 1))``;
:func:`modulus_bits` returns that. So summing mod m and taking the signed representative gives
the integer sum of the quantised inputs bit for bit, and de-quantising gives ``sum_q * c / R``.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["dequantize", "modulus_bits", "quantize", "to_signed"]


def modulus_bits(num_clients: int, quant_range: int) -> int:
    """The fewest bits b with 2^b > 2 * num_clients * quant_range (no overflow in the sum)."""
    return max(1, math.ceil(math.log2(2 * num_clients * quant_range + 1)))


def quantize(x: np.ndarray, clip_range: float, quant_range: int, bits: int) -> np.ndarray:
    """Clip to [-clip_range, clip_range], scale to [-R, R], round to nearest (half to even),
    and return the values mod 2^bits as uint64."""
    scaled = np.rint(
        np.clip(np.asarray(x, np.float64), -clip_range, clip_range) * (quant_range / clip_range)
    )
    q = scaled.astype(np.int64).astype(np.uint64)  # two's complement: -1 -> 2^64 - 1
    if bits < 64:
        q &= np.uint64((1 << bits) - 1)
    return q


def to_signed(v: np.ndarray, bits: int) -> np.ndarray:
    """The signed representatives in [-2^(bits-1), 2^(bits-1)) of ``v`` in Z_{2^bits} (int64)."""
    out = np.array(v, dtype=np.uint64)
    if bits < 64:
        negative = out >= np.uint64(1 << (bits - 1))
        out[negative] |= np.uint64(((1 << 64) - 1) ^ ((1 << bits) - 1))  # sign-extend
    return out.view(np.int64)


def dequantize(v: np.ndarray, clip_range: float, quant_range: int, bits: int) -> np.ndarray:
    """Float64 values of the signed representatives of ``v``: ``q * c / R``."""
    return to_signed(v, bits).astype(np.float64) * (clip_range / quant_range)
