"""Client sampling: which of the available clients take part in a round, declared once.

A sampler is anything with ``sample(clients, rng) -> sorted client ids``, drawing only from the
round's sampling generator:

- :class:`Sampling`: K distinct clients uniformly without replacement (``clients_per_round``),
  or a fraction C of those available (``fraction``); 10 a round if neither is given.
- :class:`PoissonSampling`: every client independently with probability q.
- :class:`AccountedSampling`: what a DP accountant assumes (Poisson with rate q, or K of N
  without replacement), for the population it was told.

A strategy that samples uniformly derives from :class:`Sampling`, so its ``clients_per_round``
and ``fraction`` keywords, their default, their checks and ``sample`` are these ones (a frozen
dataclass shares fields only with the classes built on it; nothing else is inherited).
:func:`plan_round` gives every sampled client the same instructions and lets stragglers cut
some short.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from fedfleet.client import FitInstructions
from fedfleet.errors import ConfigError

if TYPE_CHECKING:
    from fedfleet.privacy._accountant import DpAccounting
    from fedfleet.strategies._stragglers import Stragglers

__all__ = [
    "AccountedSampling",
    "PoissonSampling",
    "Sampler",
    "Sampling",
    "cohort_size",
    "plan_round",
    "sample_clients",
]


class Sampler(Protocol):
    """Chooses a round's clients among ``clients`` with the round's sampling generator."""

    def sample(self, clients: Sequence[int], rng: np.random.Generator) -> list[int]: ...


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


@dataclass(frozen=True, kw_only=True)
class Sampling:
    """Uniform sampling without replacement of K clients, or of a fraction C of them.

    Attributes:
        clients_per_round: K, a count (give this or ``fraction``; 10 if neither).
        fraction: C, the fraction of available clients a round: ``max(1, round(C * N))``.

    Examples:
        >>> Sampling(fraction=0.1).sample(range(100), np.random.default_rng(0))[:3]
        [1, 3, 7]
    """

    clients_per_round: int | None = None
    fraction: float | None = None

    def __post_init__(self) -> None:
        if self.clients_per_round is None and self.fraction is None:
            object.__setattr__(self, "clients_per_round", 10)
        cohort_size(10**9, self.clients_per_round, self.fraction)  # checked before any round

    def sample(self, clients: Sequence[int], rng: np.random.Generator) -> list[int]:
        k = cohort_size(len(clients), self.clients_per_round, self.fraction)
        return sample_clients(clients, k, rng)


@dataclass(frozen=True)
class PoissonSampling:
    """Every client independently with probability ``rate`` (one uniform draw per client, in
    the given order): the cohort size varies, as DP-FedAvg's accounting assumes."""

    rate: float

    def sample(self, clients: Sequence[int], rng: np.random.Generator) -> list[int]:
        draws = rng.random(len(clients))
        return [int(c) for c, u in zip(clients, draws, strict=True) if u < self.rate]


@dataclass(frozen=True)
class AccountedSampling:
    """The sampling ``accounting`` assumes: Poisson with its ``sampling_rate``, or its
    ``cohort_size`` clients without replacement; a federation of another size is refused,
    since the epsilon reported would be wrong."""

    accounting: DpAccounting

    def sample(self, clients: Sequence[int], rng: np.random.Generator) -> list[int]:
        acc = self.accounting
        if len(clients) != acc.population:
            raise ConfigError(
                f"DP accounting assumes a population of {acc.population} clients but "
                f"{len(clients)} are available; set the accounting's population to the "
                "federation size"
            )
        if acc.sampling == "poisson":
            assert acc.sampling_rate is not None
            return PoissonSampling(acc.sampling_rate).sample(clients, rng)
        assert acc.cohort_size is not None
        return sample_clients(clients, acc.cohort_size, rng)


def plan_round(
    sampler: Sampler,
    clients: Sequence[int],
    rng: np.random.Generator,
    local: FitInstructions,
    stragglers: Stragglers | None = None,
) -> list[tuple[int, FitInstructions]]:
    """Sample the cohort and give every client ``local``; then, if given, let ``stragglers``
    cut some clients' work (drawn after sampling: the same cohort either way)."""
    plan = [(cid, local) for cid in sampler.sample(clients, rng)]
    return plan if stragglers is None else stragglers.apply(plan, rng)
