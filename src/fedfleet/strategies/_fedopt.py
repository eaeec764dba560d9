"""FedOpt and FedAvgM as named constructors: each is :class:`FedAvg` with a server transform.

The client side and the weighted averaging are FedAvg's; only what the server does with the
averaged delta changes (Reddi et al. 2021, "Adaptive Federated Optimization"; Hsu et al. 2019,
"Measuring the Effects of Non-Identical Data Distribution for Federated Visual
Classification"). No new class: ``fedadam(...)`` is exactly
``FedAvg(..., server_optimizer=adam(...))``, so the two spellings are interchangeable. Every
constructor takes FedAvg's ``clients_per_round`` / ``fraction``, ``local`` (FedAvg's default
instructions when None) and ``stragglers``.

Examples:
    >>> strategy = fedyogi(server_lr=0.01, clients_per_round=10,
    ...                    local=FitInstructions(epochs=1, lr=0.05))
"""

from __future__ import annotations

from fedfleet.client import FitInstructions
from fedfleet.errors import ConfigError
from fedfleet.strategies._fedavg import FedAvg
from fedfleet.strategies._stragglers import Stragglers
from fedfleet.transforms import ServerTransform, adagrad, adam, sgd, yogi

__all__ = ["fedadagrad", "fedadam", "fedavgm", "fedyogi"]


def _fedavg(
    server_optimizer: ServerTransform,
    clients_per_round: int | None,
    fraction: float | None,
    local: FitInstructions | None,
    stragglers: Stragglers | None,
) -> FedAvg:
    return FedAvg(
        clients_per_round=clients_per_round,
        fraction=fraction,
        local=local if local is not None else FitInstructions(),
        server_optimizer=server_optimizer,
        stragglers=stragglers,
    )


def fedadam(
    *,
    server_lr: float,
    b1: float = 0.9,
    b2: float = 0.99,
    tau: float = 1e-3,
    clients_per_round: int | None = None,
    fraction: float | None = None,
    local: FitInstructions | None = None,
    stragglers: Stragglers | None = None,
) -> FedAvg:
    """FedAvg with server Adam (:func:`fedfleet.transforms.adam`)."""
    return _fedavg(adam(server_lr, b1, b2, tau), clients_per_round, fraction, local, stragglers)


def fedyogi(
    *,
    server_lr: float,
    b1: float = 0.9,
    b2: float = 0.99,
    tau: float = 1e-3,
    clients_per_round: int | None = None,
    fraction: float | None = None,
    local: FitInstructions | None = None,
    stragglers: Stragglers | None = None,
) -> FedAvg:
    """FedAvg with server Yogi (:func:`fedfleet.transforms.yogi`)."""
    return _fedavg(yogi(server_lr, b1, b2, tau), clients_per_round, fraction, local, stragglers)


def fedadagrad(
    *,
    server_lr: float,
    tau: float = 1e-3,
    b1: float = 0.0,
    clients_per_round: int | None = None,
    fraction: float | None = None,
    local: FitInstructions | None = None,
    stragglers: Stragglers | None = None,
) -> FedAvg:
    """FedAvg with server Adagrad (:func:`fedfleet.transforms.adagrad`)."""
    return _fedavg(adagrad(server_lr, tau, b1), clients_per_round, fraction, local, stragglers)


def fedavgm(
    *,
    server_lr: float = 1.0,
    momentum: float = 0.9,
    clients_per_round: int | None = None,
    fraction: float | None = None,
    local: FitInstructions | None = None,
    stragglers: Stragglers | None = None,
) -> FedAvg:
    """FedAvg with server heavy-ball momentum: ``m = momentum*m - Delta``,
    ``x <- x - server_lr * m`` (Hsu et al. 2019). With ``momentum=0`` and ``server_lr=1``
    it is plain FedAvg."""
    if not server_lr > 0:
        raise ConfigError(f"fedavgm: server_lr must be > 0, got {server_lr}")
    if not 0.0 <= momentum < 1.0:
        raise ConfigError(f"fedavgm: momentum must be in [0, 1), got {momentum}")
    return _fedavg(sgd(server_lr, momentum), clients_per_round, fraction, local, stragglers)
