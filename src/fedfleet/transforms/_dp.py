"""Differential privacy as transforms: L2 clipping, Gaussian noise, adaptive clipping.

Each piece is an ``(init, update)`` pair like every :class:`~fedfleet.transforms._base.
ServerTransform` and composes with :func:`~fedfleet.transforms.chain`. Clipping and noise
act on one float64 vector wherever it is: a client's delta before upload (local DP uploads
``chain(clip(S), gaussian_noise(z * S))`` of its delta; DP-FedAvg's and SecAgg's clients
``clip(S)``), or the round's sum on the server (central DP adds ``gaussian_noise(z * S)`` to
the sum of clipped deltas). Both commute with a change of sign in distribution, and strategies
apply them to deltas, before the server optimizer sees the pseudo-gradient.

Randomness lives in no object: a randomised piece draws from the ``rng`` its ``update`` is
handed, which the caller derives from the run's seed and the round (central noise) or from the
client's seed (local noise) through :mod:`fedfleet._streams` (:func:`noise_rng`), so a resumed
run draws the same noise. A chain hands one generator to its pieces in order, so their draws
continue one stream. With ``source="secure"`` they draw from the OS CSPRNG and need no ``rng``.

The secure sampler turns ``os.urandom`` bytes into normals by the Box-Muller transform in
float64. Like every floating-point Gaussian sampler it is not immune to the low-order-bit
attacks of Mironov (2012); a discrete Gaussian (Canonne et al. 2020) would be, and is future
work. No library we depend on offers a CSPRNG-backed normal sampler for NumPy arrays, hence
these few lines.

Example (a client's local-DP upload, seed ``s``):
    >>> from fedfleet.transforms._base import chain
    >>> release = chain(clip(1.0), gaussian_noise(0.5))
    >>> rng = noise_rng("seeded", s, _streams.LOCAL_DP_NOISE)  # doctest: +SKIP
    >>> noisy, _ = release.update(delta, release.init(delta), delta, rng)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Literal

import numpy as np

import fedfleet._streams as _streams
from fedfleet.errors import ConfigError
from fedfleet.transforms._base import ServerTransform, TransformState

__all__ = [
    "NoiseSource",
    "adaptive_clip",
    "clip",
    "clip_by_l2",
    "gaussian",
    "gaussian_noise",
    "is_seeded",
    "noise_rng",
    "secure_normal",
]

NoiseSource = Literal["seeded", "seeded-testing-only", "secure"]
"""'seeded': reproducible from the run's seed (simulation); 'seeded-testing-only': the same
noise, by the name a deployed run must use to get it (plain 'seeded' is refused there, see
:func:`fedfleet.runs.for_deployment`); 'secure': the OS CSPRNG."""


# --- the primitives ---------------------------------------------------------------------------


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
        raise ConfigError(
            f"seeded noise (source {source!r}) needs a generator: pass rng=, the call's stream "
            "from fedfleet._streams (see noise_rng), or use source='secure'"
        )
    return rng.normal(0.0, std, size=size)


def noise_rng(
    source: NoiseSource, root: int | None, key: _streams.Key
) -> np.random.Generator | None:
    """The generator a randomised piece draws from: stream ``key`` of ``root`` (the run's seed,
    or a client's) for seeded noise, None for the CSPRNG."""
    if not is_seeded(source):
        return None
    if root is None:
        raise ConfigError(
            f"seeded noise needs a seed to derive stream {key} from (e.g. the run's seed); use "
            "noise='secure' for noise from the OS CSPRNG"
        )
    return _streams.generator(root, key)


# --- the transforms ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Clip:
    bound: float

    def init(self, vector: np.ndarray) -> TransformState:
        return {}

    def update(
        self,
        grad: np.ndarray,
        state: TransformState,
        vector: np.ndarray,
        rng: np.random.Generator | None = None,
    ) -> tuple[np.ndarray, TransformState]:
        return clip_by_l2(grad, self.bound)[0], state


def clip(bound: float) -> ServerTransform:
    """L2 clipping: ``x * min(1, S / ||x||_2)`` in float64, S = ``bound``; stateless.

    The sensitivity bound of every Gaussian mechanism here (McMahan et al. 2018): after it one
    client moves a sum by at most S.
    """
    if not bound >= 0:
        raise ConfigError(f"clip: the bound must be >= 0, got {bound}")
    return _Clip(float(bound))


@dataclass(frozen=True)
class _GaussianNoise:
    std: float
    source: NoiseSource

    def init(self, vector: np.ndarray) -> TransformState:
        return {}

    def update(
        self,
        grad: np.ndarray,
        state: TransformState,
        vector: np.ndarray,
        rng: np.random.Generator | None = None,
    ) -> tuple[np.ndarray, TransformState]:
        return grad + gaussian(grad.size, self.std, self.source, rng), state


def gaussian_noise(std: float, source: NoiseSource = "seeded") -> ServerTransform:
    """Adds N(0, std^2) to every coordinate (float64): ``std`` = z S for noise multiplier z on
    a sum of vectors clipped to S. Seeded noise is drawn from the ``rng`` given to ``update``
    (one ``rng.normal(0, std, size)`` call), ``"secure"`` noise from the OS CSPRNG; stateless.
    A draw is made even at ``std = 0``, so the stream's position does not depend on it."""
    if not 0 <= std < math.inf:
        raise ConfigError(f"gaussian_noise: std must be a finite number >= 0, got {std}")
    if source not in ("seeded", "seeded-testing-only", "secure"):
        raise ConfigError(
            f"gaussian_noise: source must be 'seeded', 'seeded-testing-only' or 'secure', got "
            f"{source!r}"
        )
    return _GaussianNoise(float(std), source)


@dataclass(frozen=True)
class _AdaptiveClip:
    initial: float
    target_quantile: float
    learning_rate: float
    count_noise: float
    expected_cohort: float
    source: NoiseSource

    def init(self, vector: np.ndarray) -> TransformState:
        return {"clip_norm": self.initial}

    def update(
        self,
        grad: np.ndarray,
        state: TransformState,
        vector: np.ndarray,
        rng: np.random.Generator | None = None,
    ) -> tuple[np.ndarray, TransformState]:
        bound = float(state["clip_norm"])  # type: ignore[arg-type]
        unclipped = int(np.count_nonzero(np.asarray(grad) <= bound))
        noisy = unclipped + float(gaussian(1, self.count_noise, self.source, rng)[0])
        rate = noisy / self.expected_cohort
        return grad, {
            "clip_norm": bound * math.exp(-self.learning_rate * (rate - self.target_quantile))
        }


def adaptive_clip(
    *,
    initial: float,
    expected_cohort: float,
    target_quantile: float = 0.5,
    learning_rate: float = 0.2,
    count_noise: float = 10.0,
    source: NoiseSource = "seeded",
) -> ServerTransform:
    """Adaptive clipping to a quantile of the update norms (Andrew et al. 2021, "Differentially
    Private Learning with Adaptive Clipping", geometric update).

    Its state is the clipping norm, ``{"clip_norm": C}``. Its input is not a model vector but
    the round's update norms ``||delta_i||`` as the server measured them (returned unchanged):
    with ``b = #{i : ||delta_i|| <= C}``, one draw of noise from ``rng`` (continuing the stream
    after the round's delta noise) and the expected cohort size ``E`` (qN or K),

        b~ = (b + N(0, sigma_b^2)) / E,        C <- C * exp(-eta_C (b~ - gamma)).

    Args:
        initial: C before round 1.
        expected_cohort: E, the fixed denominator (the DP-FedAvg estimator's).
        target_quantile: gamma, the share of norms that should fall under C.
        learning_rate: eta_C.
        count_noise: sigma_b; the delta noise then needs multiplier
            ``(z^-2 - (2 sigma_b)^-2)^-1/2`` for the two releases to cost z.
        source: where the count noise comes from (as :func:`gaussian_noise`).
    """
    if not 0 < initial < math.inf:
        raise ConfigError(f"adaptive_clip: initial must be a finite number > 0, got {initial}")
    if not expected_cohort > 0:
        raise ConfigError(f"adaptive_clip: expected_cohort must be > 0, got {expected_cohort}")
    if not 0 <= target_quantile <= 1:
        raise ConfigError(
            f"adaptive_clip: target_quantile must be in [0, 1], got {target_quantile}"
        )
    if not (learning_rate >= 0 and count_noise >= 0):
        raise ConfigError(
            f"adaptive_clip: learning_rate and count_noise must be >= 0, got {learning_rate} and "
            f"{count_noise}"
        )
    return _AdaptiveClip(
        float(initial),
        float(target_quantile),
        float(learning_rate),
        float(count_noise),
        float(expected_cohort),
        source,
    )
