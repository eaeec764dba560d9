"""Systems heterogeneity: some of a round's clients cannot finish their local work in time.

Li et al., "Federated Optimization in Heterogeneous Networks" (MLSys 2020), Section 5.2: each
round a fixed share of the selected devices are stragglers that manage only x local epochs,
x ~ U{1..E}, instead of E. FedAvg drops them (their work never reaches the server), FedProx keeps
their partial work. :class:`Stragglers` rewrites a round's plan accordingly; :class:`FedAvg`
(and so FedProx) applies it in ``configure_fit`` with the round's sampling generator, after the
clients are drawn, so runs stay deterministic and the cohort is the same with or without it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from math import floor

import numpy as np

from fedfleet.client import FitInstructions
from fedfleet.errors import ConfigError

__all__ = ["RoundPlan", "StragglerDraw", "Stragglers"]

Plan = list[tuple[int, FitInstructions]]


class RoundPlan(list[tuple[int, FitInstructions]]):
    """A round's plan, ``(client_id, instructions)`` pairs, carrying the metrics the server's
    planning produced (``stragglers``, ``stragglers_dropped``): dropped clients never reach
    aggregation, so only planning can count them. To anything that does not look for
    ``metrics`` it is a plain list."""

    def __init__(self, items: Plan, metrics: dict[str, float]) -> None:
        super().__init__(items)
        self.metrics = metrics


@dataclass(frozen=True)
class StragglerDraw:
    """One round's outcome: the plan to run and who straggled.

    Attributes:
        plan: ``(client_id, instructions)`` for every client that trains, in the input order.
        stragglers: ids of the round's stragglers (trained with fewer epochs, or dropped).
        dropped: ids left out of the round (equal to ``stragglers`` when dropping, else empty).
    """

    plan: Plan
    stragglers: tuple[int, ...]
    dropped: tuple[int, ...]

    @property
    def metrics(self) -> dict[str, float]:
        return {
            "stragglers": float(len(self.stragglers)),
            "stragglers_dropped": float(len(self.dropped)),
        }


@dataclass(frozen=True, kw_only=True)
class Stragglers:
    """A ``fraction`` of each round's selected clients straggle.

    Of the k selected clients, ``floor(fraction * k + 0.5)`` (rounded half up) are drawn
    uniformly without replacement as stragglers; each can only run x ~ U{1..E} local epochs, E
    being its instructed epochs (E included; the FedProx reference code's ``randint(1, E)`` stops
    at E-1). With ``drop=True`` (FedAvg in the paper) the stragglers are
    left out of the round: not trained, not aggregated. With ``drop=False`` (FedProx) they train
    for x epochs and their partial work is aggregated like any other update.

    Attributes:
        fraction: share of the selected clients that straggle, in [0, 1] (0.9 in the paper's
            hardest setting).
        drop: leave stragglers out (True) or keep their partial work (False).

    Examples:
        >>> Stragglers(fraction=0.5, drop=False)
        Stragglers(fraction=0.5, drop=False)
    """

    fraction: float
    drop: bool

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ConfigError(f"stragglers fraction must be in [0, 1], got {self.fraction}")

    def count(self, k: int) -> int:
        """How many of ``k`` selected clients straggle."""
        return min(k, floor(self.fraction * k + 0.5))

    def draw(
        self, plan: Sequence[tuple[int, FitInstructions]], rng: np.random.Generator
    ) -> StragglerDraw:
        """Choose this round's stragglers among ``plan`` and rewrite the plan.

        Draws from ``rng``: first the straggler positions, then (when keeping partial work) one
        epoch count per straggler in plan order. The instructions of kept stragglers are copies
        with ``epochs = x``; everything else in them is unchanged.
        """
        k = len(plan)
        chosen = np.sort(rng.choice(k, size=self.count(k), replace=False))
        stragglers = tuple(plan[i][0] for i in chosen)
        if self.drop:
            drop = set(chosen.tolist())
            kept = [p for i, p in enumerate(plan) if i not in drop]
            return StragglerDraw(kept, stragglers, stragglers)
        out = list(plan)
        for i in chosen:
            cid, instr = plan[i]
            x = int(rng.integers(1, instr.epochs + 1)) if instr.epochs >= 1 else 0
            out[i] = (cid, dataclasses.replace(instr, epochs=x))
        return StragglerDraw(out, stragglers, ())

    def apply(
        self, plan: Sequence[tuple[int, FitInstructions]], rng: np.random.Generator
    ) -> RoundPlan:
        """The plan with this round's stragglers dropped or cut short (see :meth:`draw`), and
        their counts in its ``metrics``."""
        draw = self.draw(plan, rng)
        return RoundPlan(draw.plan, draw.metrics)
