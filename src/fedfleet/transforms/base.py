"""Server-side transforms as (init, update) pairs, in the spirit of optax.

A transform maps the round's pseudo-gradient ``g`` (minus the aggregated client delta) to the step
that is added to the global model. All state is passed in and returned as a plain dict of arrays
and numbers, so it lands in checkpoints as is. Arithmetic is float64: the server does little work
per round and exact aggregation matters more than speed there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = ["ServerTransform", "TransformState", "chain", "sgd"]

TransformState = dict[str, "np.ndarray | float | int | TransformState"]


class ServerTransform(Protocol):
    """``init(vector) -> state``; ``update(grad, state, vector) -> (step, state)``."""

    def init(self, vector: np.ndarray) -> TransformState: ...

    def update(
        self, grad: np.ndarray, state: TransformState, vector: np.ndarray
    ) -> tuple[np.ndarray, TransformState]: ...


@dataclass(frozen=True)
class _Sgd:
    lr: float
    momentum: float

    def init(self, vector: np.ndarray) -> TransformState:
        if self.momentum == 0.0:
            return {}
        return {"momentum": np.zeros(vector.shape, dtype=np.float64)}

    def update(
        self, grad: np.ndarray, state: TransformState, vector: np.ndarray
    ) -> tuple[np.ndarray, TransformState]:
        if self.momentum == 0.0:
            return -self.lr * grad, state
        m = self.momentum * state["momentum"] + grad  # type: ignore[operator]
        return -self.lr * m, {"momentum": m}


def sgd(lr: float = 1.0, momentum: float = 0.0) -> ServerTransform:
    """Server SGD: ``step = -lr * g``, or with heavy-ball momentum ``m = beta*m + g``,
    ``step = -lr * m``. ``sgd(1.0)`` applied to the averaged delta is exactly FedAvg;
    ``sgd(lr, momentum)`` is FedAvgM (Hsu et al. 2019)."""
    return _Sgd(float(lr), float(momentum))


@dataclass(frozen=True)
class _Chain:
    transforms: tuple[ServerTransform, ...]

    def init(self, vector: np.ndarray) -> TransformState:
        return {str(i): t.init(vector) for i, t in enumerate(self.transforms)}

    def update(
        self, grad: np.ndarray, state: TransformState, vector: np.ndarray
    ) -> tuple[np.ndarray, TransformState]:
        new_state: TransformState = {}
        for i, t in enumerate(self.transforms):
            grad, new_state[str(i)] = t.update(grad, state[str(i)], vector)  # type: ignore[arg-type]
        return grad, new_state


def chain(*transforms: ServerTransform) -> ServerTransform:
    """Apply transforms in order, each to the previous one's output."""
    return _Chain(tuple(transforms))
