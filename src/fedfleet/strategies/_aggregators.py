"""Aggregators: how a round's client deltas become one, as plain functions over arrays.

Each returns the round's aggregated delta in float64 (what the server transform then turns into a
step), so a strategy is a sampler, a client program, one of these and a server transform:

- :func:`weighted_mean`: ``sum_k w_k d_k / sum_k w_k``; FedAvg with ``w_k = n_k`` (McMahan et
  al. 2017), SCAFFOLD's unweighted means with ``w_k = 1``.
- :func:`normalized_mean`: FedNova's ``tau_eff sum_k p_k d_k / a_k`` (Wang et al. 2020).
- :func:`qffl_mean`: q-FFL's ``-sum_k F_k^q dw_k / sum_k h_k`` (Li et al. 2020).
- :func:`clipped_sum`: ``sum_k clip(d_k, S)`` and the norms before clipping, the sum DP-FedAvg's
  Gaussian noise goes on (McMahan et al. 2018).

FedAvg's ``aggregator`` is one step up: an :class:`UpdateAggregator` takes the round's
validated updates themselves (``(updates) -> (delta, metrics)``), so FedAvg with another
aggregator is another algorithm without another strategy class: :func:`sample_weighted_mean`
(FedAvg's own) or a Byzantine-robust rule (:class:`fedfleet.strategies._robust.RobustAggregator`).

The secure sum (:func:`fedfleet.privacy.secagg.run_secagg`) and the homomorphic sum
(:meth:`fedfleet.strategies.HEFedAvg.aggregate_encrypted`) are the other two: protocols whose
result is a sum the server never sees the terms of.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from fedfleet._rows import rows_of
from fedfleet._threads import map_blocks
from fedfleet.strategies._base import ClientUpdate
from fedfleet.transforms._dp import clip_by_l2

__all__ = [
    "UpdateAggregator",
    "clipped_sum",
    "normalized_mean",
    "qffl_mean",
    "sample_weighted_mean",
    "weighted_mean",
]


class UpdateAggregator(Protocol):
    """``aggregator(updates) -> (delta, metrics)``: a round's validated updates (at least one)
    to the aggregated delta in float64, plus numbers for the round's record."""

    def __call__(self, updates: Sequence[ClientUpdate]) -> tuple[np.ndarray, dict[str, float]]: ...


def sample_weighted_mean(updates: Sequence[ClientUpdate]) -> tuple[np.ndarray, dict[str, float]]:
    """FedAvg's aggregate (McMahan et al. 2017): the deltas' :func:`weighted_mean` with
    ``w_k = n_k``, the clients' sample counts; no metrics."""
    return weighted_mean([u.delta for u in updates], [u.num_samples for u in updates]), {}


def weighted_mean(deltas: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """``sum_k w_k d_k / sum_k w_k`` in float64, as one matrix-vector product.

    The deltas are read as one ``[K, P]`` matrix: when they are consecutive rows of one array
    (the engine hands them over that way) the array itself, else a stacked copy. ``np.einsum``
    widens the float32 values to float64 block by block as it goes; a whole float64 copy of the
    matrix would cost more than the product (measured 140 ms against 17 ms for 100 x 101,770).
    A numba loop streaming the rows gave the same bits in a third of the time (2.2 against 6.8
    ms on one core), but importing numba and loading the loop added ~0.3 s to a run's first
    round, more than it saves over a short run, so NumPy it is.
    The same inputs give the same bits, whichever way they are held; large matrices are split
    by columns over the cores (``fedfleet._threads``), which changes no bit.
    """
    w = np.asarray(weights, dtype=np.float64)
    matrix = _shared_rows(deltas)
    if matrix is None:
        matrix = np.stack(deltas)
    share = w / w.sum()
    out = np.empty(matrix.shape[1], dtype=np.float64)

    def block(start: int, stop: int) -> None:  # per column the same sum, however split
        np.einsum("k,kp->p", share, matrix[:, start:stop], dtype=np.float64, out=out[start:stop])

    map_blocks(block, matrix.shape[1], matrix.size)
    return out


def _shared_rows(vectors: Sequence[np.ndarray]) -> np.ndarray | None:
    """The ``[K, P]`` block of one array whose rows are ``vectors`` in order, if there is one."""
    found = rows_of(vectors)
    if found is None:
        return None
    base, rows = found
    start = rows[0]
    if rows != list(range(start, start + len(rows))):
        return None
    return base[start : start + len(rows)]


def normalized_mean(
    deltas: Sequence[np.ndarray], num_samples: Sequence[float], step_norms: Sequence[float]
) -> tuple[np.ndarray, float]:
    """FedNova's aggregate: with ``p_k = n_k / n`` and ``a_k`` the norm of client k's local
    update coefficients (``tau_k`` for plain SGD),

        tau_eff = sum_k p_k a_k,        delta = tau_eff * sum_k p_k delta_k / a_k,

    in float64; returns ``(delta, tau_eff)``. Every ``a_k`` must be > 0.
    """
    a = np.asarray(step_norms, dtype=np.float64)
    n = np.asarray(num_samples, dtype=np.float64)
    p = n / n.sum()
    tau_eff = float(p @ a)
    # delta = sum_k c_k delta_k with c_k = tau_eff p_k / a_k (sum_k c_k != 1 in general)
    c = tau_eff * p / a
    return c.sum() * weighted_mean(deltas, c), tau_eff


def qffl_mean(
    deltas: Sequence[np.ndarray], losses: np.ndarray, q: float, lipschitz: float
) -> np.ndarray:
    """q-FFL's aggregate (Li et al. 2020, Algorithm 2), in float64: with ``L = lipschitz``,
    ``F_k = losses[k]`` (> 0) and ``dw_k = -L delta_k``,

        h_k = q F_k^(q-1) ||dw_k||^2 + L F_k^q,      delta = -sum_k F_k^q dw_k / sum_k h_k.

    ``F^q`` and ``F^(q-1)`` are both divided by ``max_k F_k^q`` first: the ratio is unchanged
    and a large q cannot overflow. With q = 0 it is the unweighted mean of the deltas.
    """
    f = np.asarray(losses, dtype=np.float64)
    dw = -lipschitz * np.stack(deltas).astype(np.float64)
    fq = (f / f.max()) ** q
    h = q * fq / f * np.einsum("kd,kd->k", dw, dw) + lipschitz * fq
    return -(fq @ dw) / h.sum()


def clipped_sum(
    deltas: Sequence[np.ndarray], bound: float, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """``sum_k clip(delta_k, bound)`` in float64 (zeros of ``size`` when there are none) and
    each delta's L2 norm before clipping, for counting who was within the bound."""
    total = np.zeros(size, dtype=np.float64)
    norms = np.zeros(len(deltas))
    for i, d in enumerate(deltas):
        clipped, norms[i] = clip_by_l2(d, bound)
        total += clipped
    return total, norms
