"""FedAvg (McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data").

Each round: sample K clients, each runs E local epochs of mini-batch SGD (batch B) from the global
model w, and the server sets

    w <- sum_k (n_k / n) w_k,        n = sum_k n_k over the clients that reported,

computed as w + sum_k (n_k / n) (w_k - w) in float64. The averaged delta is handed to a server
transform as the pseudo-gradient ``-delta``; the default ``sgd(1.0)`` gives FedAvg exactly, and
other transforms give FedAvgM / FedOpt without a new strategy. Likewise the ``aggregator`` that
averages: the sample-weighted mean by default, a Byzantine-robust rule in
:class:`~fedfleet.strategies.RobustFedAvg`. With ``stragglers`` set, a share of
each round's clients straggle (see :mod:`fedfleet.strategies._stragglers`); FedProx is this class
with a proximal ``mu`` in the local instructions (:func:`fedfleet.strategies.fedprox`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fedfleet.client import FitInstructions
from fedfleet.strategies._aggregators import UpdateAggregator, sample_weighted_mean, weighted_mean
from fedfleet.strategies._base import ClientUpdate, EvaluateAll, StrategyState, plain_client_fit
from fedfleet.strategies._sampling import Sampling, plan_round
from fedfleet.strategies._stragglers import Stragglers
from fedfleet.transforms._base import ServerTransform, apply_delta, sgd

__all__ = ["FedAvg", "weighted_mean"]


@dataclass(frozen=True, kw_only=True)
class FedAvg(Sampling, EvaluateAll):
    """Federated averaging with uniform client sampling.

    Attributes:
        clients_per_round, fraction: K or C, as in :class:`~fedfleet.strategies._sampling.
            Sampling` (10 clients a round if neither).
        local: the instructions every sampled client gets (epochs, batch size, lr).
        server_optimizer: transform applied to the pseudo-gradient; ``sgd(1.0)`` is plain FedAvg.
        stragglers: systems heterogeneity: a share of the sampled clients run fewer epochs or
            are dropped (None: everyone does the full local work).
        aggregator: the round's updates to one float64 delta, plus metrics for the record
            (:func:`~fedfleet.strategies._aggregators.sample_weighted_mean`: FedAvg's mean).

    Examples:
        >>> strategy = FedAvg(clients_per_round=10, local=FitInstructions(epochs=1, lr=0.05))
    """

    local: FitInstructions = field(default_factory=FitInstructions)
    server_optimizer: ServerTransform = field(default_factory=sgd)
    stragglers: Stragglers | None = None
    aggregator: UpdateAggregator = sample_weighted_mean

    def init(self, vector: np.ndarray) -> StrategyState:
        return {"server_optimizer": self.server_optimizer.init(vector)}

    def configure_fit(
        self,
        rnd: int,
        vector: np.ndarray,
        state: StrategyState,
        clients: Sequence[int],
        rng: np.random.Generator,
    ) -> list[tuple[int, FitInstructions]]:
        return plan_round(self, clients, rng, self.local, self.stragglers)

    client_fit = staticmethod(plain_client_fit)

    def aggregate_fit(
        self,
        rnd: int,
        vector: np.ndarray,
        state: StrategyState,
        updates: Sequence[ClientUpdate],
    ) -> tuple[np.ndarray, StrategyState, dict[str, float]]:
        if not updates:  # nobody reported: keep the model, say so in the metrics
            return vector, state, {"aggregated": 0.0}
        delta, metrics = self.aggregator(updates)
        new, opt_state = apply_delta(
            self.server_optimizer,
            vector,
            delta,
            state["server_optimizer"],  # type: ignore[arg-type]
        )
        return new, {"server_optimizer": opt_state}, {"aggregated": float(len(updates)), **metrics}
