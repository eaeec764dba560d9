"""FedNova (Wang et al. 2020, "Tackling the Objective Inconsistency Problem in Heterogeneous
Federated Optimization", NeurIPS).

When clients run different numbers of local steps tau_i, FedAvg's sample-weighted mean of deltas
over-weights the clients that ran longer, and the model converges to the optimum of a
different (inconsistent) objective. FedNova divides each client's delta by the norm ``a_i``
of its local-update coefficients, turning it into an average per-step direction, and then
takes ``tau_eff`` such steps for everyone:

    p_i      = n_i / n                          (n over the clients that reported)
    tau_eff  = sum_i p_i a_i
    x       <- x + tau_eff * sum_i p_i delta_i / a_i

with, for client i's tau_i local steps at client learning rate eta,

    a_i = tau_i                                                  plain SGD
    a_i = [tau_i - rho (1 - rho^tau_i) / (1 - rho)] / (1 - rho)  SGD with momentum rho
    a_i = [1 - (1 - eta mu)^tau_i] / (eta mu)                    proximal term mu (FedProx)

(and, for momentum together with a proximal term, the same ``a_i = ||a_i||_1`` from the
coefficient recurrence, which reproduces each closed form above when the other term is 0).
The update is handed to a server transform as the pseudo-gradient ``-(x_new - x)``, as in
:class:`FedAvg`; the default ``sgd(1.0)`` applies it as is. With every tau_i equal and plain
SGD, a_i = tau for all clients and FedNova is exactly FedAvg.

The server learns tau_i from ``ClientUpdate.num_steps``; momentum and mu are not reported, so
they must match what the clients run: ``momentum`` is the clients' ``torch.optim.SGD``
momentum (heavy ball, no dampening, no Nesterov), and mu is ``local.config["prox_mu"]``, the
FedProx key every fedfleet trainer reads: it adds ``mu (w - w_global)`` to each gradient before
the optimizer step, so the proximal pull goes through the momentum buffer as the recurrence
assumes. Weight decay is not accounted for. Clients that took no step have nothing to
normalise; they are left out and counted in the metric ``skipped_zero_steps``.

Varying work per client (the point of FedNova) comes from ``stragglers`` (fewer epochs for a
share of each round's clients), from clients' different data sizes at a fixed number of
epochs, or from a wrapped ``configure_fit`` handing out different ``max_steps``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fedfleet.client import PROX_MU, FitInstructions
from fedfleet.errors import ConfigError
from fedfleet.strategies._aggregators import normalized_mean
from fedfleet.strategies._base import ClientUpdate, EvaluateAll, StrategyState, plain_client_fit
from fedfleet.strategies._sampling import Sampling, plan_round
from fedfleet.strategies._stragglers import Stragglers
from fedfleet.transforms._base import ServerTransform, apply_delta, sgd

__all__ = ["FedNova"]


def _step_norm(tau: int, rho: float, eta: float, mu: float) -> float:
    """``a = ||a_i||_1``: how many plain-SGD steps ``tau`` local steps amount to."""
    if mu == 0.0 and rho == 0.0:
        return float(tau)
    if mu == 0.0:
        return (tau - rho * (1.0 - rho**tau) / (1.0 - rho)) / (1.0 - rho)
    if rho == 0.0:
        return (1.0 - (1.0 - eta * mu) ** tau) / (eta * mu)
    # Both: follow x - x0 under a unit gradient at every step. Each step feeds the gradient
    # plus the proximal pull mu (x - x0) into the momentum buffer; a = -(x_tau - x0) / eta.
    y, buf = 0.0, 0.0
    for _ in range(tau):
        buf = rho * buf + 1.0 + mu * y
        y -= eta * buf
    return -y / eta


@dataclass(frozen=True, kw_only=True)
class FedNova(Sampling, EvaluateAll):
    """Normalised averaging for clients that ran different numbers of local steps.

    Attributes:
        clients_per_round, fraction: K or C, as in :class:`~fedfleet.strategies._sampling.
            Sampling` (10 clients a round if neither).
        local: the instructions every sampled client gets; ``local.lr`` is eta and
            ``local.config["prox_mu"]`` (if > 0) is mu in the normaliser.
        momentum: rho, the clients' SGD momentum. It must equal the trainer's optimizer
            momentum (e.g. ``TorchTrainer(..., optimizer_args={"momentum": 0.9})``): clients
            do not report it, and a mismatch mis-scales every update.
        server_optimizer: transform applied to the pseudo-gradient; ``sgd(1.0)`` is FedNova.
        stragglers: systems heterogeneity, as in :class:`FedAvg`: a share of each round's
            clients run x ~ U{1..E} epochs (``drop=False``, the case FedNova is built for) or
            are dropped. Only the epochs vary, so eta and mu stay those of ``local``.

    Examples:
        >>> strategy = FedNova(clients_per_round=10, local=FitInstructions(epochs=5, lr=0.05),
        ...                    stragglers=Stragglers(fraction=1.0, drop=False))
    """

    local: FitInstructions = field(default_factory=FitInstructions)
    momentum: float = 0.0
    server_optimizer: ServerTransform = field(default_factory=sgd)
    stragglers: Stragglers | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"FedNova: momentum must be in [0, 1), got {self.momentum}")
        mu = self._prox_mu
        if not (math.isfinite(mu) and mu >= 0 and self.local.lr * mu < 1.0):
            raise ConfigError(
                f"FedNova: local.config[{PROX_MU!r}] = {mu} with client lr {self.local.lr} gives "
                f"lr * mu = {self.local.lr * mu}; it must be in [0, 1) (at 1 or more each "
                "local step overshoots the global model)"
            )

    @property
    def _prox_mu(self) -> float:
        mu = self.local.config.get(PROX_MU, 0.0)
        if isinstance(mu, bool) or not isinstance(mu, int | float):
            raise ConfigError(f"FedNova: local.config[{PROX_MU!r}] must be a number, got {mu!r}")
        return float(mu)

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
        used = [u for u in updates if u.num_steps > 0]
        metrics = {
            "aggregated": float(len(used)),
            "skipped_zero_steps": float(len(updates) - len(used)),
        }
        if not used:
            return vector, state, metrics
        mu = self._prox_mu
        a = [_step_norm(u.num_steps, self.momentum, self.local.lr, mu) for u in used]
        direction, tau_eff = normalized_mean(
            [u.delta for u in used], [u.num_samples for u in used], a
        )
        new, opt_state = apply_delta(
            self.server_optimizer,
            vector,
            direction,
            state["server_optimizer"],  # type: ignore[arg-type]
        )
        metrics["tau_eff"] = tau_eff
        return new, {"server_optimizer": opt_state}, metrics
