"""FedBuff (Nguyen et al. 2022, "Federated Learning with Buffered Asynchronous Aggregation"):
the strategy of asynchronous rounds.

The server keeps ``concurrency`` clients training at once, each drawn uniformly from the idle
clients. A client trains from the global version it downloaded; when it finishes, its delta
joins a buffer with staleness ``s = (server version now) - (version it started from)``. Once the
buffer holds K updates the server steps

    x <- x + eta_g * sum_i w(s_i) delta_i / K,        w(s) = 1 / sqrt(1 + s) by default,

increments the version and clears the buffer. ``eta_g * mean`` is the server transform
``sgd(eta_g)`` applied to the pseudo-gradient ``-sum_i w(s_i) delta_i / K``; any other
:class:`~fedfleet.transforms.ServerTransform` (FedAdam, momentum) can take its place.

This module is the algorithm only: :class:`fedfleet.rounds.BufferedLoop` runs it, on a simulated
clock (:class:`fedfleet.sim.FedBuffSimulation`) or over gRPC (``fedfleet server`` with
``strategy.name = 'fedbuff'``), with the same code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field

import numpy as np

from fedfleet.client import ClientState, FitInstructions, Trainer
from fedfleet.data import ArrayDataset
from fedfleet.errors import ConfigError
from fedfleet.strategies._base import ClientResult, ClientUpdate, StrategyState, plain_client_fit
from fedfleet.strategies._sampling import sample_clients
from fedfleet.transforms._base import ServerTransform, apply_delta, sgd

__all__ = ["FedBuff", "StalenessWeight", "buffered_mean", "polynomial_staleness"]

StalenessWeight = Callable[[int], float]
"""``w(s)``: the weight of an update that is ``s`` server versions old."""


@dataclass(frozen=True)
class _Polynomial:
    exponent: float

    def __call__(self, staleness: int) -> float:
        return float((1.0 + staleness) ** -self.exponent)


def polynomial_staleness(exponent: float = 0.5) -> StalenessWeight:
    """``w(s) = (1 + s) ** -exponent``: 0.5 is FedBuff's ``1 / sqrt(1 + s)``, 0 weighs every
    update alike (Xie et al. 2019, "Asynchronous Federated Optimization", polynomial weights)."""
    if not (math.isfinite(exponent) and exponent >= 0):
        raise ConfigError(f"staleness exponent must be >= 0, got {exponent}")
    return _Polynomial(float(exponent))


def buffered_mean(
    deltas: Sequence[np.ndarray],
    staleness: Sequence[int],
    weight: StalenessWeight,
    buffer_size: int,
) -> np.ndarray:
    """``sum_i w(s_i) delta_i / K`` in float64 (K = ``buffer_size``), one matrix-vector product."""
    w = np.array([weight(s) for s in staleness], dtype=np.float64)
    if not (np.isfinite(w).all() and (w >= 0).all()):
        raise ConfigError(f"staleness weights must be finite and >= 0, got {w.tolist()}")
    return (w / buffer_size) @ np.stack(deltas).astype(np.float64)


@dataclass(frozen=True)
class FedBuff:
    """FedBuff's hyper-parameters and its three steps: whom to dispatch, what a client does,
    and the server step on a full buffer.

    Args:
        local: the instructions every client gets (epochs, batch size, lr, max_steps).
        buffer_size: K, updates per server step.
        concurrency: clients training at once (capped at the number of clients).
        server_lr: eta_g; the server step is ``sgd(server_lr)`` unless ``server_optimizer``.
        server_optimizer: a server transform applied to ``-buffered mean`` instead (it carries
            its own learning rate, so leave ``server_lr`` at 1).
        staleness_weight: ``w(s)``; default ``polynomial_staleness(0.5) = 1 / sqrt(1 + s)``.
    """

    _: KW_ONLY
    local: FitInstructions = field(default_factory=FitInstructions)
    buffer_size: int = 10
    concurrency: int = 100
    server_lr: float = 1.0
    server_optimizer: ServerTransform | None = None
    staleness_weight: StalenessWeight = field(default_factory=polynomial_staleness)

    def __post_init__(self) -> None:
        if self.buffer_size < 1:
            raise ConfigError(f"fedbuff: buffer_size must be >= 1, got {self.buffer_size}")
        if self.concurrency < 1:
            raise ConfigError(f"fedbuff: concurrency must be >= 1, got {self.concurrency}")
        if self.server_optimizer is not None and self.server_lr != 1.0:
            raise ConfigError(
                "fedbuff: give server_lr (a plain SGD server step) or server_optimizer (which "
                "carries its own learning rate), not both"
            )

    @property
    def transform(self) -> ServerTransform:
        return self.server_optimizer or sgd(self.server_lr)

    def init(self, vector: np.ndarray) -> StrategyState:
        return {"server_optimizer": self.transform.init(vector)}

    def dispatch(
        self, idle: Sequence[int], in_flight: int, rng: np.random.Generator
    ) -> list[tuple[int, FitInstructions]]:
        """Clients to start now: uniform draws from ``idle`` up to ``concurrency`` in flight."""
        free = min(self.concurrency - in_flight, len(idle))
        if free <= 0:
            return []
        return [(cid, self.local) for cid in sample_clients(idle, free, rng)]

    def client_fit(
        self,
        trainer: Trainer,
        vector: np.ndarray,
        data: ArrayDataset,
        instructions: FitInstructions,
        seed: int,
        state: ClientState | None,
    ) -> ClientResult:
        """Plain local training from the version the client downloaded."""
        return plain_client_fit(trainer, vector, data, instructions, seed, state)

    def aggregate_buffer(
        self,
        vector: np.ndarray,
        state: StrategyState,
        buffer: Sequence[tuple[ClientUpdate, int]],
    ) -> tuple[np.ndarray, StrategyState, dict[str, float]]:
        """The server step on a full buffer of ``(update, staleness)``: the server transform
        on ``-sum_i w(s_i) delta_i / K``."""
        updates = [u for u, _ in buffer]
        staleness = [s for _, s in buffer]
        mean = buffered_mean(
            [u.delta for u in updates], staleness, self.staleness_weight, self.buffer_size
        )
        new, opt_state = apply_delta(
            self.transform,
            vector,
            mean,
            state["server_optimizer"],  # type: ignore[arg-type]
        )
        metrics = {
            "staleness_mean": float(np.mean(staleness)),
            "staleness_max": int(max(staleness)),
        }
        return new, {"server_optimizer": opt_state}, metrics
