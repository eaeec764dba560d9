"""What the cohort trainers (:class:`VmapTrainer`, :class:`CompiledTrainer`) share: everything
but training is their sequential :class:`TorchTrainer`'s, and one client is a cohort of one."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import nn

from fedfleet.client._protocol import EvalResult, FitInstructions, FitResult
from fedfleet.client._torch_trainer import TorchTrainer
from fedfleet.data import ArrayDataset
from fedfleet.errors import ConfigError, DatasetError
from fedfleet.params import Layout

__all__ = ["CohortTrainer"]


class CohortTrainer:
    """Base of trainers that train a whole cohort in :meth:`fit_cohort`; ``sequential`` is the
    :class:`TorchTrainer` on the same model, which evaluates, initialises and exports."""

    sequential: TorchTrainer

    hands_over_results = True
    """Result vectors are new arrays, or rows of one, that the trainer never reads again (a
    reused result array is reused only once no result refers to it): see :class:`Trainer`."""

    @property
    def layout(self) -> Layout:
        return self.sequential.layout

    def init_vector(self, seed: int) -> np.ndarray:
        return self.sequential.init_vector(seed)

    def export(self, vector: np.ndarray) -> nn.Module:
        """A standalone copy of the model holding ``vector``'s weights."""
        return self.sequential.export(vector)

    def evaluate(self, vector: np.ndarray, data: ArrayDataset) -> EvalResult:
        """Mean loss and top-1 accuracy of ``vector`` on ``data`` (the sequential trainer's)."""
        return self.sequential.evaluate(vector, data)

    def fit(
        self, vector: np.ndarray, data: ArrayDataset, instructions: FitInstructions, seed: int
    ) -> FitResult:
        """One client: :meth:`fit_cohort` of a cohort of one."""
        return self.fit_cohort(vector, [data], [instructions], [seed])[0]

    def _check_cohort(
        self,
        vector: np.ndarray,
        datasets: Sequence[ArrayDataset],
        instructions: Sequence[FitInstructions],
        seeds: Sequence[int],
        one_shape: bool = True,
    ) -> None:
        """What every ``fit_cohort`` refuses first: a vector of another layout, unequal
        numbers of datasets, instructions and seeds, and (``one_shape``) samples of different
        shapes in one cohort (named by the client's position)."""
        self.layout.check(vector, who="the global vector")
        if not len(datasets) == len(instructions) == len(seeds):
            raise ConfigError(
                f"fit_cohort got {len(datasets)} datasets, {len(instructions)} instructions and "
                f"{len(seeds)} seeds; pass one of each per client"
            )
        if one_shape and datasets:
            first = datasets[0].sample_shape
            for i, d in enumerate(datasets):
                if d.sample_shape != first:
                    raise DatasetError(
                        f"client {i}'s samples have shape {d.sample_shape}, client 0's {first}; "
                        "a cohort trains one model on samples of one shape"
                    )

    def fit_cohort(
        self,
        vector: np.ndarray,
        datasets: Sequence[ArrayDataset],
        instructions: Sequence[FitInstructions],
        seeds: Sequence[int],
    ) -> list[FitResult]:
        raise NotImplementedError
