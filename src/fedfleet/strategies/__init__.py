"""Federated algorithms as small strategy pieces over one protocol."""

from fedfleet.strategies.base import ClientUpdate, Strategy, StrategyState
from fedfleet.strategies.fedavg import FedAvg, weighted_mean
from fedfleet.strategies.sampling import cohort_size, sample_clients

__all__ = [
    "ClientUpdate",
    "FedAvg",
    "Strategy",
    "StrategyState",
    "cohort_size",
    "sample_clients",
    "weighted_mean",
]
