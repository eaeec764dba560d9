"""The in-process transport: a round's clients trained by a cohort executor in this process
(sequentially, vectorised, compiled, on threads) or on workers it drives (forked processes, Ray).

:class:`InProcessTransport` is the round loop's :class:`~fedfleet.rounds.Transport` for
simulation. It gives each planned client its data, seed (``client_seed(seed, r, c)``) and stored
state, runs the executor, turns each trained vector into a delta, validates it exactly as the
server validates an upload, and keeps an accepted client's new state in the store. Clients
commit at once here: the snapshot the loop writes afterwards reads their state from the store.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np

from fedfleet._rows import rows_of
from fedfleet._threads import cores, map_items
from fedfleet.client import ClientStateStore, Trainer
from fedfleet.errors import UpdateRejected
from fedfleet.evaluation import ClientEvaluation
from fedfleet.rounds import EvaluateJob, FitJob, FitReplies, client_seed
from fedfleet.sim._cohort import ClientJob, CohortExecutor
from fedfleet.sim._federation import ClientPopulation
from fedfleet.sim._secure import summed_replies
from fedfleet.strategies._base import ClientUpdate, Personalized, Strategy
from fedfleet.validation import validate_update

__all__ = ["InProcessTransport"]

log = logging.getLogger("fedfleet")

ClientCallback = Callable[[int, int], None]


@dataclass
class InProcessTransport:
    """Trains a round's cohort with ``executor`` over ``federation``'s data.

    Args:
        trainer: local training and evaluation.
        federation: the clients' data.
        strategy: whose ``client_fit`` runs on each client.
        executor: how the cohort is trained (:mod:`fedfleet.sim._cohort`, the process pool, Ray).
        client_states: per-client state between rounds; a client's new state is kept only
            when its update is accepted.
        max_update_norm: refuse deltas with a larger L2 norm (None: no bound).
        on_client: ``on_client(done, total)`` after each client's training.
    """

    trainer: Trainer
    federation: ClientPopulation
    strategy: Strategy
    executor: CohortExecutor
    client_states: ClientStateStore
    max_update_norm: float | None = None
    on_client: ClientCallback | None = None
    stateful: set[int] = field(default_factory=set)
    """The clients whose state went into ``client_states`` (for snapshots)."""
    _rows: _RowBuffer = field(default_factory=lambda: _RowBuffer(), init=False, repr=False)

    def fit(self, job: FitJob) -> FitReplies:
        """Train the planned clients; the accepted deltas are consecutive rows of one
        ``[K, P]`` float32 array (a rejected client's row is taken by the next one), so
        aggregation reads one matrix and no round pays for K fresh vectors. When the trainer
        hands its results over as the rows of one array (:func:`_handed_over_block`), the
        deltas are subtracted in place there, in the trainer's row order: writing a second
        40 MB matrix cost as much as the subtraction (workload b: 8.8 against 4.0 ms).
        Otherwise they go into one reused array, in plan order."""
        rnd, vector, plan = job.round, job.vector, job.plan
        selected = {cid for cid, _ in plan}
        jobs = [
            ClientJob(
                cid,
                self.federation.train_data(cid),  # a lazy subset of the pool: nothing copied
                instructions,
                client_seed(job.seed, rnd, cid),
                self.client_states.get(cid),
            )
            for cid, instructions in plan
        ]
        results = self.executor.run(self.strategy, self.trainer, vector, jobs, self.on_client)
        trained = [(j.client_id, r) for j, r in zip(jobs, results, strict=True)]
        summed = summed_replies(self.strategy, job, trained)
        if summed is not None:  # secure aggregation, HE: the server only sees the sum
            return summed
        block = _handed_over_block(self.trainer, [r.fit.vector for r in results], vector)
        if block is not None:
            rows, order = block  # result order[j] is row j
        else:
            rows, order = self._rows.take(len(jobs), vector.shape[0]), list(range(len(jobs)))
        layout = self.trainer.layout

        def check(j: int) -> tuple[ClientUpdate, UpdateRejected | None, bool]:
            """The update of the client at row ``j`` (its delta written into row ``j`` when it
            is well-formed), its validation verdict, and whether the delta is that row."""
            i = order[j]
            cjob, result = jobs[i], results[i]
            fit = result.fit
            trained = fit.vector
            in_row = False
            if (
                isinstance(trained, np.ndarray)
                and trained.shape == vector.shape
                and trained.dtype == vector.dtype
            ):
                delta = np.subtract(trained, vector, out=rows[j])
                in_row = True
            elif isinstance(trained, np.ndarray) and trained.shape == vector.shape:
                delta = trained - vector  # wrong dtype: validation says so
            else:
                delta = trained  # misshaped: rejected below
            update = ClientUpdate(
                cjob.client_id, delta, fit.num_samples, fit.num_steps, fit.metrics, result.extras
            )
            try:
                validate_update(
                    update,
                    layout,
                    rnd,
                    selected,
                    max_samples=len(cjob.data),
                    instructions=cjob.instructions,
                    max_norm=self.max_update_norm,
                )
            except UpdateRejected as err:
                return update, err.with_traceback(None), in_row  # a traceback would pin this
            return update, None, in_row

        # subtracting and checking K deltas is a [K, P] pass: over the cores when it is large,
        # one block of rows per core (a task per row cost 1.3x one thread on workload b)
        edges = np.linspace(0, len(jobs), cores() + 1).astype(int)
        blocks = [range(int(a), int(b)) for a, b in pairwise(edges) if b > a]
        work = len(jobs) * vector.shape[0]
        done = map_items(lambda block: [check(j) for j in block], blocks, work)
        checked = [verdict for block in done for verdict in block]
        updates: list[ClientUpdate] = []
        rejected: list[UpdateRejected] = []
        for j, (update, err, in_row) in enumerate(checked):
            if err is not None:
                log.warning("%s", err)
                rejected.append(err)
                continue
            k = len(updates)
            if k != j and in_row:
                # after a rejection the accepted deltas move up, so they stay consecutive rows
                np.copyto(rows[k], rows[j])
                update = dataclasses.replace(update, delta=rows[k])
            updates.append(update)
            i = order[j]
            state = results[i].state
            if state is not None:
                self.client_states.put(jobs[i].client_id, state)
                self.stateful.add(jobs[i].client_id)
        return FitReplies(updates, rejected, [r.fit.num_steps for r in results])

    def evaluators(self, rnd: int) -> list[int]:
        """The clients that hold a held-out split (ascending ids): whom the strategy's
        ``configure_evaluate`` may pick."""
        return [cid for cid in self.federation.client_ids if _has_test_data(self.federation, cid)]

    def evaluate(self, job: EvaluateJob) -> list[ClientEvaluation]:
        """The held-out split of each of ``job.clients`` evaluated, in that order (a client
        without one is skipped).

        A :class:`~fedfleet.strategies._base.Personalized` strategy (FedPer, FedRep) gives each
        client its own model, built from the global vector and the client's stored state (None
        if it has none yet); each report then holds the personalised model's numbers and the
        global model's as ``global_*``."""
        vector = job.vector
        strategy = self.strategy
        personalize = strategy.personalize if isinstance(strategy, Personalized) else None
        reports: list[ClientEvaluation] = []
        for cid in job.clients:
            data = self.federation.test_data(cid)
            if data is None or len(data) == 0:
                continue
            ev = self.trainer.evaluate(vector, data)
            if personalize is None:
                reports.append(ClientEvaluation(ev.num_samples, ev.loss, ev.accuracy))
                continue
            own = self.trainer.evaluate(personalize(vector, self.client_states.get(cid)), data)
            reports.append(
                ClientEvaluation(own.num_samples, own.loss, own.accuracy, ev.loss, ev.accuracy)
            )
        return reports

    def commit(self, rnd: int, accepted: Sequence[int]) -> None:
        """Nothing to tell: accepted clients' states went into the store in :meth:`fit`."""


