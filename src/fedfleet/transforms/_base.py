"""Server-side transforms as (init, update) pairs, in the spirit of optax.

A transform maps the round's pseudo-gradient ``g`` (minus the aggregated client delta) to the step
that is added to the global model (:func:`apply_delta` does both ends). All state is passed in and
returned as a plain dict of arrays and numbers, so it lands in checkpoints as is. Arithmetic is
float64: the server does little work per round and exact aggregation matters more than speed there.

``update`` also takes ``rng``, the call's random generator, for the pieces that draw (the
privacy transforms in :mod:`fedfleet.transforms._dp`); the others ignore it. Like optax's extra
arguments, :func:`chain` hands it to every piece in order, so their draws continue one stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = ["ServerTransform", "TransformState", "apply_delta", "chain", "sgd"]

TransformState = dict[str, "np.ndarray | float | int | TransformState"]


class ServerTransform(Protocol):
    """``init(vector) -> state``; ``update(grad, state, vector, rng) -> (step, state)``."""

    def init(self, vector: np.ndarray) -> TransformState: ...

    def update(
        self,
        grad: np.ndarray,
        state: TransformState,
        vector: np.ndarray,
        rng: np.random.Generator | None = None,
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
        self,
        grad: np.ndarray,
        state: TransformState,
        vector: np.ndarray,
        rng: np.random.Generator | None = None,
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
        self,
        grad: np.ndarray,
        state: TransformState,
        vector: np.ndarray,
        rng: np.random.Generator | None = None,
    ) -> tuple[np.ndarray, TransformState]:
        new_state: TransformState = {}
        for i, t in enumerate(self.transforms):
            own: TransformState = state[str(i)]  # type: ignore[assignment]
            # without a generator, call as (grad, state, vector): transforms written before
            # ``rng`` existed still chain
            grad, new_state[str(i)] = (
                t.update(grad, own, vector) if rng is None else t.update(grad, own, vector, rng)
            )
        return grad, new_state


def chain(*transforms: ServerTransform) -> ServerTransform:
    """Apply transforms in order, each to the previous one's output (and the same ``rng``);
    the state is ``{"0": first's state, "1": second's, ...}``."""
    return _Chain(tuple(transforms))


def apply_delta(
    transform: ServerTransform,
    vector: np.ndarray,
    delta: np.ndarray,
    state: TransformState,
) -> tuple[np.ndarray, TransformState]:
    """The server's move: ``w' = float32(w + transform(-delta))`` for the round's aggregated
    delta (float64 arithmetic), and the transform's new state. With ``sgd(1.0)`` it is
    ``w + delta``."""
    step, new_state = transform.update(-delta, state, vector)
    return (vector.astype(np.float64) + step).astype(np.float32), new_state
