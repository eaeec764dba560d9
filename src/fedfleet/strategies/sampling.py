"""Client sampling: which of the available clients take part in a round."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedfleet.errors import ConfigError

__all__ = ["cohort_size", "default_cohort", "sample_clients"]


def cohort_size(num_available: int, count: int | None = None, fraction: float | None = None) -> int:
    """How many clients to sample: ``count``, or ``max(1, round(fraction * available))``,
    capped at the number available. Exactly one of ``count`` and ``fraction`` must be given."""
    if (count is None) == (fraction is None):
        raise ConfigError("give exactly one of clients_per_round (a count) and fraction")
    if count is not None:
        if count < 1:
            raise ConfigError(f"clients_per_round must be >= 1, got {count}")
        return min(count, num_available)
    assert fraction is not None
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"fraction must be in (0, 1], got {fraction}")
    return min(num_available, max(1, round(fraction * num_available)))


def sample_clients(clients: Sequence[int], k: int, rng: np.random.Generator) -> list[int]:
    """``k`` distinct clients drawn uniformly without replacement, in ascending id order (a fixed
    order keeps aggregation bit-for-bit reproducible)."""
    size = min(k, len(clients))
    if isinstance(clients, range):
        # draw positions, never the population itself: the same draws as choosing from the
        # materialised array, in O(k) memory for k much smaller than the population
        return sorted(clients[int(i)] for i in rng.choice(len(clients), size=size, replace=False))
    chosen = rng.choice(np.asarray(clients), size=size, replace=False)
    return sorted(int(c) for c in chosen)


def default_cohort(strategy: object) -> None:
    """For a frozen strategy dataclass with ``clients_per_round`` and ``fraction`` fields: default
    to 10 clients a round when neither is given, and validate the choice before any round."""
    count = getattr(strategy, "clients_per_round")  # noqa: B009
    fraction = getattr(strategy, "fraction")  # noqa: B009
    if count is None and fraction is None:
        object.__setattr__(strategy, "clients_per_round", 10)
        count = 10
    cohort_size(10**9, count, fraction)
