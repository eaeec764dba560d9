"""How a round's cohort is trained: one client after another, or all at once.

The engine hands an executor the round's jobs and gets back one :class:`ClientResult` per job,
in job order; validation and aggregation stay in the engine. :class:`SequentialExecutor` calls
the strategy's ``client_fit`` per client (any strategy, any trainer). :class:`VectorisedExecutor`
trains the whole cohort in one call to ``trainer.fit_cohort`` (e.g. a ``VmapTrainer``) when the
strategy's client side is plain local training, which FedAvg, the FedOpt family, FedProx and
FedNova are (their client-side differences travel as instructions); for any other strategy it
falls back to the sequential loop, so choosing it is always safe.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fedfleet.client import ClientState, FitInstructions, FitResult, Trainer
from fedfleet.data import ArrayDataset
from fedfleet.strategies._base import ClientResult, Strategy, plain_client_fit

__all__ = ["ClientJob", "CohortExecutor", "SequentialExecutor", "VectorisedExecutor"]

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ClientJob:
    """One client's work in a round."""

    client_id: int
    data: ArrayDataset
    instructions: FitInstructions
    seed: int
    state: ClientState | None


class CohortExecutor(Protocol):
    def run(
        self,
        strategy: Strategy,
        trainer: Trainer,
        vector: np.ndarray,
        jobs: Sequence[ClientJob],
        progress: Progress | None = None,
    ) -> list[ClientResult]: ...


class SequentialExecutor:
    """Each client's ``client_fit`` in turn: the reference path every other executor matches."""

    def run(
        self,
        strategy: Strategy,
        trainer: Trainer,
        vector: np.ndarray,
        jobs: Sequence[ClientJob],
        progress: Progress | None = None,
    ) -> list[ClientResult]:
        results = []
        for i, job in enumerate(jobs):
            results.append(
                strategy.client_fit(
                    trainer, vector, job.data, job.instructions, job.seed, job.state
                )
            )
            if progress is not None:
                progress(i + 1, len(jobs))
        return results


class _CohortTrainer(Protocol):
    def fit_cohort(
        self,
        vector: np.ndarray,
        datasets: Sequence[ArrayDataset],
        instructions: Sequence[FitInstructions],
        seeds: Sequence[int],
    ) -> list[FitResult]: ...


def _is_plain(strategy: Strategy) -> bool:
    return getattr(strategy, "client_fit", None) is plain_client_fit


class VectorisedExecutor:
    """The whole cohort through ``trainer.fit_cohort`` when the strategy allows it."""

    def __init__(self) -> None:
        self._fallback = SequentialExecutor()

    def run(
        self,
        strategy: Strategy,
        trainer: Trainer,
        vector: np.ndarray,
        jobs: Sequence[ClientJob],
        progress: Progress | None = None,
    ) -> list[ClientResult]:
        fit_cohort = getattr(trainer, "fit_cohort", None)
        if not jobs or fit_cohort is None or not _is_plain(strategy):
            return self._fallback.run(strategy, trainer, vector, jobs, progress)
        fits = fit_cohort(
            vector,
            [j.data for j in jobs],
            [j.instructions for j in jobs],
            [j.seed for j in jobs],
        )
        if progress is not None:
            progress(len(jobs), len(jobs))
        return [ClientResult(fit) for fit in fits]
