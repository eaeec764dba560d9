"""Adaptive server optimizers: FedAdagrad, FedAdam and FedYogi as server transforms.

Reddi et al. 2021, "Adaptive Federated Optimization" (ICLR), Algorithm 2. The server treats the
round's averaged client delta ``Delta`` as a gradient estimate and keeps per-coordinate moments:

    m_t = b1 m_{t-1} + (1 - b1) Delta
    v_t = v_{t-1} + Delta^2                                         (Adagrad)
    v_t = b2 v_{t-1} + (1 - b2) Delta^2                             (Adam)
    v_t = v_{t-1} - (1 - b2) Delta^2 sign(v_{t-1} - Delta^2)        (Yogi)
    x_{t+1} = x_t + lr m_t / (sqrt(v_t) + tau)

As in the paper there is no bias correction, and ``tau`` (the "degree of adaptivity") both
bounds the step and sets the initial second moment: Algorithm 2 asks for ``v_{-1} >= tau^2``
and we start at exactly ``v_{-1} = tau^2`` (``m_{-1} = 0``).

Each factory returns a :class:`ServerTransform`; like every transform it receives the
pseudo-gradient ``g = -Delta`` and returns the step added to the model. Both moments are
float64 arrays in the returned state dict, so they land in checkpoints with the model.

Examples:
    >>> import numpy as np
    >>> t = adam(lr=0.1)
    >>> w = np.zeros(3)
    >>> state = t.init(w)
    >>> step, state = t.update(-np.array([0.5, 0.0, -0.5]), state, w)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedfleet.errors import ConfigError
from fedfleet.transforms._base import ServerTransform, TransformState

__all__ = ["adagrad", "adam", "yogi"]

# v_t from (v_{t-1}, Delta^2, b2)
_SecondMoment = Callable[[np.ndarray, np.ndarray, float], np.ndarray]


def _adagrad_v(v: np.ndarray, d2: np.ndarray, b2: float) -> np.ndarray:
    return v + d2


def _adam_v(v: np.ndarray, d2: np.ndarray, b2: float) -> np.ndarray:
    return b2 * v + (1.0 - b2) * d2


def _yogi_v(v: np.ndarray, d2: np.ndarray, b2: float) -> np.ndarray:
    # v moves towards Delta^2 by (1 - b2) Delta^2 at most: additive, unlike Adam's
    # multiplicative decay, so one large round cannot shrink the effective lr abruptly.
    return v - (1.0 - b2) * d2 * np.sign(v - d2)


@dataclass(frozen=True)
class _Adaptive:
    name: str
    lr: float
    b1: float
    b2: float
    tau: float
    second_moment: _SecondMoment

    def init(self, vector: np.ndarray) -> TransformState:
        return {
            "m": np.zeros(vector.shape, dtype=np.float64),
            "v": np.full(vector.shape, self.tau**2, dtype=np.float64),
        }

    def update(
        self,
        grad: np.ndarray,
        state: TransformState,
        vector: np.ndarray,
        rng: np.random.Generator | None = None,
    ) -> tuple[np.ndarray, TransformState]:
        delta = -np.asarray(grad, dtype=np.float64)
        m = self.b1 * state["m"] + (1.0 - self.b1) * delta  # type: ignore[operator]
        v = self.second_moment(state["v"], delta * delta, self.b2)  # type: ignore[arg-type]
        step = self.lr * m / (np.sqrt(v) + self.tau)
        return step, {"m": m, "v": v}


def _check(name: str, lr: float, b1: float, b2: float, tau: float) -> None:
    if not lr > 0:
        raise ConfigError(f"{name}: lr must be > 0, got {lr}")
    if not 0.0 <= b1 < 1.0:
        raise ConfigError(f"{name}: b1 must be in [0, 1), got {b1}")
    if not 0.0 <= b2 < 1.0:
        raise ConfigError(f"{name}: b2 must be in [0, 1), got {b2}")
    if not tau > 0:
        raise ConfigError(
            f"{name}: tau must be > 0, got {tau}; it keeps the step finite where the second "
            "moment is ~0 (Reddi et al. use 1e-3)"
        )


def adam(lr: float, b1: float = 0.9, b2: float = 0.99, tau: float = 1e-3) -> ServerTransform:
    """Server Adam (FedAdam): ``v_t = b2 v + (1 - b2) Delta^2``, no bias correction.

    Args:
        lr: server learning rate (eta); Reddi et al. tune it on a log grid, ~1e-2 for images.
        b1: first-moment decay.
        b2: second-moment decay.
        tau: adaptivity; the denominator's floor and ``sqrt(v_{-1})``.
    """
    _check("adam", lr, b1, b2, tau)
    return _Adaptive("adam", float(lr), float(b1), float(b2), float(tau), _adam_v)


def yogi(lr: float, b1: float = 0.9, b2: float = 0.99, tau: float = 1e-3) -> ServerTransform:
    """Server Yogi (FedYogi): ``v_t = v - (1 - b2) Delta^2 sign(v - Delta^2)``.

    Args as :func:`adam`. Zaheer et al. 2018 ("Adaptive Methods for Nonconvex Optimization")
    introduced the update; Reddi et al. found it the most robust of the three.
    """
    _check("yogi", lr, b1, b2, tau)
    return _Adaptive("yogi", float(lr), float(b1), float(b2), float(tau), _yogi_v)


def adagrad(lr: float, tau: float = 1e-3, b1: float = 0.0) -> ServerTransform:
    """Server Adagrad (FedAdagrad): ``v_t = v + Delta^2``.

    Args:
        lr: server learning rate (eta).
        tau: adaptivity, as in :func:`adam`.
        b1: first-moment decay; Algorithm 2 allows momentum here too, the default 0 is classic
            Adagrad (``m_t = Delta_t``).
    """
    _check("adagrad", lr, b1, 0.0, tau)
    return _Adaptive("adagrad", float(lr), float(b1), 0.0, float(tau), _adagrad_v)
