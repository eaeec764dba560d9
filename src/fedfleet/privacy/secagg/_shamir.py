"""Shamir secret sharing (Shamir 1979, "How to Share a Secret") over the prime field GF(2^521 - 1).

A secret s is the constant term of a random polynomial f of degree t - 1; share i is (x_i, f(x_i)),
and any t shares give s = f(0) by Lagrange interpolation at zero,

    s = sum_i y_i * prod_{j != i} x_j / (x_j - x_i)   (mod p),

while any t - 1 shares are independent of s. The field is the Mersenne prime p = 2^521 - 1, so a
32-byte secret (a 256-bit self-mask seed or an X25519 private key) is one field element and each
share is 66 bytes.

Written by hand on purpose: no maintained Python library fits (PyCryptodome's ``Shamir`` shares
only 16-byte secrets over GF(2^128), the ``secretsharing`` / ``pyseltongue`` packages are
unmaintained), and the arithmetic is a few lines of Python integers.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence

__all__ = ["PRIME", "SHARE_BYTES", "reconstruct", "share_secret"]

PRIME = 2**521 - 1
"""The field modulus (a Mersenne prime; 2^521 - 1 > 2^256, so any 32-byte secret fits)."""

SHARE_BYTES = 66
"""Bytes of one share's value on the wire (521 bits)."""


def _random_below(bound: int, random_bytes: Callable[[int], bytes] | None) -> int:
    if random_bytes is None:
        return secrets.randbelow(bound)
    nbytes = (bound.bit_length() + 7) // 8 + 16  # 128 extra bits: modulo bias below 2^-128
    return int.from_bytes(random_bytes(nbytes), "big") % bound


def share_secret(
    secret: int,
    xs: Sequence[int],
    threshold: int,
    random_bytes: Callable[[int], bytes] | None = None,
) -> dict[int, int]:
    """Split ``secret`` (0 <= secret < PRIME) into one share per nonzero, distinct ``xs``; any
    ``threshold`` of them reconstruct it. Coefficients come from ``random_bytes`` (default: the
    OS CSPRNG through :mod:`secrets`)."""
    if not 0 <= secret < PRIME:
        raise ValueError(f"secret must be in [0, 2^521 - 1), got a {secret.bit_length()}-bit value")
    if not 1 <= threshold <= len(xs):
        raise ValueError(
            f"threshold must be in 1..{len(xs)} (the number of shares), got {threshold}"
        )
    if len(set(x % PRIME for x in xs)) != len(xs) or any(x % PRIME == 0 for x in xs):
        raise ValueError("share points must be distinct and nonzero modulo the prime")
    coeffs = [secret] + [_random_below(PRIME, random_bytes) for _ in range(threshold - 1)]
    shares = {}
    for x in xs:
        acc = 0
        for c in reversed(coeffs):  # Horner
            acc = (acc * x + c) % PRIME
        shares[x] = acc
    return shares


def reconstruct(shares: Mapping[int, int], threshold: int) -> int:
    """The secret from at least ``threshold`` shares ``{x: f(x)}`` (the first ``threshold`` by x
    are used). Raises ValueError with fewer: t - 1 shares say nothing about the secret."""
    if len(shares) < threshold:
        raise ValueError(f"need {threshold} shares to reconstruct, got {len(shares)}")
    points = sorted(shares.items())[:threshold]
    secret = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    return secret
