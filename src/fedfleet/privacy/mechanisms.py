"""The pieces DP is built from: L2 clipping and Gaussian noise from a chosen generator.

Noise comes from a seeded NumPy generator in simulation (reproducible runs) or from the
operating system's CSPRNG in deployment. The secure sampler turns ``os.urandom`` bytes into
normals by the Box-Muller transform in float64. Like every floating-point Gaussian sampler it is
not immune to the low-order-bit attacks of Mironov (2012); a discrete Gaussian (Canonne et al.
2020) would be, and is future work. No library we depend on offers a CSPRNG-backed normal
sampler for NumPy arrays, hence these few lines.
"""

from __future__ import annotations

import os
from typing import Literal

import numpy as np

__all__ = ["NoiseSource", "clip_by_l2", "gaussian", "is_seeded", "secure_normal"]

NoiseSource = Literal["seeded", "seeded-testing-only", "secure"]
"""'seeded': reproducible from the run's seed (simulation); 'seeded-testing-only': the same
noise, by the name a deployed run must use to get it (plain 'seeded' is refused there, see
:func:`fedfleet.runs.deploy_policy.for_deployment`); 'secure': the OS CSPRNG."""


def is_seeded(source: NoiseSource) -> bool:
    """Whether ``source`` draws its noise from a seeded generator (reproducible from the seed)."""
    return source in ("seeded", "seeded-testing-only")


def clip_by_l2(vector: np.ndarray, bound: float) -> tuple[np.ndarray, float]:
    """``vector * min(1, bound / ||vector||)`` (float64 arithmetic) and the original norm."""
    v = np.asarray(vector, dtype=np.float64)
    norm = float(np.linalg.norm(v))
    if norm > bound:
        v = v * (bound / norm)
    return v, norm


def secure_normal(size: int) -> np.ndarray:
    """``size`` standard normals from the OS CSPRNG (Box-Muller over 53-bit uniforms)."""
    pairs = (size + 1) // 2
    raw = np.frombuffer(os.urandom(16 * pairs), dtype=np.uint64).reshape(2, pairs)
    u1 = ((raw[0] >> np.uint64(11)).astype(np.float64) + 1.0) / 2.0**53  # (0, 1]
    u2 = (raw[1] >> np.uint64(11)).astype(np.float64) / 2.0**53  # [0, 1)
    radius = np.sqrt(-2.0 * np.log(u1))
    out = np.concatenate([radius * np.cos(2 * np.pi * u2), radius * np.sin(2 * np.pi * u2)])
    return out[:size]


def gaussian(
    size: int, std: float, source: NoiseSource, rng: np.random.Generator | None = None
) -> np.ndarray:
    """N(0, std^2) noise of length ``size`` (float64) from ``rng`` or the CSPRNG."""
    if source == "secure":
        return std * secure_normal(size)
    if rng is None:
        raise ValueError("seeded noise needs a generator")
    return rng.normal(0.0, std, size=size)
