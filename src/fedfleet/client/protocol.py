"""What a client trainer is: a pure function of (global vector, local data, instructions, seed).

Two implementations ship: :class:`fedfleet.client.TorchTrainer` for any ``nn.Module`` and plain
NumPy/scikit-learn trainers in :mod:`fedfleet.client.numpy_trainers`. Anything that satisfies
:class:`Trainer` can be federated: the engines and strategies see only flat vectors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from fedfleet.data.base import ArrayDataset
from fedfleet.params import Layout

__all__ = ["EvalResult", "FitInstructions", "FitResult", "Trainer"]


@dataclass(frozen=True, kw_only=True)
class FitInstructions:
    """What the server asks one client to do this round.

    Attributes:
        epochs: local passes over the client's data (E in the FedAvg paper).
        batch_size: local mini-batch size (B).
        lr: client learning rate.
        max_steps: stop after this many local steps even mid-epoch (partial work); None = no cap.
        config: strategy-specific scalars (e.g. a proximal ``mu``), plain numbers and strings.
        payload: strategy-specific vectors broadcast with the model (e.g. SCAFFOLD's server
            control variate), float32 arrays.
    """

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.01
    max_steps: int | None = None
    config: Mapping[str, float | int | str | bool] = field(default_factory=dict)
    payload: Mapping[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class FitResult:
    """A client's trained vector, how much data and how many steps produced it, and metrics."""

    vector: np.ndarray
    num_samples: int
    num_steps: int
    metrics: Mapping[str, float]


@dataclass(frozen=True)
class EvalResult:
    """Mean loss and accuracy of a model on ``num_samples`` samples."""

    loss: float
    accuracy: float
    num_samples: int


@runtime_checkable
class Trainer(Protocol):
    """Local training and evaluation over flat float32 vectors of ``layout``."""

    @property
    def layout(self) -> Layout: ...

    def init_vector(self, seed: int) -> np.ndarray:
        """The initial global model, drawn deterministically from ``seed``."""
        ...

    def fit(
        self, vector: np.ndarray, data: ArrayDataset, instructions: FitInstructions, seed: int
    ) -> FitResult:
        """Train from ``vector`` on ``data``; must not mutate ``vector``."""
        ...

    def evaluate(self, vector: np.ndarray, data: ArrayDataset) -> EvalResult: ...
