"""The in-memory simulation engine: every round of the update pipeline as function calls.

    configure (strategy) -> local training (trainer) -> validate -> aggregate (strategy)
    -> evaluate (centralized every ``eval_every`` rounds, federated when clients hold test data)

All randomness derives from one seed through NumPy ``SeedSequence`` spawn keys: client sampling
in round r uses key (r, 0), client c's local training in round r uses key (r, 1, c). Clients
train in ascending id order and aggregation runs in float64, so the same seed gives a
bit-identical model and metrics.

Heterogeneous clients (``profiles``, :mod:`fedfleet.sim._profiles`): only the clients online in
round r (key (r, 4)) are offered to ``configure_fit``; a ``deadline`` policy
(:mod:`fedfleet.sim._deadline`) may then drop clients or cap their steps; and every record gets
``sim_round_s`` (the round's simulated duration: the slowest trained client's round trip, or
longer when the policy made the server wait for a deadline), ``sim_time_s`` (cumulative) and
``num_online``. Without profiles nothing of this runs and records are as before.

Resuming: everything the loop carries from round r to round r+1 is a :class:`Snapshot` (the
global vector, the strategy state, every client's state, the metrics so far and the simulated
clock). ``run(..., on_snapshot=save)`` hands one over after each round, and ``run(...,
resume=snapshot)`` starts at the round after it; since every random draw derives from (seed,
round[, client]), no generator state is needed and the resumed run is bit-identical to one that
never stopped. :mod:`fedfleet.runs._resume` keeps snapshots in the run's checkpoint file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np

from fedfleet._threads import torch_threads
from fedfleet.client import ClientStateStore, MemoryStateStore, Trainer
from fedfleet.errors import FedfleetError, UpdateRejected
from fedfleet.evaluation import ClientEvaluation
from fedfleet.params import Layout
from fedfleet.rounds import TIMING_KEYS, LoopState, RoundLoop, client_seed, sampling_rng
from fedfleet.sim._cohort import CohortExecutor
from fedfleet.sim._deadline import DeadlinePolicy, ProfilePacer
from fedfleet.sim._executor_choice import choose_in_process
from fedfleet.sim._federation import ClientPopulation
from fedfleet.sim._inprocess import InProcessTransport
from fedfleet.sim._profiles import ClientProfiles
from fedfleet.sim._progress import round_progress
from fedfleet.strategies._base import Strategy, StrategyState

__all__ = ["TIMING_KEYS", "Simulation", "SimulationResult", "Snapshot", "client_seed"]

RoundCallback = Callable[[dict[str, Any]], None]
ClientCallback = Callable[[int, int], None]
SnapshotCallback = Callable[["Snapshot"], None]

_sampling_rng = sampling_rng  # the name tests and older callers use


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
        executor: how each round's cohort is trained (:mod:`fedfleet.sim._cohort`): one client
            after another (:class:`SequentialExecutor`, the reference every other path
            matches) or vectorised through ``trainer.fit_cohort``. None (the default) chooses
            as ``fedfleet run``'s ``executor = "auto"`` does
            (:func:`fedfleet.sim._executor_choice.choose_in_process`): for a ``TorchTrainer``
            built from a model factory with SGD and a plain-training strategy, the cohort
            trains at once on a :class:`VmapTrainer`, :class:`CompiledTrainer` or
            :class:`ThreadedTrainer` on the same model, which then becomes ``trainer``; the
            same seed gives the same bits as ``fedfleet run`` with the same settings.
            ``executor_choice`` says what was chosen and why.
        profiles: client system profiles (speed, bandwidth, latency, availability); None runs
            every client online and records no simulated time.
        deadline: what to do about clients that would finish late (needs ``profiles``).
        max_update_norm: refuse client updates whose delta's L2 norm is larger (None: no
            bound); see :func:`fedfleet.validation.validate_update`.
        threads: torch intra-op threads while :meth:`run` trains and evaluates (the setting is
            restored after): 1, as ``fedfleet run``'s default, which is faster on a busy
            machine (OpenMP's barriers stall when another process holds a core; cohort
            executors use the cores as lanes instead) and gives the command line's bits; None
            leaves torch's setting as it is.
        progress: show a progress bar (rounds, the round's clients, the last round's loss and
            accuracy) on stderr; None (the default) shows it in a terminal or a Jupyter
            notebook and not when the output goes to a file or a pipe.
    """

    trainer: Trainer
    federation: ClientPopulation
    strategy: Strategy
    seed: int = 0
    eval_every: int = 1
    federated_eval_every: int = 0
    client_states: ClientStateStore = field(default_factory=MemoryStateStore)
    executor: CohortExecutor | None = None
    profiles: ClientProfiles | None = None
    deadline: DeadlinePolicy | None = None
    max_update_norm: float | None = None
    progress: bool | None = None
    threads: int | None = 1
    executor_choice: str = field(init=False, default="given")
    """How clients train: "given" when ``executor`` was passed, else the choice and its reason."""

    def __post_init__(self) -> None:
        if self.executor is None:
            self.trainer, self.executor, self.executor_choice = choose_in_process(
                self.trainer, self.strategy, threads=self.threads or _current_threads()
            )

    def run(
        self,
        rounds: int,
        on_round: RoundCallback | None = None,
        on_client: ClientCallback | None = None,
        until: Callable[[dict[str, Any]], bool] | None = None,
        *,
        resume: Snapshot | None = None,
        on_snapshot: SnapshotCallback | None = None,
        on_evaluation: Callable[[int, Sequence[ClientEvaluation]], None] | None = None,
    ) -> SimulationResult:
        """Run ``rounds`` rounds; ``on_round(record)`` after each, ``on_client(done, total)``
        after each client's local training. ``until(record)`` returning True ends the run
        early (e.g. once a target accuracy is reached).

        ``on_snapshot(snapshot)`` runs after each round, before ``on_round`` (a checkpoint is
        on disk before the round's metrics are reported); ``resume=snapshot`` continues a run
        from it with rounds ``snapshot.round + 1 .. rounds``, and the result's history holds
        every round. ``rejected`` holds only this call's refusals (the records'
        ``num_rejected`` count them all). ``on_evaluation(round, reports)`` gets each
        federated evaluation's per-client reports (the record holds their summary)."""
        if len(self.client_states):
            raise FedfleetError(
                f"the client-state store already holds state of {len(self.client_states)} "
                "clients from an earlier run; a new run needs a fresh store, e.g. "
                "Simulation(..., client_states=MemoryStateStore())"
            )
        self._check_profiles()
        if resume is None:
            vector = self.trainer.init_vector(self.seed)
            start = LoopState(0, vector, self.strategy.init(vector))
        else:
            self._check_resume(resume, rounds)
            start = LoopState(
                resume.round,
                resume.vector,
                resume.strategy_state,
                resume.history,
                resume.sim_time_s,
            )
            for cid, client_state in sorted(resume.client_states.items()):
                self.client_states.put(cid, client_state)
        executor = self.executor
        assert executor is not None  # chosen in __post_init__
        with torch_threads(self.threads), round_progress(self.progress, rounds, start.round) as bar:
            transport = InProcessTransport(
                self.trainer,
                self.federation,
                self.strategy,
                executor,
                self.client_states,
                self.max_update_norm,
                _both(on_client, bar.on_client if bar else None),
            )
            if resume is not None:  # clients that may hold state, for the snapshots
                transport.stateful.update(resume.client_states)

            def save(state: LoopState) -> None:
                assert on_snapshot is not None
                on_snapshot(self._snapshot(state, transport.stateful))

            loop = RoundLoop(
                self.strategy,
                transport,
                self.seed,
                self._clients,
                test=lambda v: self.trainer.evaluate(v, self.federation.task.test),
                eval_every=self.eval_every,
                federated_every=self.federated_eval_every,
                evaluators=transport.evaluators,
                pacer=self._pacer(),
                checkpoint=None if on_snapshot is None else save,
                on_evaluation=on_evaluation,
            )
            end = loop.run(rounds, start, _both(on_round, bar.on_round if bar else None), until)
        return SimulationResult(
            end.history,
            end.vector,
            self.trainer.layout,
            end.strategy_state,
            loop.rejected,
            _export(self.trainer, end.vector),
        )

    def _clients(self, rnd: int) -> Sequence[int]:
        clients = self.federation.client_ids
        if self.profiles is not None:
            return self.profiles.available(clients, rnd, self.seed)
        return clients

    def _pacer(self) -> ProfilePacer | None:
        if self.profiles is None:
            return None
        return ProfilePacer(self.profiles, _Sizes(self.federation), self.deadline)

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

    def _snapshot(self, state: LoopState, stateful: set[int]) -> Snapshot:
        clients = {}
        for cid in sorted(stateful):
            client_state = self.client_states.get(cid)
            if client_state is not None:
                clients[cid] = dict(client_state)
        return Snapshot(
            state.round,
            state.vector,
            state.strategy_state,
            clients,
            [dict(r) for r in state.history],
            state.sim_time_s,
        )

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


def _current_threads() -> int:
    import torch  # the engine itself runs any trainer; only this setting is torch's

    return torch.get_num_threads()


def _both(
    first: Callable[..., None] | None, second: Callable[..., None] | None
) -> Callable[..., None] | None:
    """``first`` (the caller's callback) then ``second`` (the progress bar's), either may be
    None."""
    if first is None or second is None:
        return first or second

    def both(*args: Any) -> None:
        first(*args)
        second(*args)

    return both


def _export(trainer: Trainer, vector: np.ndarray) -> Any:
    export = getattr(trainer, "export", None)
    return export(vector) if callable(export) else None
