"""The round loop: every synchronous federated run, simulated or deployed, is this loop.

Per round ``r``::

    clients(r)                      who can be offered work (the federation, the clients online
                                    in simulation; the connected ones over the network)
    strategy.configure_fit(...)     the cohort and its instructions, sampled with
                                    sampling_rng(seed, r)
    pacer.schedule(plan)            a deadline policy's cut (simulated heterogeneous clients)
    transport.fit(FitJob)           the clients train and reply; replies are validated there
    aggregate                       strategy.aggregate_fit, or an upload protocol's step on the
                                    sum it made (secure aggregation, HE)
    record                          one dict of the round's numbers; centralized evaluation
    checkpoint -> transport.commit  over the network the checkpoint is on disk before clients
                                    hear their staged state was applied
    configure_evaluate -> transport.evaluate -> aggregate_evaluate
                                    federated evaluation every ``federated_every`` rounds: the
                                    strategy picks who evaluates among ``evaluators(r)`` (with
                                    evaluation_rng(seed, r)) and turns the reports into metrics

:class:`fedfleet.sim.Simulation` and :class:`fedfleet.net.FederatedServer` only build the loop's
pieces (a transport, the ``clients`` source, the evaluation, the checkpoint writer) and call
:meth:`RoundLoop.run`. All randomness derives from the seed and the round, so no generator state
is carried: :class:`LoopState` is everything a resumed run needs besides the clients' own state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from fedfleet.client import EvalResult
from fedfleet.errors import FedfleetError, PrivacyBudgetExhausted, UpdateRejected
from fedfleet.evaluation import ClientEvaluation, test_metrics
from fedfleet.rounds._transport import (
    EvaluateJob,
    FitJob,
    FitReplies,
    Plan,
    Transport,
    evaluation_rng,
    plan_metrics,
    sampling_rng,
)
from fedfleet.strategies._base import ClientUpdate, Strategy, StrategyState

__all__ = [
    "TIMING_KEYS",
    "LoopState",
    "Pacer",
    "RoundLoop",
    "download_bytes",
    "round_record",
    "upload_bytes",
    "weighted_train_loss",
]

log = logging.getLogger("fedfleet")

TIMING_KEYS = frozenset({"round_time_s", "wall_time_s"})
"""Metrics that measure the machine, not the run: excluded from determinism checks."""


@dataclass(frozen=True)
class LoopState:
    """What the loop carries from round ``round`` to the next.

    Attributes:
        round: the last round completed (0 before the first).
        vector: the global vector after it.
        strategy_state: the strategy's state after it.
        history: the records of rounds 1..round.
        sim_time_s: the simulated clock's running total (0 without a pacer).
    """

    round: int
    vector: np.ndarray
    strategy_state: StrategyState
    history: list[dict[str, Any]] = field(default_factory=list)
    sim_time_s: float = 0.0


class Pacer(Protocol):
    """Simulated time for heterogeneous clients (:mod:`fedfleet.sim._profiles`)."""

    def schedule(self, plan: Plan, vector: np.ndarray) -> tuple[Plan, float]:
        """The plan a deadline policy keeps, and how long the server waits at least."""
        ...

    def round_time(self, plan: Plan, steps: Sequence[int], vector: np.ndarray) -> float:
        """The round's simulated duration: the slowest planned client's round trip."""
        ...


Checkpoint = Callable[[LoopState], None]


@dataclass
class RoundLoop:
    """Runs synchronous rounds of ``strategy`` through ``transport``.

    Args:
        strategy: the federated algorithm.
        transport: where the clients run (:class:`~fedfleet.rounds.Transport`).
        seed: the run's seed.
        clients: ``clients(r)``: the ids that may be sampled in round ``r``; None stops the run
            (a server shutting down).
        test: centralized evaluation of a vector (None: none).
        eval_every: centralized evaluation every k rounds and after the last; 0: only after
            the last.
        federated_every: federated evaluation every k rounds and after the last; 0: never.
        evaluators: ``evaluators(r)``: the ids that hold a held-out split after round ``r``,
            ascending, among which ``strategy.configure_evaluate`` picks (None: ``clients(r)``).
        pacer: simulated time (None: records carry none).
        min_accept: a round with fewer accepted updates is played again with the clients
            available then (over the network; 0 in simulation).
        checkpoint: writes a :class:`LoopState` durably (None: nothing is written).
        checkpoint_before_commit: write the checkpoint before ``transport.commit`` (a deployed
            client commits its state when told, so the checkpoint must exist first; with
            federated evaluation it is written again after it). Without it, once per round,
            after everything.
        on_evaluation: ``(round, reports)`` after each federated evaluation, with the
            per-client reports the record only summarises (trackers plot their spread).
    """

    strategy: Strategy
    transport: Transport
    seed: int
    clients: Callable[[int], Sequence[int] | None]
    test: Callable[[np.ndarray], EvalResult] | None = None
    eval_every: int = 1
    federated_every: int = 0
    evaluators: Callable[[int], Sequence[int]] | None = None
    pacer: Pacer | None = None
    min_accept: int = 0
    checkpoint: Checkpoint | None = None
    checkpoint_before_commit: bool = False
    on_evaluation: Callable[[int, Sequence[ClientEvaluation]], None] | None = None
    rejected: list[UpdateRejected] = field(default_factory=list)
    """The refusals the transport returned during :meth:`run`."""

    def run(
        self,
        rounds: int,
        start: LoopState,
        on_round: Callable[[dict[str, Any]], None] | None = None,
        until: Callable[[dict[str, Any]], bool] | None = None,
    ) -> LoopState:
        """Rounds ``start.round + 1 .. rounds``; ``on_round(record)`` after each (after its
        checkpoint), ``until(record)`` True ends the run early. Returns the last state."""
        state = replace(start, history=[dict(r) for r in start.history])
        # wall_time_s goes on from the checkpoint's (the time the run was down is not in it)
        done_s = (state.history[-1].get("wall_time_s") or 0.0) if state.history else 0.0
        start_s = time.perf_counter() - done_s
        for rnd in range(state.round + 1, rounds + 1):
            t0 = time.perf_counter()
            played = self._play(rnd, state)
            if played is None:
                break
            plan, replies, num_online, wait_s = played
            aggregate = replies.aggregate or self.strategy.aggregate_fit
            vector, strategy_state, metrics = aggregate(
                rnd, state.vector, state.strategy_state, replies.updates
            )
            record = round_record(rnd, plan, replies.updates, metrics)
            record["downlink_bytes"] = download_bytes(plan, state.vector)
            sim_time = state.sim_time_s
            if self.pacer is not None:
                sim_round = max(self.pacer.round_time(plan, replies.steps, state.vector), wait_s)
                sim_time += sim_round
                record.update(num_online=num_online, sim_round_s=sim_round, sim_time_s=sim_time)
            accepted = [u.client_id for u in replies.updates]
            del played, replies  # frees the round's deltas before evaluation
            last = rnd == rounds
            if last or (self.eval_every and rnd % self.eval_every == 0):
                self._evaluate(vector, record)
            history = [*state.history, record]
            state = LoopState(rnd, vector, strategy_state, history, sim_time)

            if self.checkpoint is not None and self.checkpoint_before_commit:
                _stamp(record, t0, start_s)
                self.checkpoint(state)
            self.transport.commit(rnd, accepted)
            evaluated = bool(self.federated_every) and (last or rnd % self.federated_every == 0)
            if evaluated:
                record.update(self._evaluate_federated(rnd, vector, strategy_state))
            _stamp(record, t0, start_s)
            if self.checkpoint is not None and (evaluated or not self.checkpoint_before_commit):
                self.checkpoint(state)
            if on_round is not None:
                on_round(record)
            if until is not None and until(record):
                break
        if state.history and "test_accuracy" not in state.history[-1]:
            self._evaluate(state.vector, state.history[-1])  # stopped between evaluations
        return state

    def _play(self, rnd: int, state: LoopState) -> tuple[Plan, FitReplies, int, float] | None:
        """Sample, configure and train round ``rnd`` until ``min_accept`` updates are
        accepted: ``(plan, replies, clients available, wait_s)``, or None to stop the run."""
        while True:
            clients = self.clients(rnd)
            if clients is None:
                return None
            try:
                plan: Plan = self.strategy.configure_fit(
                    rnd, state.vector, state.strategy_state, clients, sampling_rng(self.seed, rnd)
                )
            except PrivacyBudgetExhausted as stop:
                log.warning("stopping before round %d: %s", rnd, stop)
                return None
            wait_s = 0.0
            if self.pacer is not None:
                plan, wait_s = self.pacer.schedule(plan, state.vector)
            replies = self.transport.fit(FitJob(rnd, state.vector, plan, self.seed))
            if replies is None:
                return None
            self.rejected.extend(replies.rejected)
            # a plan of nobody (a Poisson draw that sampled no client) is a round: retrying it
            # would draw the same empty cohort again
            if not plan or len(replies.updates) >= self.min_accept:
                return plan, replies, len(clients), wait_s
            log.warning(
                "round %d: %d valid updates, fewer than min_accept=%d; retrying the round",
                rnd,
                len(replies.updates),
                self.min_accept,
            )

    def _evaluate_federated(
        self, rnd: int, vector: np.ndarray, strategy_state: StrategyState
    ) -> dict[str, float]:
        """The strategy's evaluation phase: ``configure_evaluate`` picks the clients, the
        transport has them evaluate ``vector``, ``aggregate_evaluate`` makes the metrics."""
        candidates = (self.evaluators or self.clients)(rnd)
        if candidates is None:  # no clients: a server shutting down
            candidates = []
        chosen = sorted(
            set(
                self.strategy.configure_evaluate(
                    rnd, vector, strategy_state, candidates, evaluation_rng(self.seed, rnd)
                )
            )
        )
        unknown = sorted(set(chosen).difference(candidates))
        if unknown:
            raise FedfleetError(
                f"round {rnd}: {type(self.strategy).__name__}.configure_evaluate chose clients "
                f"{unknown[:10]} that are not among the {len(candidates)} clients it was given "
                "(those available with a held-out split); choose among `clients`"
            )
        reports = self.transport.evaluate(EvaluateJob(rnd, vector, chosen))
        if self.on_evaluation is not None:
            self.on_evaluation(rnd, reports)
        return self.strategy.aggregate_evaluate(rnd, reports)

    def _evaluate(self, vector: np.ndarray, record: dict[str, Any]) -> None:
        if self.test is not None:
            ev = self.test(vector)
            record.update(test_metrics(ev.loss, ev.accuracy))


def _stamp(record: dict[str, Any], t0: float, start_s: float) -> None:
    now = time.perf_counter()
    record["round_time_s"], record["wall_time_s"] = now - t0, now - start_s


def round_record(
    rnd: int, plan: Plan, updates: Sequence[ClientUpdate], metrics: dict[str, float]
) -> dict[str, Any]:
    """The one record of a round: counts, training loss, ``uplink_bytes``
    (:func:`upload_bytes`), the plan's and the aggregation's metrics (``aggregated``, the
    aggregator's own count, is left out)."""
    record: dict[str, Any] = {
        "round": rnd,
        "num_clients": len(updates),
        "num_rejected": len(plan) - len(updates),
        "train_loss": weighted_train_loss(updates),
        "uplink_bytes": upload_bytes(updates),
    }
    record.update(plan_metrics(plan))  # e.g. Stragglers' RoundPlan counts
    record.update({k: v for k, v in metrics.items() if k != "aggregated"})
    return record


def download_bytes(plan: Plan, vector: np.ndarray) -> int:
    """Bytes of the arrays sent to the planned clients: the global vector and any array in
    their instructions' payload (e.g. SCAFFOLD's correction), before a transport's framing."""
    total = 0
    for _, ins in plan:
        extra = sum(v.nbytes for v in ins.payload.values() if isinstance(v, np.ndarray))
        total += vector.nbytes + extra
    return int(total)


def upload_bytes(updates: Sequence[ClientUpdate]) -> int:
    """Bytes of the arrays the accepted clients uploaded: each delta and strategy extra (e.g.
    SCAFFOLD's control-variate delta) as float32 vectors of the layout the clients train,
    before a transport's framing; a round that aggregates masked or encrypted uploads
    (secure aggregation, HE) sends more than this."""
    return int(sum(u.delta.nbytes + sum(e.nbytes for e in u.extras.values()) for u in updates))


def weighted_train_loss(updates: Sequence[ClientUpdate]) -> float | None:
    """Sample-weighted mean of the clients' reported training losses (None if none reported)."""
    losses, weights = [], []
    for u in updates:
        loss = u.metrics.get("train_loss")
        if loss is not None and np.isfinite(loss):
            losses.append(float(loss))
            weights.append(u.num_samples)
    return float(np.average(losses, weights=weights)) if losses else None
