"""The in-memory simulation engine: every round of the update pipeline as function calls.

    configure (strategy) -> local training (trainer) -> validate -> aggregate (strategy)
    -> evaluate (centralized every ``eval_every`` rounds, federated when clients hold test data)

All randomness derives from one seed through NumPy ``SeedSequence`` spawn keys: client sampling
in round r uses key (r, 0), client c's local training in round r uses key (r, 1, c). Clients
train in ascending id order and aggregation runs in float64, so the same seed gives a
bit-identical model and metrics.

Heterogeneous clients (``profiles``, :mod:`fedfleet.sim.profiles`): only the clients online in
round r (key (r, 4)) are offered to ``configure_fit``; a ``deadline`` policy
(:mod:`fedfleet.sim.deadline`) may then drop clients or cap their steps; and every record gets
``sim_round_s`` (the round's simulated duration: the slowest trained client's round trip, or
longer when the policy made the server wait for a deadline), ``sim_time_s`` (cumulative) and
``num_online``. Without profiles nothing of this runs and records are as before.

Resuming: everything the loop carries from round r to round r+1 is a :class:`Snapshot` (the
global vector, the strategy state, every client's state, the metrics so far and the simulated
clock). ``run(..., on_snapshot=save)`` hands one over after each round, and ``run(...,
resume=snapshot)`` starts at the round after it; since every random draw derives from (seed,
round[, client]), no generator state is needed and the resumed run is bit-identical to one that
never stopped. :mod:`fedfleet.runs.resume` keeps snapshots in the run's checkpoint file.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, overload

import numpy as np

import fedfleet._streams as _streams
from fedfleet._rows import rows_of
from fedfleet._threads import cores, map_items
from fedfleet.client.protocol import FitInstructions, Trainer
from fedfleet.client.state_store import ClientStateStore, MemoryStateStore
from fedfleet.errors import FedfleetError, PrivacyBudgetExhausted, UpdateRejected
from fedfleet.evaluation import ClientEvaluation, evaluation_summary
from fedfleet.params import Layout
from fedfleet.sim.cohort import ClientJob, CohortExecutor, SequentialExecutor
from fedfleet.sim.deadline import DeadlinePolicy, RoundClock
from fedfleet.sim.federation import ClientPopulation
from fedfleet.sim.profiles import ClientProfiles
from fedfleet.strategies.base import ClientUpdate, Strategy, StrategyState
from fedfleet.strategies.stragglers import RoundPlan
from fedfleet.validation import validate_update

__all__ = ["TIMING_KEYS", "Simulation", "SimulationResult", "Snapshot", "client_seed"]

log = logging.getLogger("fedfleet")

TIMING_KEYS = frozenset({"round_time_s", "wall_time_s"})
"""Metrics that measure the machine, not the run: excluded from determinism checks."""

RoundCallback = Callable[[dict[str, Any]], None]
ClientCallback = Callable[[int, int], None]
SnapshotCallback = Callable[["Snapshot"], None]


def client_seed(seed: int, rnd: int, cid: int) -> int:
    """The seed for client ``cid``'s local training in round ``rnd``."""
    return _streams.derive_seed(seed, _streams.client_training(rnd, cid))


def _sampling_rng(seed: int, rnd: int) -> np.random.Generator:
    return _streams.generator(seed, _streams.sampling(rnd))


@dataclass
class SimulationResult:
    """What a run returns: per-round metrics, the final global vector and the strategy state."""

    history: list[dict[str, Any]]
    vector: np.ndarray
    layout: Layout
    strategy_state: StrategyState
    rejected: list[UpdateRejected] = field(default_factory=list)
    model: Any = None  # the final model as an nn.Module when the trainer can build one

    @property
    def final(self) -> dict[str, Any]:
        """The last round's metrics."""
        return self.history[-1] if self.history else {}


@dataclass(frozen=True)
class Snapshot:
    """What the round loop carries from round ``round`` to the next: resuming from it gives the
    run that never stopped, bit for bit.

    Attributes:
        round: the last round completed.
        vector: the global vector after it.
        strategy_state: the strategy's state after it (server optimizer moments, adaptive clip
            norm, Oort's and compensation's per-client statistics, DP-SGD ledgers).
        client_states: every client's state in the store (SCAFFOLD control variates,
            personal heads), by client id.
        history: the metrics of rounds 1..round.
        sim_time_s: the simulated clock's running total (0 without profiles).
    """

    round: int
    vector: np.ndarray
    strategy_state: StrategyState
    client_states: dict[int, dict[str, np.ndarray]]
    history: list[dict[str, Any]]
    sim_time_s: float = 0.0


