"""The one extension point between the round loop and where clients run: :class:`Transport`.

In the spirit of httpx's ``BaseTransport.handle_request``: the loop hands a transport one
round's work as a :class:`FitJob` (the round, the global vector, the plan of clients and their
instructions, the run's seed) and gets back :class:`FitReplies` (the accepted updates in plan
order, the refusals, every planned client's step count). Where the clients run is the
transport's business alone:

* in process, over the cohort executors (sequential, vectorised, compiled, threaded, the
  process pool, Ray): :class:`fedfleet.sim.InProcessTransport`;
* over gRPC: :class:`fedfleet.net.FederatedServer`'s round, and the secure-aggregation and HE
  rounds of :mod:`fedfleet.net.secure`;
* in a test: a plain function ``FitJob -> FitReplies``, which the loop wraps in
  :class:`FunctionTransport`.

Every transport validates each reply with :func:`fedfleet.validation.validate_update` (the
network's before it answers the upload, so a refused client hears why at once) and trains client
``c`` of round ``r`` with :func:`client_seed` ``(seed, r, c)``: that, plus the loop being one
code path, is why a simulated and a deployed run end bit-identical.

An upload protocol that sums on the way (secure aggregation, homomorphic encryption) replies
with receipts in ``updates`` (no deltas: the server never sees one) and the server's step on what
it summed in ``aggregate``, which the loop calls in place of the strategy's ``aggregate_fit``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

import fedfleet._streams as _streams
from fedfleet.client import FitInstructions
from fedfleet.errors import UpdateRejected
from fedfleet.evaluation import ClientEvaluation
from fedfleet.strategies._base import ClientUpdate, StrategyState

__all__ = [
    "Aggregate",
    "EvaluateJob",
    "FitJob",
    "FitReplies",
    "FunctionTransport",
    "Transport",
    "client_seed",
    "evaluation_rng",
    "plan_metrics",
    "sampling_rng",
]

Plan = Sequence[tuple[int, FitInstructions]]
Aggregate = Callable[
    [int, np.ndarray, StrategyState, Sequence[ClientUpdate]],
    tuple[np.ndarray, StrategyState, dict[str, float]],
]
"""``(rnd, vector, state, updates) -> (vector', state', metrics)``: ``Strategy.aggregate_fit``'s
shape."""


def client_seed(seed: int, rnd: int, cid: int) -> int:
    """The seed for client ``cid``'s local training in round ``rnd``."""
    return _streams.derive_seed(seed, _streams.client_training(rnd, cid))


def sampling_rng(seed: int, rnd: int) -> np.random.Generator:
    """The generator ``configure_fit`` samples round ``rnd``'s cohort with."""
    return _streams.generator(seed, _streams.sampling(rnd))


def evaluation_rng(seed: int, rnd: int) -> np.random.Generator:
    """The generator ``configure_evaluate`` chooses round ``rnd``'s evaluating clients with."""
    return _streams.generator(seed, _streams.evaluation_sampling(rnd))


@dataclass(frozen=True)
class FitJob:
    """One round's training work.

    Attributes:
        round: the round number (1-based).
        vector: the global vector every planned client starts from (float32, read-only to
            transports).
        plan: ``(client id, instructions)`` pairs from ``configure_fit`` (after a deadline
            policy, in simulation); a transport answers in this order.
        seed: the run's seed; client ``c`` trains with ``client_seed(seed, round, c)``.
    """

    round: int
    vector: np.ndarray
    plan: Plan
    seed: int


@dataclass
class FitReplies:
    """What came back from a :class:`FitJob`.

    Attributes:
        updates: the accepted updates, in plan order (receipts without deltas when an upload
            protocol summed them).
        rejected: the refused replies, each naming client, round and reason (a transport that
            records refusals itself, as the server does, may leave it empty).
        steps: every planned client's local step count, in plan order (for the simulated clock;
            empty where nobody measures it).
        aggregate: the server's step on what an upload protocol summed; None: the loop calls the
            strategy's ``aggregate_fit`` on ``updates``.
    """

    updates: list[ClientUpdate]
    rejected: list[UpdateRejected] = field(default_factory=list)
    steps: Sequence[int] = ()
    aggregate: Aggregate | None = None


@dataclass(frozen=True)
class EvaluateJob:
    """Federated evaluation of ``vector`` after round ``round`` on the held-out splits of
    ``clients`` (the strategy's ``configure_evaluate`` chose them, in ascending id order by
    default); a :class:`~fedfleet.strategies._base.Personalized` strategy's clients evaluate
    their own model too."""

    round: int
    vector: np.ndarray
    clients: Sequence[int]


@runtime_checkable
class Transport(Protocol):
    """Where a round's clients run."""

    def fit(self, job: FitJob) -> FitReplies | None:
        """Train the planned clients; None when the transport is shutting down (the run
        stops after the last completed round)."""
        ...

    def evaluate(self, job: EvaluateJob) -> list[ClientEvaluation]:
        """The reports of ``job.clients`` that evaluated (those unreachable are left out), in
        the order of ``job.clients`` (``[]``: no federated evaluation)."""
        ...

    def commit(self, rnd: int, accepted: Sequence[int]) -> None:
        """Round ``rnd``'s checkpoint is written: the accepted clients' new private state is in
        effect (over the network, their next task header says so; in process, a no-op)."""
        ...


@dataclass(frozen=True)
class FunctionTransport:
    """A plain function ``FitJob -> FitReplies`` as a transport (no federated evaluation,
    nothing to commit): a test's transport is this."""

    function: Callable[[FitJob], FitReplies | None]

    def fit(self, job: FitJob) -> FitReplies | None:
        return self.function(job)

    def evaluate(self, job: EvaluateJob) -> list[ClientEvaluation]:
        return []

    def commit(self, rnd: int, accepted: Sequence[int]) -> None:
        return None


def as_transport(transport: Transport | Callable[[FitJob], FitReplies | None]) -> Transport:
    """``transport`` itself, or a plain function wrapped in :class:`FunctionTransport`."""
    if isinstance(transport, Transport):
        return transport
    return FunctionTransport(transport)


def plan_metrics(plan: Plan) -> Mapping[str, Any]:
    """The counts a plan carries (a :class:`~fedfleet.strategies._stragglers.RoundPlan`'s
    ``metrics``); a plain list carries none."""
    return getattr(plan, "metrics", {})
