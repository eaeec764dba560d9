"""Asynchronous clients on a simulated clock: the :class:`~fedfleet.rounds.AsyncTransport` of
:class:`~fedfleet.sim.FedBuffSimulation`.

A client dispatched at simulated time t comes back at ``t + profiles.duration`` (download,
``E * ceil(n_k / B)`` local steps capped at ``max_steps``, upload; the one client model of
:class:`~fedfleet.sim.ClientProfiles`). Arrivals sit in a heap keyed by (time, client
id), so simultaneous arrivals come back in ascending id order. A client trains when it arrives
(from the vector it downloaded), so work still in flight when the run ends costs nothing.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedfleet.client import FitInstructions, Trainer
from fedfleet.errors import UpdateRejected
from fedfleet.rounds import Arrival, Dispatch
from fedfleet.sim._federation import Federation
from fedfleet.sim._profiles import ClientProfiles
from fedfleet.strategies._base import ClientUpdate
from fedfleet.strategies._fedbuff import FedBuff
from fedfleet.validation import validate_update

__all__ = ["ClockedTransport", "nominal_steps"]

log = logging.getLogger("fedfleet")

ArrivalTime = Callable[[Dispatch, float], float]
"""``(dispatch, now) -> when it comes back``; the default is the profiles' round trip."""


def nominal_steps(num_samples: int, local: FitInstructions) -> int:
    """Local steps the instructions ask for: ``E * ceil(n / B)``, capped at ``max_steps``."""
    steps = local.epochs * math.ceil(num_samples / local.batch_size)
    return steps if local.max_steps is None else min(steps, local.max_steps)


@dataclass
class ClockedTransport:
    """Trains each dispatched client when it arrives on the simulated clock.

    Args:
        trainer: local training.
        federation: the clients' data.
        strategy: whose ``client_fit`` a client runs.
        profiles: client speeds and bandwidths (durations).
        max_update_norm: refuse deltas with a larger L2 norm (None: no bound).
        arrival_time: replaces the profiles' timing (a test replays a recorded order with it).
    """

    trainer: Trainer
    federation: Federation
    strategy: FedBuff
    profiles: ClientProfiles
    max_update_norm: float | None = None
    arrival_time: ArrivalTime | None = None
    now: float = 0.0
    _heap: list[tuple[float, int, int]] = field(default_factory=list)
    _flight: dict[int, Dispatch] = field(default_factory=dict)

    def idle(self, busy: Sequence[int]) -> list[int]:
        taken = set(busy)
        return [cid for cid in self.federation.client_ids if cid not in taken]

    def dispatch(self, jobs: Sequence[Dispatch]) -> None:
        num_bytes = 4 * self.trainer.layout.size
        for job in jobs:
            cid = job.client_id
            if self.arrival_time is not None:
                at = self.arrival_time(job, self.now)
            else:
                steps = nominal_steps(len(self.federation.train_parts[cid]), job.instructions)
                at = self.now + self.profiles.duration(cid, steps, num_bytes)
            self._flight[cid] = job
            heapq.heappush(self._heap, (at, cid, job.number))

    def next_arrival(self) -> Arrival | None:
        if not self._heap:
            return None
        at, cid, _ = heapq.heappop(self._heap)
        self.now = at
        job = self._flight.pop(cid)
        update = self._train(job)
        settled = not self._heap or self._heap[0][0] != at
        try:
            validate_update(
                update,
                self.trainer.layout,
                job.round,
                {cid},
                max_samples=len(self.federation.train_parts[cid]),
                max_norm=self.max_update_norm,
            )
        except UpdateRejected as err:
            log.warning("%s", err)
            return Arrival(job, None, err.with_traceback(None), at, settled)
        return Arrival(job, update, None, at, settled)

    def _train(self, job: Dispatch) -> ClientUpdate:
        """The client's local training from the vector it downloaded, as an update."""
        data = self.federation.train_data(job.client_id)
        result = self.strategy.client_fit(
            self.trainer, job.vector, data, job.instructions, job.seed, None
        )
        fit = result.fit
        ok = isinstance(fit.vector, np.ndarray) and fit.vector.shape == job.vector.shape
        delta = fit.vector - job.vector if ok else fit.vector  # misshaped: rejected by validation
        return ClientUpdate(
            job.client_id, delta, fit.num_samples, fit.num_steps, fit.metrics, result.extras
        )
