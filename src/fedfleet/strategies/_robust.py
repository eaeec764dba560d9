"""Byzantine-robust aggregation: FedAvg's rounds with a robust rule in place of the mean.

One client can move FedAvg's mean anywhere: a delta scaled by -100 outweighs a round of honest
ones. A robust rule bounds what a minority of arbitrary (Byzantine) updates can do. For K
updates ``d_1..d_K`` (rows of a ``[K, P]`` matrix), computed in float64 and unweighted (a
sample count is client-reported, so a Byzantine client would inflate its own):

* :class:`Median`, coordinate-wise median (Yin et al. 2018, "Byzantine-Robust Distributed
  Learning: Towards Optimal Statistical Rates"): ``agg_j = median_k d_kj``.
* :class:`TrimmedMean`, coordinate-wise beta-trimmed mean (Yin et al. 2018): per coordinate, drop
  the ``b = floor(beta K)`` largest and ``b`` smallest values and average the other ``K - 2b``.
  Tolerates up to ``b`` Byzantine clients a round.
* :class:`Krum`, (multi-)Krum (Blanchard et al. 2017, "Machine Learning with Adversaries:
  Byzantine Tolerant Gradient Descent"): each update's score is the sum of its squared distances
  to its ``K - f - 2`` nearest other updates; the ``m`` lowest-scoring updates are averaged
  (``m = 1``: Krum picks one). The guarantee needs ``K >= 2f + 3``; a round with fewer updates
  still scores them against ``max(1, K - f - 2)`` neighbours.

:class:`RobustFedAvg` is :class:`~fedfleet.strategies.FedAvg` with one of these rules as
its aggregator (:class:`RobustAggregator`) and nothing else changed: FedAvg's sampling, plain
local training and server transform.

Examples:
    >>> strategy = RobustFedAvg(rule=TrimmedMean(beta=0.2), clients_per_round=10)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, final

import numpy as np

from fedfleet.errors import ConfigError
from fedfleet.strategies._aggregators import UpdateAggregator
from fedfleet.strategies._base import ClientUpdate
from fedfleet.strategies._fedavg import FedAvg

__all__ = ["Krum", "Median", "RobustAggregator", "RobustFedAvg", "RobustRule", "TrimmedMean"]


class RobustRule(Protocol):
    """``rule(deltas) -> (aggregate, metrics)``: a ``[K, P]`` float32 matrix of the round's
    deltas (K >= 1) to one float64 vector of length P, plus numbers for the round's record."""

    def __call__(self, deltas: np.ndarray) -> tuple[np.ndarray, dict[str, float]]: ...


@dataclass(frozen=True)
class Median:
    """Coordinate-wise median (Yin et al. 2018); with an even K, the mean of the two middle
    values."""

    def __call__(self, deltas: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        return np.median(deltas.astype(np.float64), axis=0), {}


@dataclass(frozen=True)
class TrimmedMean:
    """Coordinate-wise beta-trimmed mean (Yin et al. 2018).

    Attributes:
        beta: the share of updates trimmed at each end of every coordinate, in [0, 0.5):
            ``floor(beta K)`` largest and as many smallest values are left out.
    """

    beta: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.beta < 0.5:
            raise ConfigError(
                f"TrimmedMean: beta must be in [0, 0.5) (the share trimmed at each end), "
                f"got {self.beta}"
            )

    def __call__(self, deltas: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        k = deltas.shape[0]
        b = math.floor(self.beta * k)
        kept = np.sort(deltas.astype(np.float64), axis=0)[b : k - b]
        return kept.mean(axis=0), {"trimmed": float(2 * b)}


@dataclass(frozen=True)
class Krum:
    """(Multi-)Krum (Blanchard et al. 2017).

    Attributes:
        byzantine: f, the number of Byzantine updates a round is to tolerate.
        select: m, how many of the lowest-scoring updates are averaged (1 = Krum).
    """

    byzantine: int = 1
    select: int = 1

    def __post_init__(self) -> None:
        if self.byzantine < 0 or self.select < 1:
            raise ConfigError(
                f"Krum: byzantine must be >= 0 and select >= 1, got byzantine={self.byzantine}, "
                f"select={self.select}"
            )

    def scores(self, deltas: np.ndarray) -> np.ndarray:
        """Each update's Krum score: the sum of squared L2 distances to its
        ``max(1, K - f - 2)`` nearest other updates (0 for a lone update)."""
        k = deltas.shape[0]
        if k == 1:
            return np.zeros(1)
        x = deltas.astype(np.float64)
        sq = np.einsum("kp,kp->k", x, x)
        # ||a - b||^2 from one Gram matrix; rounding can leave a tiny negative
        dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)
        np.fill_diagonal(dist, np.inf)
        near = max(1, k - self.byzantine - 2)
        return np.sort(dist, axis=1)[:, :near].sum(axis=1)

    def __call__(self, deltas: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        scores = self.scores(deltas)
        m = min(self.select, max(1, deltas.shape[0] - self.byzantine))
        chosen = np.sort(np.argsort(scores, kind="stable")[:m])
        return deltas[chosen].astype(np.float64).mean(axis=0), {"krum_selected": float(m)}


@dataclass(frozen=True)
class RobustAggregator:
    """A :class:`RobustRule` as FedAvg's ``aggregator``: the rule on the round's deltas
    stacked as ``[K, P]``, unweighted (a sample count is client-reported).

    Example:
        >>> FedAvg(aggregator=RobustAggregator(Median()), clients_per_round=10)
    """

    rule: RobustRule

    def __call__(self, updates: Sequence[ClientUpdate]) -> tuple[np.ndarray, dict[str, float]]:
        return self.rule(np.stack([u.delta for u in updates]))


@final
@dataclass(frozen=True, kw_only=True)
class RobustFedAvg(FedAvg):
    """FedAvg whose ``aggregator`` is a Byzantine-robust ``rule`` (:class:`RobustAggregator`);
    sampling, client side and server transform are FedAvg's own.

    Attributes:
        rule: :class:`Median`, :class:`TrimmedMean`, :class:`Krum` or any :class:`RobustRule`.
        clients_per_round, fraction, local, server_optimizer, stragglers: as in
            :class:`~fedfleet.strategies.FedAvg`; the server transform gets the
            pseudo-gradient ``-rule(deltas)``.

    Examples:
        >>> RobustFedAvg(rule=Krum(byzantine=2, select=4), clients_per_round=12)
    """

    rule: RobustRule
    aggregator: UpdateAggregator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "aggregator", RobustAggregator(self.rule))
