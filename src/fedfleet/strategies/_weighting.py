"""Aggregation weights: how much each client's update counts. The one place they are defined.

A weighting is a function ``ClientUpdate -> float`` (>= 0, finite; at least one > 0 per round):

* :func:`by_samples` - ``n_k``, the client's training samples (the default everywhere; FedAvg's
  ``n_k / n`` of McMahan et al. 2017).
* :func:`by_steps` - ``tau_k``, the local steps it completed (partial work counts for less).
* :func:`uniform` - 1 per client.
* your own - any function of the update's ``num_samples``, ``num_steps`` and ``metrics``
  (e.g. ``lambda u: u.num_samples * u.metrics["train_loss"]``).

Two ways to use one: :func:`aggregation_weights` for a strategy's own ``aggregate_fit`` (the
weights to hand :func:`fedfleet.strategies.weighted_mean`), or the :class:`Reweighted`
wrapper, which hands the wrapped strategy (FedAvg, FedNova, FedOpt...) updates whose
``num_samples`` is replaced by the weight. Every strategy that weights by ``num_samples`` then
weights by the rule; strategies that read ``num_samples`` for something else (none of the
built-in sample-weighted ones do) should not be wrapped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fedfleet.errors import ConfigError
from fedfleet.strategies._base import ClientUpdate, Strategy, StrategyState
from fedfleet.strategies._wrapper import Wrapper

__all__ = [
    "Reweighted",
    "Weighting",
    "aggregation_weights",
    "by_samples",
    "by_steps",
    "uniform",
]

Weighting = Callable[[ClientUpdate], float]


def by_samples(update: ClientUpdate) -> float:
    """``n_k``: the client's training samples (the default)."""
    return float(update.num_samples)


def by_steps(update: ClientUpdate) -> float:
    """``tau_k``: the local steps the client completed."""
    return float(update.num_steps)


def uniform(update: ClientUpdate) -> float:
    """1 for every client."""
    return 1.0


def aggregation_weights(
    updates: Sequence[ClientUpdate], rule: Weighting = by_samples
) -> np.ndarray:
    """The rule's weight for every update, checked: finite, >= 0, not all zero.

    Raises:
        ConfigError: naming the client whose weight is bad.
    """
    w = np.array([float(rule(u)) for u in updates], dtype=np.float64)
    for u, x in zip(updates, w, strict=True):
        if not (np.isfinite(x) and x >= 0):
            raise ConfigError(
                f"weighting {getattr(rule, '__name__', rule)!r} gave client {u.client_id} the "
                f"weight {x}; weights must be finite and >= 0"
            )
    if len(w) and w.sum() == 0:
        raise ConfigError(
            f"weighting {getattr(rule, '__name__', rule)!r} gave every client weight 0 "
            f"(clients {[u.client_id for u in updates]})"
        )
    return w


@dataclass(frozen=True, kw_only=True)
class Reweighted(Wrapper):
    """Aggregate ``inner`` with weights from ``weighting`` instead of sample counts.

    Examples:
        >>> Reweighted(inner=FedAvg(clients_per_round=10), weighting=by_steps)
    """

    inner: Strategy
    weighting: Weighting = by_samples

    def aggregate_fit(
        self,
        rnd: int,
        vector: np.ndarray,
        state: StrategyState,
        updates: Sequence[ClientUpdate],
    ) -> tuple[np.ndarray, StrategyState, dict[str, float]]:
        w = aggregation_weights(updates, self.weighting)
        reweighted = [
            dataclasses.replace(u, num_samples=x) for u, x in zip(updates, w, strict=True)
        ]
        return self.inner.aggregate_fit(rnd, vector, state, reweighted)
