"""Round deadlines: what the server does about clients that would finish late.

The engine (with ``profiles`` set) hands a policy the strategy's plan and a :class:`RoundClock`
that predicts each planned client's finish time from its profile; the policy returns the plan to
run (a :class:`~fedfleet.strategies._stragglers.RoundPlan` carrying its counts) and how long the
server waits at least. Three policies, one class each:

* :class:`DropLate` - clients that would miss the deadline are left out (FedAvg's behaviour in Li
  et al. 2020); the round lasts until the deadline when anyone was dropped.
* :class:`PartialWork` - every client takes only the steps that fit before the deadline:
  ``max_steps = floor((D - transfers) * speed / time_per_step)`` (FedProx-style partial work;
  pair it with :class:`~fedfleet.strategies.FedNova`, which normalises by the steps taken).
  Clients whose transfers alone miss the deadline are dropped.
* :class:`OverSelect` - the strategy selects more clients than needed; the first ``keep`` to
  finish are trained, the rest cut off (Bonawitz et al. 2019). The round lasts until the
  ``keep``-th finish.

Examples:
    >>> sim = Simulation(trainer, fed, FedNova(...), profiles=profiles,
    ...                  deadline=PartialWork(deadline_s=30.0))
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fedfleet.client import FitInstructions
from fedfleet.errors import ConfigError
from fedfleet.rounds import plan_metrics
from fedfleet.sim._profiles import ClientProfiles, planned_steps
from fedfleet.strategies._stragglers import RoundPlan

__all__ = [
    "DeadlinePolicy",
    "DropLate",
    "OverSelect",
    "PartialWork",
    "ProfilePacer",
    "RoundClock",
]

Plan = Sequence[tuple[int, FitInstructions]]


@dataclass(frozen=True)
class RoundClock:
    """One round's timing oracle: profiles, the model's size and each client's sample count."""

    profiles: ClientProfiles
    num_bytes: int
    num_samples: Sequence[int]

    def steps(self, cid: int, instructions: FitInstructions) -> int:
        return planned_steps(instructions, self.num_samples[cid])

    def finish(self, cid: int, instructions: FitInstructions) -> float:
        """Predicted round-trip seconds of ``cid`` under ``instructions``."""
        return self.profiles.duration(cid, self.steps(cid, instructions), self.num_bytes)


class DeadlinePolicy(Protocol):
    def apply(self, plan: Plan, clock: RoundClock) -> tuple[RoundPlan, float]:
        """The plan to train and the least time the server waits (s) this round."""
        ...


def _check(deadline_s: float) -> None:
    if not deadline_s > 0:
        raise ConfigError(f"deadline: deadline_s must be > 0, got {deadline_s}")


@dataclass(frozen=True, kw_only=True)
class DropLate:
    """Leave out clients predicted to finish after ``deadline_s``.

    Metrics: ``deadline_dropped`` (how many were left out)."""

    deadline_s: float

    def __post_init__(self) -> None:
        _check(self.deadline_s)

    def apply(self, plan: Plan, clock: RoundClock) -> tuple[RoundPlan, float]:
        kept = [(c, i) for c, i in plan if clock.finish(c, i) <= self.deadline_s]
        dropped = len(plan) - len(kept)
        return RoundPlan(kept, {"deadline_dropped": float(dropped)}), (
            self.deadline_s if dropped else 0.0
        )


@dataclass(frozen=True, kw_only=True)
class PartialWork:
    """Cap each client's ``max_steps`` at what fits before ``deadline_s``.

    Metrics: ``deadline_dropped`` (transfers alone too slow), ``deadline_capped`` (clients whose
    steps were cut)."""

    deadline_s: float

    def __post_init__(self) -> None:
        _check(self.deadline_s)

    def apply(self, plan: Plan, clock: RoundClock) -> tuple[RoundPlan, float]:
        out, dropped, capped = [], 0, 0
        for cid, instr in plan:
            fit = clock.profiles.steps_within(cid, self.deadline_s, clock.num_bytes)
            if fit < 1:
                dropped += 1
                continue
            if clock.steps(cid, instr) > fit:
                capped += 1
                instr = dataclasses.replace(instr, max_steps=fit)
            out.append((cid, instr))
        metrics = {"deadline_dropped": float(dropped), "deadline_capped": float(capped)}
        return RoundPlan(out, metrics), (self.deadline_s if dropped else 0.0)


@dataclass(frozen=True, kw_only=True)
class OverSelect:
    """Train only the first ``keep`` clients to finish (ties: lower id first); with
    ``deadline_s`` also drop anyone later than it. The strategy should select more than
    ``keep`` (e.g. 1.3x). Metrics: ``deadline_dropped``."""

    keep: int
    deadline_s: float = math.inf

    def __post_init__(self) -> None:
        if self.keep < 1:
            raise ConfigError(f"deadline: over-selection keep must be >= 1, got {self.keep}")
        _check(self.deadline_s)

    def apply(self, plan: Plan, clock: RoundClock) -> tuple[RoundPlan, float]:
        timed = sorted((clock.finish(c, i), c) for c, i in plan)
        first = [(t, c) for t, c in timed[: self.keep] if t <= self.deadline_s]
        kept_ids = {c for _, c in first}
        kept = [(c, i) for c, i in plan if c in kept_ids]  # the strategy's order
        dropped = len(plan) - len(kept)
        wait = 0.0
        if dropped:
            wait = first[-1][0] if len(first) == self.keep else self.deadline_s
            wait = min(wait, self.deadline_s)
        return RoundPlan(kept, {"deadline_dropped": float(dropped)}), wait


@dataclass(frozen=True)
class ProfilePacer:
    """The round loop's :class:`~fedfleet.rounds.Pacer` for simulated heterogeneous clients:
    a round lasts as long as its slowest trained client's round trip (or the deadline the policy
    made the server wait for), from ``profiles``."""

    profiles: ClientProfiles
    num_samples: Sequence[int]
    """Clients' sample counts by id (read only for the clients planned)."""
    deadline: DeadlinePolicy | None = None

    def schedule(self, plan: Plan, vector: np.ndarray) -> tuple[Plan, float]:
        if self.deadline is None:
            return plan, 0.0
        clock = RoundClock(self.profiles, vector.nbytes, self.num_samples)
        kept, wait_s = self.deadline.apply(plan, clock)
        return RoundPlan(kept, {**plan_metrics(plan), **kept.metrics}), wait_s

    def round_time(self, plan: Plan, steps: Sequence[int], vector: np.ndarray) -> float:
        return self.profiles.round_time([cid for cid, _ in plan], steps, vector.nbytes)
