"""Federated algorithms as small strategy pieces over one protocol."""

from fedfleet.strategies.base import (
    ClientResult,
    ClientUpdate,
    Strategy,
    StrategyState,
    plain_client_fit,
)
from fedfleet.strategies.fedavg import FedAvg, weighted_mean
from fedfleet.strategies.sampling import cohort_size, sample_clients

__all__ = [
    "ClientResult",
    "ClientUpdate",
    "FedAvg",
    "Strategy",
    "StrategyState",
    "cohort_size",
    "plain_client_fit",
    "sample_clients",
    "weighted_mean",
]
