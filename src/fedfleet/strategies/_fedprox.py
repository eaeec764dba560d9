"""FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks", MLSys).

FedAvg with a proximal term in every client's local objective. Client k, starting from the global
model w^t, approximately minimises

    h_k(w; w^t) = F_k(w) + (mu / 2) ||w - w^t||^2

by local SGD, i.e. every step uses the gradient g_k(w) + mu (w - w^t); mu = 0 is FedAvg. The
server aggregates exactly as FedAvg does (w + sum_k (n_k / n) delta_k, the sample-weighted mean the
FedProx code uses with uniform device sampling). FedProx's other half is tolerating partial
work: with ``Stragglers(fraction, drop=False)`` the stragglers' few epochs are aggregated rather
than dropped. So FedProx is a configured :class:`FedAvg` whose local instructions carry
``config["prox_mu"]``, which every fedfleet trainer honours.
"""

from __future__ import annotations

import dataclasses
import math

from fedfleet.client import PROX_MU, FitInstructions
from fedfleet.errors import ConfigError
from fedfleet.strategies._fedavg import FedAvg
from fedfleet.strategies._stragglers import Stragglers
from fedfleet.transforms import ServerTransform, sgd

__all__ = ["fedprox"]


def fedprox(
    *,
    mu: float,
    clients_per_round: int | None = None,
    fraction: float | None = None,
    local: FitInstructions | None = None,
    stragglers: Stragglers | None = None,
    server_optimizer: ServerTransform | None = None,
) -> FedAvg:
    """FedProx: :class:`FedAvg` whose clients add ``mu * (w - w_global)`` to every gradient.

    Args:
        mu: the proximal coefficient, >= 0 (the paper tunes it in {0.001, 0.01, 0.1, 1}).
        clients_per_round: K, a count (give this or ``fraction``; 10 if neither).
        fraction: C, the fraction of available clients per round.
        local: the clients' instructions (epochs, batch size, lr); ``prox_mu`` is added to a copy
            of its ``config``, the caller's object is left as it is.
        stragglers: systems heterogeneity; FedProx keeps partial work (``drop=False``).
        server_optimizer: server transform, ``sgd(1.0)`` (plain averaging) by default.

    Examples:
        >>> strategy = fedprox(
        ...     mu=1.0,
        ...     clients_per_round=10,
        ...     local=FitInstructions(epochs=20, batch_size=10, lr=0.01),
        ...     stragglers=Stragglers(fraction=0.9, drop=False),
        ... )
        >>> strategy.local.config["prox_mu"]
        1.0
    """
    if isinstance(mu, bool) or not isinstance(mu, int | float) or not math.isfinite(mu) or mu < 0:
        raise ConfigError(f"fedprox: mu must be a finite number >= 0, got {mu!r}")
    base = local if local is not None else FitInstructions()
    instructions = dataclasses.replace(base, config={**base.config, PROX_MU: float(mu)})
    return FedAvg(
        clients_per_round=clients_per_round,
        fraction=fraction,
        local=instructions,
        server_optimizer=server_optimizer if server_optimizer is not None else sgd(),
        stragglers=stragglers,
    )
