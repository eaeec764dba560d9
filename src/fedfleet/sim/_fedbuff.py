"""FedBuff on a simulated clock: :class:`fedfleet.rounds.BufferedLoop` with the clocked
transport (:mod:`fedfleet.sim._clocked`).

The algorithm (buffer of K updates, staleness weights, server transform) is
:class:`fedfleet.strategies.FedBuff`; the same loop runs it over gRPC. The clock: a client
dispatched at time t returns at ``t + duration`` (download, ``E * ceil(n_k / B)`` local steps
capped at ``max_steps``, upload) under the client profiles the ``clock`` draws
(:meth:`ClientClock.profiles`), or the ``profiles`` given.

Randomness, all from the run seed: dispatches are numbered 1, 2, ... in order; the refill whose
first dispatch is d samples with ``SeedSequence(seed, spawn_key=(d, 0))``, dispatch d of client c
trains with ``client_seed(seed, d, c)``, client speeds come from key ``(0, 2)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from fedfleet.client import FitInstructions, Trainer
from fedfleet.errors import ConfigError
from fedfleet.rounds import BufferedLoop, LoopState
from fedfleet.sim._clock import ClientClock
from fedfleet.sim._clocked import ArrivalTime, ClockedTransport
from fedfleet.sim._engine import ClientCallback, RoundCallback, SimulationResult, _export
from fedfleet.sim._federation import Federation
from fedfleet.sim._profiles import ClientProfiles
from fedfleet.strategies._fedbuff import (
    FedBuff,
    StalenessWeight,
    buffered_mean,
    polynomial_staleness,
)
from fedfleet.transforms import ServerTransform

__all__ = [
    "FedBuffSimulation",
    "StalenessWeight",
    "buffered_mean",
    "polynomial_staleness",
]


@dataclass
class FedBuffSimulation:
    """Runs FedBuff over an in-memory federation on a simulated clock.

    Args:
        trainer: local training and evaluation.
        federation: the clients' data.
        local: the instructions every client gets (epochs, batch size, lr, max_steps).
        buffer_size: K, updates per server step.
        concurrency: clients training at once (capped at the number of clients).
        server_lr: eta_g; the server step is ``sgd(server_lr)`` unless ``server_optimizer``.
        server_optimizer: a server transform applied to ``-buffered mean`` instead (it carries
            its own learning rate, so leave ``server_lr`` at 1).
        staleness_weight: ``w(s)``; default ``polynomial_staleness(0.5) = 1 / sqrt(1 + s)``.
        clock: the client timing model.
        seed: the one seed every random draw derives from.
        eval_every: centralized evaluation every k versions (and after the last); 0 evaluates
            only after the last.
        max_update_norm: refuse updates whose delta's L2 norm is larger (None: no bound).

    Every update is checked with :func:`validate_update` on arrival (its client must be in
    flight; the "round" of a rejection is the version the update was headed for) and a
    rejected one is logged, kept in ``SimulationResult.rejected`` and left out of the buffer.

    Each server step adds a record: ``version``, ``sim_time_s`` (simulated seconds),
    ``num_clients`` (updates applied, K), ``num_rejected`` (since the previous step),
    ``staleness_mean``, ``staleness_max``, ``train_loss``, ``test_loss``/``test_accuracy``
    when evaluated, and the machine timings ``round_time_s``, ``wall_time_s``.

    Examples:
        >>> sim = FedBuffSimulation(trainer, fed, local=FitInstructions(epochs=1, lr=0.05),
        ...                         buffer_size=10, concurrency=50,
        ...                         clock=ClientClock(speed_sigma=0.7), seed=0)
        >>> result = sim.run(num_versions=100)
    """

    trainer: Trainer
    federation: Federation
    _: KW_ONLY
    local: FitInstructions = field(default_factory=FitInstructions)
    buffer_size: int = 10
    concurrency: int = 100
    server_lr: float = 1.0
    server_optimizer: ServerTransform | None = None
    staleness_weight: StalenessWeight = field(default_factory=polynomial_staleness)
    clock: ClientClock = field(default_factory=ClientClock)
    seed: int = 0
    eval_every: int = 1
    max_update_norm: float | None = None
    profiles: ClientProfiles | None = None
    """Client profiles to time the clients with, in place of ``clock``'s."""
    arrival_time: ArrivalTime | None = None
    """Replaces the clock altogether: ``(dispatch, now) -> arrival time`` (a test replays a
    recorded arrival order with it)."""

    def __post_init__(self) -> None:
        if self.eval_every < 0:
            raise ConfigError(f"fedbuff: eval_every must be >= 0, got {self.eval_every}")
        _ = self.strategy  # checks the hyper-parameters now

    @property
    def strategy(self) -> FedBuff:
        """The algorithm these settings describe."""
        return FedBuff(
            local=self.local,
            buffer_size=self.buffer_size,
            concurrency=self.concurrency,
            server_lr=self.server_lr,
            server_optimizer=self.server_optimizer,
            staleness_weight=self.staleness_weight,
        )

    def run(
        self,
        num_versions: int,
        on_round: RoundCallback | None = None,
        on_client: ClientCallback | None = None,
        until: Callable[[dict[str, Any]], bool] | None = None,
    ) -> SimulationResult:
        """Run until the server reaches version ``num_versions``; ``on_round(record)`` after
        each server step, ``on_client(buffered, K)`` after each arrival, ``until(record)``
        returning True ends the run early."""
        fed = self.federation
        strategy = self.strategy
        profiles = self.profiles or self.clock.profiles(fed.num_clients, self.seed)
        transport = ClockedTransport(
            self.trainer,
            fed,
            strategy,
            profiles,
            self.max_update_norm,
            self.arrival_time,
        )
        loop = BufferedLoop(
            strategy,
            transport,
            self.seed,
            test=lambda v: self.trainer.evaluate(v, fed.task.test),
            eval_every=self.eval_every,
        )
        vector = self.trainer.init_vector(self.seed)
        end, rejected = loop.run(
            num_versions, LoopState(0, vector, strategy.init(vector)), on_round, on_client, until
        )
        return SimulationResult(
            end.history,
            end.vector,
            self.trainer.layout,
            end.strategy_state,
            rejected,
            _export(self.trainer, end.vector),
        )
