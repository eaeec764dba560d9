"""q-FedAvg (Li et al. 2020, "Fair Resource Allocation in Federated Learning", ICLR; q-FFL,
Algorithm 2).

q-FFL minimises ``sum_k F_k(w)^(q+1) / (q+1)``: the larger q, the more weight clients with a
high loss get, which evens out accuracy across clients. Each sampled client k reports
``F_k = F_k(w)``, the loss of the global model on its training data before local training,
then trains as in FedAvg to w_k. With ``L = 1 / eta`` (eta the client learning rate, the
paper's estimate of the Lipschitz constant of the gradient) the server computes, in float64,

    dw_k    = L (w - w_k) = -L delta_k
    Delta_k = F_k^q dw_k
    h_k     = q F_k^(q-1) ||dw_k||^2 + L F_k^q
    w      <- w - sum_k Delta_k / sum_k h_k

With q = 0 this is ``w + mean_k delta_k``, the unweighted average of the client models.
Clients are sampled uniformly (the paper samples client k with probability n_k / n, which
with unequal data sizes targets the sample-weighted objective instead).

A client whose loss is exactly 0 would make ``F_k^(q-1)`` infinite for q < 1; losses are
clamped to ``1e-10`` first. Such a client's gradient, and so its delta, is (near) zero too,
so ``q F^(q-1) ||dw||^2`` stays small and the clamp only avoids ``0 * inf``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fedfleet.client import ClientState, FitInstructions, Trainer
from fedfleet.data import ArrayDataset
from fedfleet.errors import ConfigError, UpdateRejected
from fedfleet.strategies._aggregators import qffl_mean
from fedfleet.strategies._base import ClientResult, ClientUpdate, EvaluateAll, StrategyState
from fedfleet.strategies._sampling import Sampling, plan_round

__all__ = ["LOSS_AT_GLOBAL", "QFedAvg"]

log = logging.getLogger("fedfleet")

LOSS_AT_GLOBAL = "loss_at_global"
"""The client metric holding F_k, the global model's loss on the client's training data."""

_MIN_LOSS = 1e-10


def _fit_reporting_loss(
    trainer: Trainer,
    vector: np.ndarray,
    data: ArrayDataset,
    instructions: FitInstructions,
    seed: int,
    state: ClientState | None,
) -> ClientResult:
    """q-FedAvg's client side: evaluate the global model on the local training data, then
    train as FedAvg does; the loss travels in the metrics as ``loss_at_global``."""
    loss = trainer.evaluate(vector, data).loss
    fit = trainer.fit(vector, data, instructions, seed)
    return ClientResult(dataclasses.replace(fit, metrics={**fit.metrics, LOSS_AT_GLOBAL: loss}))


@dataclass(frozen=True, kw_only=True)
class QFedAvg(Sampling, EvaluateAll):
    """Fair federated averaging: clients with a higher loss pull the model harder.

    Attributes:
        q: fairness exponent, >= 0; 0 averages client models uniformly, larger q moves
            towards minimising the worst client's loss (the paper tries 0.001 to 15).
        clients_per_round, fraction: K or C, as in :class:`~fedfleet.strategies._sampling.
            Sampling` (10 clients a round if neither).
        local: the instructions every sampled client gets (epochs, batch size, lr).
        lipschitz: L in the update; None uses ``1 / local.lr`` as the paper does.

    Examples:
        >>> strategy = QFedAvg(q=1.0, clients_per_round=10, local=FitInstructions(lr=0.1))
    """

    q: float
    local: FitInstructions = field(default_factory=FitInstructions)
    lipschitz: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.q >= 0:
            raise ConfigError(f"QFedAvg: q must be >= 0, got {self.q}")
        if self.lipschitz is not None and not self.lipschitz > 0:
            raise ConfigError(f"QFedAvg: lipschitz must be > 0 (or None), got {self.lipschitz}")
        if self.lipschitz is None and not self.local.lr > 0:
            raise ConfigError(
                f"QFedAvg: L defaults to 1 / local.lr, which needs local.lr > 0, got "
                f"{self.local.lr}; set local.lr or lipschitz"
            )

    def init(self, vector: np.ndarray) -> StrategyState:
        return {}

    def configure_fit(
        self,
        rnd: int,
        vector: np.ndarray,
        state: StrategyState,
        clients: Sequence[int],
        rng: np.random.Generator,
    ) -> list[tuple[int, FitInstructions]]:
        return plan_round(self, clients, rng, self.local)

    client_fit = staticmethod(_fit_reporting_loss)

    def aggregate_fit(
        self,
        rnd: int,
        vector: np.ndarray,
        state: StrategyState,
        updates: Sequence[ClientUpdate],
    ) -> tuple[np.ndarray, StrategyState, dict[str, float]]:
        used = []
        for u in updates:
            if LOSS_AT_GLOBAL in u.metrics:
                used.append(u)
            else:  # not q-FedAvg's client side: without F_k the update cannot be weighted
                reason = (
                    f"no {LOSS_AT_GLOBAL!r} metric, so q-FedAvg cannot weight it; is the client "
                    "running QFedAvg.client_fit? (left out of this round)"
                )
                log.warning("%s", UpdateRejected(u.client_id, rnd, reason))
        metrics = {
            "aggregated": float(len(used)),
            "skipped_no_loss": float(len(updates) - len(used)),
        }
        if not used:
            return vector, state, metrics
        lip = self.lipschitz if self.lipschitz is not None else 1.0 / self.local.lr
        f = np.maximum(np.array([u.metrics[LOSS_AT_GLOBAL] for u in used], np.float64), _MIN_LOSS)
        new = vector.astype(np.float64) + qffl_mean([u.delta for u in used], f, self.q, lip)
        metrics[f"{LOSS_AT_GLOBAL}_mean"] = float(f.mean())
        metrics[f"{LOSS_AT_GLOBAL}_max"] = float(f.max())
        return new.astype(np.float32), state, metrics
