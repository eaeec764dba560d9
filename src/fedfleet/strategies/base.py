"""The strategy protocol: what every federated algorithm supplies, and nothing more.

A strategy (1) picks the round's clients and tells each what to do, and (2) turns the validated
updates into the next global vector. Its state is an explicit plain dict returned from every call,
never kept on the object, so a checkpoint is that dict plus the global vector. Engines and
transports (in-memory, multi-process, gRPC) call these two methods and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from fedfleet.client.protocol import FitInstructions
from fedfleet.transforms.base import TransformState

__all__ = ["ClientUpdate", "Strategy", "StrategyState"]

StrategyState = TransformState


@dataclass(frozen=True)
class ClientUpdate:
    """What one client sends back after local training.

    Attributes:
        client_id: who sent it.
        delta: trained vector minus the global vector it started from (float32, layout-sized).
        num_samples: local training samples (n_k in FedAvg's weights).
        num_steps: local optimizer steps taken (tau_k, for FedNova and partial work).
        metrics: client-reported numbers such as ``train_loss``.
    """

    client_id: int
    delta: np.ndarray
    num_samples: int
    num_steps: int
    metrics: Mapping[str, float] = field(default_factory=dict)


@runtime_checkable
class Strategy(Protocol):
    """A federated algorithm as two pure-ish functions over explicit state."""

    def init(self, vector: np.ndarray) -> StrategyState:
        """The strategy's state before round 1 (e.g. server optimizer moments)."""
        ...

    def configure_fit(
        self,
        rnd: int,
        vector: np.ndarray,
        state: StrategyState,
        clients: Sequence[int],
        rng: np.random.Generator,
    ) -> list[tuple[int, FitInstructions]]:
        """Choose this round's clients among ``clients`` and the instructions for each."""
        ...

    def aggregate_fit(
        self,
        rnd: int,
        vector: np.ndarray,
        state: StrategyState,
        updates: Sequence[ClientUpdate],
    ) -> tuple[np.ndarray, StrategyState, dict[str, float]]:
        """The next global vector and state from the round's validated updates, plus metrics."""
        ...
