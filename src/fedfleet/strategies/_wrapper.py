"""The pass-through every strategy wrapper starts from.

Wrappers change one side of a strategy (which clients are offered, how updates are weighted,
what a lagging client is told) and leave the rest to the strategy they wrap. :class:`Wrapper`
forwards each method of the :class:`~fedfleet.strategies.Strategy` protocol to
``self.inner`` so a wrapper overrides only what it changes. ``client_fit`` is forwarded as the
inner strategy's own callable, so an executor still recognises plain local training through a
wrapper and keeps training the cohort vectorised.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from fedfleet.client import ClientState, FitInstructions, Trainer
from fedfleet.data import ArrayDataset
from fedfleet.strategies._base import (
    ClientResult,
    ClientUpdate,
    DelegatedEvaluation,
    Strategy,
    StrategyState,
)

__all__ = ["ClientFit", "Wrapper"]

ClientFit = Callable[
    [Trainer, np.ndarray, ArrayDataset, FitInstructions, int, "ClientState | None"], ClientResult
]
"""The signature of a strategy's client side."""


class Wrapper(DelegatedEvaluation):
    """Abstract base of strategy wrappers: every method passes through to ``inner``.

    Subclasses are frozen dataclasses that declare ``inner: Strategy`` as a field.
    """

    inner: Strategy

    def init(self, vector: np.ndarray) -> StrategyState:
        return self.inner.init(vector)

    def configure_fit(
        self,
        rnd: int,
        vector: np.ndarray,
        state: StrategyState,
        clients: Sequence[int],
        rng: np.random.Generator,
    ) -> list[tuple[int, FitInstructions]]:
        return self.inner.configure_fit(rnd, vector, state, clients, rng)

    @property
    def client_fit(self) -> ClientFit:
        """The wrapped strategy's client side, unchanged."""
        return self.inner.client_fit

    def aggregate_fit(
        self,
        rnd: int,
        vector: np.ndarray,
        state: StrategyState,
        updates: Sequence[ClientUpdate],
    ) -> tuple[np.ndarray, StrategyState, dict[str, float]]:
        return self.inner.aggregate_fit(rnd, vector, state, updates)

    def _evaluates_as(self) -> Strategy:
        return self.inner
