"""What a client trainer is: a pure function of (global vector, local data, instructions, seed).

Two implementations ship: :class:`fedfleet.client.TorchTrainer` for any ``nn.Module`` and plain
NumPy/scikit-learn trainers in :mod:`fedfleet.client._numpy_trainers`. Anything that satisfies
:class:`Trainer` can be federated: the engines and strategies see only flat vectors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from numbers import Real
from typing import Protocol, runtime_checkable

import numpy as np

from fedfleet.data import ArrayDataset
from fedfleet.errors import ConfigError
from fedfleet.params import Layout

__all__ = [
    "GRAD_CORRECTION",
    "PROX_MU",
    "EvalResult",
    "FitInstructions",
    "FitResult",
    "Trainer",
    "gradient_terms",
]


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


PROX_MU = "prox_mu"
"""``FitInstructions.config`` key: FedProx's proximal coefficient mu (float >= 0, default 0)."""

GRAD_CORRECTION = "grad_correction"
"""``FitInstructions.payload`` key: a layout-sized float32 vector added to every local gradient
(SCAFFOLD's ``c - c_i``)."""


def gradient_terms(
    instructions: FitInstructions, layout: Layout
) -> tuple[float, np.ndarray | None]:
    """The extra terms every local gradient step adds, read and checked from ``instructions``.

    A trainer starting from the global vector ``w0`` steps on

        g(w) + mu * (w - w0) + correction

    where ``mu = config["prox_mu"]`` (FedProx, Li et al. 2020: the gradient of the proximal term
    ``mu/2 ||w - w0||^2``) and ``correction = payload["grad_correction"]`` (SCAFFOLD,
    Karimireddy et al. 2020: ``c - c_i``). Returns ``(mu, correction or None)``; ``(0.0, None)``
    means plain local training.

    Raises:
        ConfigError: mu is not a finite number >= 0.
        LayoutError: the correction is not a float32 vector of the layout's size.
    """
    mu = instructions.config.get(PROX_MU, 0.0)
    if isinstance(mu, bool) or not isinstance(mu, Real) or not 0.0 <= mu < float("inf"):
        raise ConfigError(
            f"config[{PROX_MU!r}] (FedProx's mu) must be a finite number >= 0, got {mu!r}"
        )
    correction = instructions.payload.get(GRAD_CORRECTION)
    if correction is not None:
        layout.check(correction, who=f"payload[{GRAD_CORRECTION!r}]")
    return float(mu), correction


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
    """Local training and evaluation over flat float32 vectors of ``layout``.

    A trainer may set ``hands_over_results = True``: the vectors its fits return belong to the
    caller, which may overwrite them (nothing in the trainer reads them again). The simulation
    engine then turns a cohort's result rows into deltas in place instead of copying them.
    """

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
