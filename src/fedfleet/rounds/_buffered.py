"""Asynchronous rounds: FedBuff's buffered aggregation as a mode of the round loop.

Where :class:`~fedfleet.rounds.RoundLoop` waits for a cohort, :class:`BufferedLoop` keeps
``concurrency`` clients busy and steps the server every ``buffer_size`` arrivals::

    refill      dispatch clients drawn from the idle ones (FedBuff.dispatch, sampled with
                sampling_rng(seed, d) where d is the refill's first dispatch number), each with
                the current version's vector and seed client_seed(seed, d, client)
    arrive      the transport hands over the next finished client's validated update
                (or its refusal, or that it dropped out)
    buffer      (update, staleness = version now - version it started from)
    step        a full buffer: FedBuff.aggregate_buffer, version + 1, record, evaluate

Transports implement :class:`AsyncTransport`: on a simulated clock (arrivals in order of
simulated finish time, ties by client id; :mod:`fedfleet.sim._clocked`) or over gRPC (arrivals in
the order uploads are accepted; :class:`fedfleet.net.FederatedServer`). The loop is the same
code for both, so the same arrival order gives the same model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fedfleet.client import EvalResult, FitInstructions
from fedfleet.errors import FedfleetError, UpdateRejected
from fedfleet.evaluation import test_metrics
from fedfleet.rounds._loop import LoopState, upload_bytes, weighted_train_loss
from fedfleet.rounds._transport import client_seed, sampling_rng
from fedfleet.strategies._base import ClientUpdate
from fedfleet.strategies._fedbuff import FedBuff

__all__ = ["Arrival", "AsyncTransport", "BufferedLoop", "Dispatch"]

log = logging.getLogger("fedfleet")


@dataclass(frozen=True)
class Dispatch:
    """One client sent off to train: dispatch ``number`` (1, 2, ...) of ``client_id``, from
    server ``version``'s ``vector``, with ``seed = client_seed(run seed, number, client_id)``."""

    number: int
    client_id: int
    version: int
    vector: np.ndarray
    instructions: FitInstructions
    seed: int

    @property
    def round(self) -> int:
        """The "round" a refusal names: the version the client started from, plus one."""
        return self.version + 1


@dataclass(frozen=True)
class Arrival:
    """A dispatch came back: its validated ``update``, or its ``rejection`` (None, None: the
    client dropped out). ``time_s``: when, on the transport's clock (simulated seconds; None
    where only wall time exists). ``settled``: no other arrival shares this instant (the loop
    refills free slots once an instant is settled)."""

    dispatch: Dispatch
    update: ClientUpdate | None
    rejection: UpdateRejected | None = None
    time_s: float | None = None
    settled: bool = True


class AsyncTransport(Protocol):
    """Where asynchronous clients run."""

    def idle(self, busy: Sequence[int]) -> Sequence[int] | None:
        """Clients that may be dispatched now, ``busy`` ones excluded (None: stopping)."""
        ...

    def dispatch(self, jobs: Sequence[Dispatch]) -> None:
        """Start ``jobs``; their clients train from ``job.vector``."""
        ...

    def next_arrival(self) -> Arrival | None:
        """The next dispatch to come back (blocks until one does; None: stopping)."""
        ...


@dataclass
class BufferedLoop:
    """Runs FedBuff: ``strategy`` through ``transport``.

    Args:
        strategy: FedBuff's hyper-parameters and steps.
        transport: where clients run (:class:`AsyncTransport`).
        seed: the run's seed.
        test: centralized evaluation (None: none).
        eval_every: evaluate every k versions and after the last; 0: only after the last.

    Each server step adds a record: ``version``, ``sim_time_s`` (the transport's clock, where it
    has one), ``num_clients`` (K), ``num_rejected`` (since the previous step, refusals and
    drop-outs), ``staleness_mean``, ``staleness_max``, ``train_loss``,
    ``test_loss``/``test_accuracy`` when evaluated, and ``round_time_s``, ``wall_time_s``.
    """

    strategy: FedBuff
    transport: AsyncTransport
    seed: int
    test: Callable[[np.ndarray], EvalResult] | None = None
    eval_every: int = 1

    def run(
        self,
        num_versions: int,
        start: LoopState,
        on_round: Callable[[dict[str, Any]], None] | None = None,
        on_client: Callable[[int, int], None] | None = None,
        until: Callable[[dict[str, Any]], bool] | None = None,
    ) -> tuple[LoopState, list[UpdateRejected]]:
        """Step the server up to version ``num_versions``; returns the last state and the
        refusals. ``on_client(buffered, K)`` after each arrival."""
        k = self.strategy.buffer_size
        vector, state, version = start.vector, start.strategy_state, start.round
        history = [dict(r) for r in start.history]
        flight: dict[int, Dispatch] = {}
        buffer: list[tuple[ClientUpdate, int]] = []
        rejected: list[UpdateRejected] = []
        dispatched, missed, streak = 0, 0, 0
        begin = t_step = time.perf_counter()
        stop = num_versions <= version

        def refill() -> bool:
            nonlocal dispatched
            idle = self.transport.idle(sorted(flight))
            if idle is None:
                return False
            rng = sampling_rng(self.seed, dispatched + 1)
            jobs = []
            for cid, instructions in self.strategy.dispatch(idle, len(flight), rng):
                dispatched += 1
                seed = client_seed(self.seed, dispatched, cid)
                jobs.append(Dispatch(dispatched, cid, version, vector, instructions, seed))
                flight[cid] = jobs[-1]
            self.transport.dispatch(jobs)
            return True

        if not stop and not refill():
            stop = True
        while not stop:
            if not flight:
                raise FedfleetError("fedbuff: no client in flight; the federation has no clients")
            arrival = self.transport.next_arrival()
            if arrival is None:
                break
            job = flight.pop(arrival.dispatch.client_id)
            if arrival.update is not None:
                buffer.append((arrival.update, version - job.version))
                streak = 0
            else:
                missed += 1
                streak += 1
                if arrival.rejection is not None:
                    rejected.append(arrival.rejection)
                if streak >= 10 * (k + self.strategy.concurrency):
                    raise FedfleetError(
                        f"fedbuff: the last {streak} dispatches all failed (latest: "
                        f"{arrival.rejection or 'a drop-out'}); the run cannot make progress"
                    )
            if on_client is not None:
                on_client(len(buffer), k)
            if len(buffer) == k:
                updates = [u for u, _ in buffer]
                vector, state, metrics = self.strategy.aggregate_buffer(vector, state, buffer)
                version += 1
                buffer.clear()
                record: dict[str, Any] = {"version": version}
                if arrival.time_s is not None:
                    record["sim_time_s"] = arrival.time_s
                record.update(num_clients=k, num_rejected=missed, **metrics)
                record["train_loss"] = weighted_train_loss(updates)
                record["uplink_bytes"] = upload_bytes(updates)
                missed = 0
                last = version == num_versions
                if self.test is not None and (
                    last or (self.eval_every and version % self.eval_every == 0)
                ):
                    ev = self.test(vector)
                    record.update(test_metrics(ev.loss, ev.accuracy))
                now = time.perf_counter()
                record["round_time_s"], record["wall_time_s"] = now - t_step, now - begin
                t_step = now
                history.append(record)
                if on_round is not None:
                    on_round(record)
                stop = last or (until is not None and until(record))
            if not stop and arrival.settled and not refill():
                break
        return LoopState(version, vector, state, history), rejected