def _has_test_data(federation: ClientPopulation, cid: int) -> bool:
    data = federation.test_data(cid)
    return data is not None and len(data) > 0


def _handed_over_block(
    trainer: Trainer, vectors: Sequence[Any], vector: np.ndarray
) -> tuple[np.ndarray, list[int]] | None:
    """``(block, order)`` when the trainer hands its results over (``hands_over_results``)
    and they are exactly the rows of one C-contiguous block of an array, in any order:
    result ``order[j]`` is ``block[j]``. None otherwise (another trainer, misshaped results,
    a row given twice, or rows that are not one block)."""
    found = rows_of(vectors) if getattr(trainer, "hands_over_results", False) else None
    if found is None:
        return None
    base, at = found
    if (
        base.dtype != vector.dtype
        or base.shape[1] != vector.shape[0]
        or not base.flags.writeable
        or np.may_share_memory(base, vector)
    ):
        return None
    first = min(at)
    if sorted(at) != list(range(first, first + len(at))):
        return None
    order = sorted(range(len(at)), key=at.__getitem__)
    return base[first : first + len(at)], order


class _RowBuffer:
    """One ``[rows, size]`` float32 array handed out again each round once nothing else refers
    to it (every row view holds a reference): a fresh 40 MB array per round costs as much in
    page faults as the arithmetic that fills it. A strategy that keeps a delta makes the next
    round allocate anew, so kept deltas are never overwritten."""

    def __init__(self) -> None:
        self._array: np.ndarray | None = None

    def take(self, rows: int, size: int) -> np.ndarray:
        array = self._array
        # three references: the attribute, ``array`` and getrefcount's argument
        if array is not None and array.shape[0] >= rows and array.shape[1] == size:
            if sys.getrefcount(array) <= 3:
                return array[:rows]
        self._array = np.empty((rows, size), dtype=np.float32)
        return self._array
