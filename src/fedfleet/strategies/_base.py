"""The strategy protocol: what every federated algorithm supplies, and nothing more.

A strategy (1) picks the round's clients and tells each what to do, (2) says what a client does
with those instructions (plain local training for FedAvg; a corrected or proximal loop and a
control-variate update for SCAFFOLD or FedProx), and (3) turns the validated updates into the next
global vector. Its state is an explicit plain dict returned from every call,
never kept on the object, so a checkpoint is that dict plus the global vector. Engines and
transports (in-memory, multi-process, gRPC) call these methods and nothing else:
``configure_fit`` and ``aggregate_fit`` on the server, ``client_fit`` where the client runs.

Federated evaluation is a phase of its own, as in Flower: ``configure_evaluate`` picks which
clients evaluate the new global model and ``aggregate_evaluate`` turns their reports into the
round record's metrics. :class:`EvaluateAll` is the phase every built-in strategy has (each
client that holds a held-out split; :func:`fedfleet.evaluation.evaluation_summary`); wrappers
pass both calls to the strategy they wrap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from fedfleet.client import ClientState, FitInstructions, FitResult, Trainer
from fedfleet.data import ArrayDataset
from fedfleet.evaluation import ClientEvaluation, evaluation_summary
from fedfleet.transforms import ServerTransform, TransformState

__all__ = [
    "ClientResult",
    "ClientUpdate",
    "EvaluateAll",
    "Personalized",
    "Strategy",
    "StrategyState",
    "plain_client_fit",
    "transform_fit",
]

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
        extras: strategy-specific uploads besides the delta (e.g. SCAFFOLD's control-variate
            delta), each a float32 vector of the layout's size.
    """

    client_id: int
    delta: np.ndarray
    num_samples: int
    num_steps: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientResult:
    """What a strategy's client side produces: the local fit, extra uploads, and the client's
    new private state (None = leave it as it was)."""

    fit: FitResult
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)
    state: ClientState | None = None


def plain_client_fit(
    trainer: Trainer,
    vector: np.ndarray,
    data: ArrayDataset,
    instructions: FitInstructions,
    seed: int,
    state: ClientState | None,
) -> ClientResult:
    """The client side of FedAvg: local training as instructed, nothing else."""
    return ClientResult(trainer.fit(vector, data, instructions, seed))


def transform_fit(
    fit: FitResult,
    vector: np.ndarray,
    transform: ServerTransform,
    rng: np.random.Generator | None = None,
) -> tuple[FitResult, float]:
    """A client-side transform (clipping, local DP noise) applied to a fit's delta before it
    leaves the client: the fit whose vector is ``float32(w + transform(trained - w))`` (float64
    arithmetic), and the L2 norm the delta had before (for the clients' ``*_unclipped``
    metrics)."""
    delta = fit.vector.astype(np.float64) - vector
    out, _ = transform.update(delta, transform.init(vector), vector, rng)
    new = (vector.astype(np.float64) + out).astype(np.float32)
    return FitResult(new, fit.num_samples, fit.num_steps, fit.metrics), float(np.linalg.norm(delta))


@runtime_checkable
class Strategy(Protocol):
    """A federated algorithm as pure-ish functions over explicit state: a training phase
    (``configure_fit``, ``client_fit``, ``aggregate_fit``) and an evaluation phase
    (``configure_evaluate``, ``aggregate_evaluate``; :class:`EvaluateAll` is the default)."""

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

    def client_fit(
        self,
        trainer: Trainer,
        vector: np.ndarray,
        data: ArrayDataset,
        instructions: FitInstructions,
        seed: int,
        state: ClientState | None,
    ) -> ClientResult:
        """Run on the client: train from ``vector`` on local ``data``; ``state`` is the
        client's own state from earlier rounds (None the first time)."""
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

    def configure_evaluate(
        self,
        rnd: int,
        vector: np.ndarray,
        state: StrategyState,
        clients: Sequence[int],
        rng: np.random.Generator,
    ) -> list[int]:
        """Which of ``clients`` (those holding a held-out split, ascending) evaluate ``vector``,
        the global model after round ``rnd``; ascending ids. ``rng`` is the round's evaluation
        stream (:func:`fedfleet.rounds.evaluation_rng`), for a strategy that samples."""
        ...

    def aggregate_evaluate(self, rnd: int, reports: Sequence[ClientEvaluation]) -> dict[str, float]:
        """The round record's federated-evaluation metrics from the reports of the clients that
        evaluated, in ascending id order (``[]`` when none did)."""
        ...


class EvaluateAll:
    """The evaluation phase every built-in strategy has (Flower's ``configure_evaluate`` /
    ``aggregate_evaluate`` with all clients): every client that holds a held-out split
    evaluates the global model, and the record gets
    :func:`~fedfleet.evaluation.evaluation_summary` of the reports
    (``client_accuracy_{mean,worst10,min,std}``, ``client_loss_mean``, and ``global_client_*``
    for a :class:`Personalized` strategy). A strategy derives from it (it adds no fields) and
    overrides either method to evaluate otherwise."""

    def configure_evaluate(
        self,
        rnd: int,
        vector: np.ndarray,
        state: StrategyState,
        clients: Sequence[int],
        rng: np.random.Generator,
    ) -> list[int]:
        return sorted(clients)

    def aggregate_evaluate(self, rnd: int, reports: Sequence[ClientEvaluation]) -> dict[str, float]:
        return evaluation_summary(reports)


class DelegatedEvaluation:
    """The evaluation phase of a strategy that wraps another (FedPer/FedRep, local DP, the
    systems-heterogeneity wrappers): the wrapped strategy's, unchanged. A subclass says which
    one in :meth:`_evaluates_as`."""

    def _evaluates_as(self) -> Strategy:
        raise NotImplementedError

    def configure_evaluate(
        self,
        rnd: int,
        vector: np.ndarray,
        state: StrategyState,
        clients: Sequence[int],
        rng: np.random.Generator,
    ) -> list[int]:
        return self._evaluates_as().configure_evaluate(rnd, vector, state, clients, rng)

    def aggregate_evaluate(self, rnd: int, reports: Sequence[ClientEvaluation]) -> dict[str, float]:
        return self._evaluates_as().aggregate_evaluate(rnd, reports)


@runtime_checkable
class Personalized(Protocol):
    """A strategy whose clients keep a model of their own (FedPer, FedRep): federated evaluation
    then scores each client's own model as well as the global one, in simulation and deployed
    alike (both transports ask ``isinstance(strategy, Personalized)``)."""

    def personalize(self, vector: np.ndarray, client_state: ClientState | None) -> np.ndarray:
        """Client ``client_state``'s own model from the global ``vector`` (None: it has no
        state yet)."""
        ...