@dataclass
class Simulation:
    """Runs federated training over an in-memory federation.

    Args:
        trainer: local training and evaluation (torch, NumPy or your own).
        federation: the clients' data.
        strategy: the federated algorithm.
        seed: the one seed every random draw derives from.
        eval_every: centralized evaluation every k rounds (and always after the last round);
            0 evaluates only after the last round.
        federated_eval_every: evaluation on clients' held-out splits every k rounds (and after
            the last); 0 disables it. Needs ``federation.test_parts``.
        client_states: where per-client state lives between rounds (in memory by default; a
            :class:`DiskStateStore` for large populations). A client's new state is kept only
            when its update is accepted.
        executor: how each round's cohort is trained (:mod:`fedfleet.sim.cohort`): one client
            after another (default) or vectorised through ``trainer.fit_cohort``.
        profiles: client system profiles (speed, bandwidth, latency, availability); None runs
            every client online and records no simulated time.
        deadline: what to do about clients that would finish late (needs ``profiles``).
        max_update_norm: refuse client updates whose delta's L2 norm is larger (None: no
            bound); see :func:`fedfleet.validation.validate_update`.
    """

    trainer: Trainer
    federation: ClientPopulation
    strategy: Strategy
    seed: int = 0
    eval_every: int = 1
    federated_eval_every: int = 0
    client_states: ClientStateStore = field(default_factory=MemoryStateStore)
    executor: CohortExecutor = field(default_factory=SequentialExecutor)
    profiles: ClientProfiles | None = None
    deadline: DeadlinePolicy | None = None
    max_update_norm: float | None = None
    _delta_rows: _RowBuffer = field(default_factory=lambda: _RowBuffer(), init=False, repr=False)

    def run(
        self,
        rounds: int,
        on_round: RoundCallback | None = None,
        on_client: ClientCallback | None = None,
        until: Callable[[dict[str, Any]], bool] | None = None,
        *,
        resume: Snapshot | None = None,
        on_snapshot: SnapshotCallback | None = None,
    ) -> SimulationResult:
        """Run ``rounds`` rounds; ``on_round(record)`` after each, ``on_client(done, total)``
        after each client's local training. ``until(record)`` returning True ends the run
        early (e.g. once a target accuracy is reached).

        ``on_snapshot(snapshot)`` runs after each round, before ``on_round`` (a checkpoint is
        on disk before the round's metrics are reported); ``resume=snapshot`` continues a run
        from it with rounds ``snapshot.round + 1 .. rounds``, and the result's history holds
        every round. ``rejected`` holds only this call's refusals (the records'
        ``num_rejected`` count them all)."""
        if len(self.client_states):
            raise FedfleetError(
                f"the client-state store already holds state of {len(self.client_states)} "
                "clients from an earlier run; a new run needs a fresh store, e.g. "
                "Simulation(..., client_states=MemoryStateStore())"
            )
        self._check_profiles()
        layout = self.trainer.layout
        stateful: set[int] = set()  # clients that may hold state, for the snapshots
        if resume is None:
            vector = self.trainer.init_vector(self.seed)
            state = self.strategy.init(vector)
            history: list[dict[str, Any]] = []
            sim_time = 0.0
        else:
            self._check_resume(resume, rounds)
            vector, state, sim_time = resume.vector, resume.strategy_state, resume.sim_time_s
            history = [dict(r) for r in resume.history]
            for cid, client_state in sorted(resume.client_states.items()):
                self.client_states.put(cid, client_state)
                stateful.add(cid)
        rejected: list[UpdateRejected] = []
        # wall_time_s goes on from the checkpoint's (the time the run was down is not in it)
        done_s = (history[-1].get("wall_time_s") or 0.0) if history else 0.0
        start = time.perf_counter() - done_s
        for rnd in range(len(history) + 1, rounds + 1):
            t0 = time.perf_counter()
            clients = self.federation.client_ids
            if self.profiles is not None:
                clients = self.profiles.available(clients, rnd, self.seed)
            try:
                plan = self.strategy.configure_fit(
                    rnd, vector, state, clients, _sampling_rng(self.seed, rnd)
                )
            except PrivacyBudgetExhausted as stop:
                log.warning("stopping before round %d: %s", rnd, stop)
                break
            wait_s = 0.0
            if self.deadline is not None:
                plan, wait_s = self._apply_deadline(plan, vector)
            updates, steps = self._updates(rnd, vector, plan, on_client, rejected)
            stateful.update(u.client_id for u in updates)
            vector, state, agg_metrics = self.strategy.aggregate_fit(rnd, vector, state, updates)
            num_accepted = len(updates)
            train_loss = _weighted_train_loss(updates)
            del updates  # frees this round's delta rows for the next round
            record: dict[str, Any] = {
                "round": rnd,
                "num_clients": num_accepted,
                "num_rejected": len(plan) - num_accepted,
                "train_loss": train_loss,
            }
            record.update(getattr(plan, "metrics", {}))  # e.g. Stragglers' RoundPlan counts
            record.update({k: v for k, v in agg_metrics.items() if k != "aggregated"})
            if self.profiles is not None:
                trained = [cid for cid, _ in plan]
                sim_round = max(self.profiles.round_time(trained, steps, vector.nbytes), wait_s)
                sim_time += sim_round
                record.update(num_online=len(clients), sim_round_s=sim_round, sim_time_s=sim_time)
            last = rnd == rounds
            if last or (self.eval_every and rnd % self.eval_every == 0):
                ev = self.trainer.evaluate(vector, self.federation.task.test)
                record["test_loss"], record["test_accuracy"] = ev.loss, ev.accuracy
            if self.federated_eval_every and (last or rnd % self.federated_eval_every == 0):
                record.update(self._federated_eval(vector))
            record["round_time_s"] = time.perf_counter() - t0
            record["wall_time_s"] = time.perf_counter() - start
            history.append(record)
            if on_snapshot is not None:
                on_snapshot(self._snapshot(rnd, vector, state, stateful, history, sim_time))
            if on_round is not None:
                on_round(record)
            if until is not None and until(record):
                break
        if history and "test_accuracy" not in history[-1]:  # stopped early between evaluations
            ev = self.trainer.evaluate(vector, self.federation.task.test)
            history[-1]["test_loss"], history[-1]["test_accuracy"] = ev.loss, ev.accuracy
        return SimulationResult(
            history, vector, layout, state, rejected, _export(self.trainer, vector)
        )

    def _updates(
        self,
        rnd: int,
        vector: np.ndarray,
        plan: Sequence[tuple[int, FitInstructions]],
        on_client: ClientCallback | None,
        rejected: list[UpdateRejected],
    ) -> tuple[list[ClientUpdate], list[int]]:
        """Train the planned clients and return the accepted updates (and every client's step
        count, for the simulated clock).

        The accepted deltas are consecutive rows of one ``[K, P]`` float32 array (a rejected
        client's row is taken by the next one), so aggregation reads one matrix and no round
        pays for K fresh vectors. When the trainer hands its results over as the rows of one
        array (:func:`_handed_over_block`), the deltas are subtracted in place there, in the
        trainer's row order: writing a second 40 MB matrix cost as much as the subtraction
        (workload b: 8.8 against 4.0 ms). Otherwise they go into one reused array, in plan order.
        """
        selected = {cid for cid, _ in plan}
        jobs = [
            ClientJob(
                cid,
                data,
                instructions,
                client_seed(self.seed, rnd, cid),
                self.client_states.get(cid),
            )
            for (cid, instructions), data in zip(plan, self._train_data(plan), strict=True)
        ]
        results = self.executor.run(self.strategy, self.trainer, vector, jobs, on_client)
        block = _handed_over_block(self.trainer, [r.fit.vector for r in results], vector)
        if block is not None:
            rows, order = block  # result order[j] is row j
        else:
            rows, order = self._delta_rows.take(len(jobs), vector.shape[0]), list(range(len(jobs)))
        layout = self.trainer.layout

        def check(j: int) -> tuple[ClientUpdate, UpdateRejected | None, bool]:
            """The update of the client at row ``j`` (its delta written into row ``j`` when it
            is well-formed), its validation verdict, and whether the delta is that row."""
            i = order[j]
            job, result = jobs[i], results[i]
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
                job.client_id, delta, fit.num_samples, fit.num_steps, fit.metrics, result.extras
            )
            try:
                validate_update(
                    update,
                    layout,
                    rnd,
                    selected,
                    max_samples=len(job.data),
                    instructions=job.instructions,
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
        return updates, [r.fit.num_steps for r in results]

    def _check_resume(self, snapshot: Snapshot, rounds: int) -> None:
        layout = self.trainer.layout
        if snapshot.vector.shape != (layout.size,) or snapshot.vector.dtype != np.float32:
            raise FedfleetError(
                f"the snapshot's vector is {snapshot.vector.dtype}{snapshot.vector.shape}, the "
                f"model's layout {layout.fingerprint} needs float32({layout.size},); was it "
                "written by a run with another model config?"
            )
        if len(snapshot.history) != snapshot.round:
            raise FedfleetError(
                f"the snapshot of round {snapshot.round} holds {len(snapshot.history)} rounds "
                "of metrics; it is damaged: start the run afresh"
            )
        if snapshot.round > rounds:
            raise FedfleetError(
                f"the snapshot is of round {snapshot.round}, past this run's {rounds} rounds; "
                f"resume with rounds >= {snapshot.round}"
            )

    def _snapshot(
        self,
        rnd: int,
        vector: np.ndarray,
        state: StrategyState,
        stateful: set[int],
        history: list[dict[str, Any]],
        sim_time: float,
    ) -> Snapshot:
        clients = {}
        for cid in sorted(stateful):
            client_state = self.client_states.get(cid)
            if client_state is not None:
                clients[cid] = dict(client_state)
        return Snapshot(rnd, vector, state, clients, [dict(r) for r in history], sim_time)

    def _train_data(self, plan: Sequence[tuple[int, FitInstructions]]) -> list[Any]:
        """The planned clients' training data (a :class:`Federation`'s are lazy subsets of
        its pool: nothing is copied here)."""
        return [self.federation.train_data(cid) for cid, _ in plan]

    def _check_profiles(self) -> None:
        if self.deadline is not None and self.profiles is None:
            raise FedfleetError(
                "a deadline policy needs client profiles to predict finish times; "
                "pass Simulation(..., profiles=ProfileSpec(...).sample(num_clients, seed))"
            )
        n = self.federation.num_clients
        if self.profiles is not None and self.profiles.num_clients != n:
            raise FedfleetError(
                f"profiles describe {self.profiles.num_clients} clients but the federation "
                f"has {n}; give one profile per client"
            )

    def _apply_deadline(self, plan: list[Any], vector: np.ndarray) -> tuple[RoundPlan, float]:
        assert self.deadline is not None and self.profiles is not None
        sizes = _Sizes(self.federation)
        clock = RoundClock(self.profiles, vector.nbytes, sizes)
        kept, wait_s = self.deadline.apply(plan, clock)
        return RoundPlan(kept, {**getattr(plan, "metrics", {}), **kept.metrics}), wait_s

    def _federated_eval(self, vector: np.ndarray) -> dict[str, float]:
        """Evaluate on every client's held-out split: ``client_accuracy_*`` (mean, worst10,
        min, std) and ``client_loss_mean``.

        Personalisation hook: a strategy with a method ``personalize(vector, client_state) ->
        vector`` (FedPer, FedRep) gives each client its own model, built from the global vector
        and the client's state in ``client_states`` (None if it has none yet). Then
        ``client_accuracy_*`` and ``client_loss_mean`` describe the personalised models and
        ``global_client_accuracy_*``, ``global_client_loss_mean`` the global one on the same
        splits. Strategies without the method get the global model's numbers alone.
        """
        personalize = getattr(self.strategy, "personalize", None)
        reports: list[ClientEvaluation] = []
        for cid in self.federation.client_ids:
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
        return evaluation_summary(reports)


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


class _Sizes(Sequence[int]):
    """Clients' sample counts by id, asked of the population only for the clients planned."""

    def __init__(self, population: ClientPopulation) -> None:
        self._population = population

    def __len__(self) -> int:
        return self._population.num_clients

    @overload
    def __getitem__(self, cid: int) -> int: ...

    @overload
    def __getitem__(self, cid: slice) -> Sequence[int]: ...

    def __getitem__(self, cid: int | slice) -> int | Sequence[int]:
        if isinstance(cid, slice):
            return [self._population.num_samples(c) for c in range(len(self))[cid]]
        return self._population.num_samples(cid)


def _weighted_train_loss(updates: list[ClientUpdate]) -> float | None:
    """Sample-weighted mean of the clients' reported training losses (None if none reported)."""
    losses, weights = [], []
    for u in updates:
        loss = u.metrics.get("train_loss")
        if loss is not None and np.isfinite(loss):
            losses.append(float(loss))
            weights.append(u.num_samples)
    return float(np.average(losses, weights=weights)) if losses else None


def _export(trainer: Trainer, vector: np.ndarray) -> Any:
    export = getattr(trainer, "export", None)
    return export(vector) if callable(export) else None
