"""FedBuff (Nguyen et al. 2022, "Federated Learning with Buffered Asynchronous Aggregation"):
asynchronous training with a buffer on the server, run on a simulated clock.

The server keeps ``concurrency`` clients training at once, each drawn uniformly from the idle
clients. A client trains from the global version it downloaded; when it finishes, its delta
joins a buffer with staleness ``s = (server version now) - (version it started from)``. Once the
buffer holds K updates the server steps

    x <- x + eta_g * sum_i w(s_i) delta_i / K,        w(s) = 1 / sqrt(1 + s) by default,

increments the version, clears the buffer, and the freed slots are filled again with clients
that download the new version. ``eta_g * mean`` is the server transform ``sgd(eta_g)`` applied to
the pseudo-gradient ``-sum_i w(s_i) delta_i / K``; any other :class:`ServerTransform` (FedAdam,
momentum) can take its place, as in :class:`fedfleet.strategies.FedAvg`.

The clock: a client dispatched at time t returns at ``t + ClientClock duration`` (download,
``E * ceil(n_k / B)`` local steps capped at ``max_steps``, upload). Arrivals sit in a heap keyed
by (time, client id), so simultaneous arrivals are taken in ascending id order; all arrivals of
one instant are handled (and may trigger several server steps) before freed slots are refilled.

Randomness, all from the run seed: dispatches are numbered 1, 2, ... in order; the refill whose
first dispatch is d samples with ``SeedSequence(seed, spawn_key=(d, 0))``, dispatch d of client c
trains with ``client_seed(seed, d, c)``, client speeds come from key ``(0, 2)``. A client trains
when it arrives (from the vector it downloaded), so work still in flight at the end costs nothing.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import numpy as np

import fedfleet._streams as _streams
from fedfleet.client.protocol import FitInstructions, Trainer
from fedfleet.data.base import ArrayDataset
from fedfleet.errors import ConfigError, FedfleetError, UpdateRejected
from fedfleet.rounds import weighted_train_loss
from fedfleet.sim.clock import ClientClock
from fedfleet.sim.engine import (
    ClientCallback,
    RoundCallback,
    SimulationResult,
    _export,
    client_seed,
)
from fedfleet.sim.federation import Federation
from fedfleet.strategies.base import ClientUpdate
from fedfleet.strategies.sampling import sample_clients
from fedfleet.transforms.base import ServerTransform, TransformState, sgd
from fedfleet.validation import validate_update

__all__ = [
    "FedBuffSimulation",
    "StalenessWeight",
    "buffered_mean",
    "polynomial_staleness",
]

log = logging.getLogger("fedfleet")

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


@dataclass
class _Job:
    """A client in flight: the version and vector it downloaded, and its dispatch number."""

    version: int
    vector: np.ndarray
    dispatch: int


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

    Example:
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

    def __post_init__(self) -> None:
        if self.buffer_size < 1:
            raise ConfigError(f"fedbuff: buffer_size must be >= 1, got {self.buffer_size}")
        if self.concurrency < 1:
            raise ConfigError(f"fedbuff: concurrency must be >= 1, got {self.concurrency}")
        if self.eval_every < 0:
            raise ConfigError(f"fedbuff: eval_every must be >= 0, got {self.eval_every}")
        if self.server_optimizer is not None and self.server_lr != 1.0:
            raise ConfigError(
                "fedbuff: give server_lr (a plain SGD server step) or server_optimizer (which "
                "carries its own learning rate), not both"
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
        fed, layout = self.federation, self.trainer.layout
        vector = self.trainer.init_vector(self.seed)
        transform = self.server_optimizer or sgd(self.server_lr)
        opt_state = transform.init(vector)
        times = self.clock.sample(fed.num_clients, self.seed)
        num_bytes = 4 * layout.size
        concurrency = min(self.concurrency, fed.num_clients)

        arrivals: list[tuple[float, int]] = []  # (arrival time, client id)
        flight: dict[int, _Job] = {}
        buffer: list[tuple[ClientUpdate, int]] = []  # (update, staleness)
        history: list[dict[str, Any]] = []
        rejected: list[UpdateRejected] = []
        version, dispatched, now, rejected_since, streak = 0, 0, 0.0, 0, 0
        stop = num_versions <= 0
        start = t_step = time.perf_counter()

        def refill() -> None:
            nonlocal dispatched
            free = concurrency - len(flight)
            if free <= 0:
                return
            idle = [cid for cid in fed.client_ids if cid not in flight]
            rng = _streams.generator(self.seed, _streams.sampling(dispatched + 1))
            for cid in sample_clients(idle, free, rng):
                dispatched += 1
                flight[cid] = _Job(version, vector, dispatched)
                steps = _nominal_steps(len(fed.train_parts[cid]), self.local)
                heapq.heappush(arrivals, (now + times.duration(cid, steps, num_bytes), cid))

        refill()
        while not stop:
            if not arrivals:
                raise FedfleetError("fedbuff: no client in flight; the federation has no clients")
            now = arrivals[0][0]
            while arrivals and arrivals[0][0] == now and not stop:
                _, cid = heapq.heappop(arrivals)
                job, data = flight[cid], fed.train_data(cid)
                update = self._train(cid, job, data)
                try:
                    validate_update(
                        update,
                        layout,
                        version + 1,
                        flight,
                        max_samples=len(data),
                        max_norm=self.max_update_norm,
                    )
                    buffer.append((update, version - job.version))
                    streak = 0
                except UpdateRejected as err:
                    log.warning("%s", err)
                    rejected.append(err)
                    rejected_since += 1
                    streak += 1
                    if streak >= 10 * (self.buffer_size + concurrency):
                        raise FedfleetError(
                            f"fedbuff: the last {streak} updates were all rejected (latest: "
                            f"{err}); the run cannot make progress"
                        ) from err
                del flight[cid]
                if on_client is not None:
                    on_client(len(buffer), self.buffer_size)
                if len(buffer) < self.buffer_size:
                    continue
                vector, opt_state, metrics = self._server_step(vector, opt_state, transform, buffer)
                version += 1
                buffer.clear()
                record: dict[str, Any] = {
                    "version": version,
                    "sim_time_s": now,
                    "num_clients": self.buffer_size,
                    "num_rejected": rejected_since,
                    **metrics,
                }
                rejected_since = 0
                last = version == num_versions
                if last or (self.eval_every and version % self.eval_every == 0):
                    ev = self.trainer.evaluate(vector, fed.task.test)
                    record["test_loss"], record["test_accuracy"] = ev.loss, ev.accuracy
                record["round_time_s"] = time.perf_counter() - t_step
                record["wall_time_s"] = time.perf_counter() - start
                t_step = time.perf_counter()
                history.append(record)
                if on_round is not None:
                    on_round(record)
                stop = last or (until is not None and until(record))
            if not stop:
                refill()
        state: TransformState = {"server_optimizer": opt_state}
        return SimulationResult(
            history, vector, layout, state, rejected, _export(self.trainer, vector)
        )

    def _server_step(
        self,
        vector: np.ndarray,
        opt_state: TransformState,
        transform: ServerTransform,
        buffer: Sequence[tuple[ClientUpdate, int]],
    ) -> tuple[np.ndarray, TransformState, dict[str, Any]]:
        """Apply the full buffer: the server transform on ``-sum_i w(s_i) delta_i / K``."""
        updates = [u for u, _ in buffer]
        staleness = [s for _, s in buffer]
        mean = buffered_mean(
            [u.delta for u in updates], staleness, self.staleness_weight, self.buffer_size
        )
        step, opt_state = transform.update(-mean, opt_state, vector)
        metrics = {
            "staleness_mean": float(np.mean(staleness)),
            "staleness_max": int(max(staleness)),
            "train_loss": weighted_train_loss(updates),
        }
        return (vector.astype(np.float64) + step).astype(np.float32), opt_state, metrics

    def _train(self, cid: int, job: _Job, data: ArrayDataset) -> ClientUpdate:
        """Client ``cid``'s local training from the vector it downloaded, as an update."""
        fit = self.trainer.fit(
            job.vector, data, self.local, client_seed(self.seed, job.dispatch, cid)
        )
        ok = isinstance(fit.vector, np.ndarray) and fit.vector.shape == job.vector.shape
        delta = fit.vector - job.vector if ok else fit.vector  # misshaped: rejected by validation
        return ClientUpdate(cid, delta, fit.num_samples, fit.num_steps, fit.metrics)


def _nominal_steps(num_samples: int, local: FitInstructions) -> int:
    """Local steps the instructions ask for: ``E * ceil(n / B)``, capped at ``max_steps``."""
    steps = local.epochs * math.ceil(num_samples / local.batch_size)
    return steps if local.max_steps is None else min(steps, local.max_steps)
