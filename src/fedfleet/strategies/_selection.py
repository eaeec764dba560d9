"""Client selection wrappers: Oort-style utility selection and availability-aware sampling.

Both wrap any strategy: they choose the round's candidates and then call the wrapped strategy's
``configure_fit`` with only those clients, so the wrapped cohort size must be at least as large
(e.g. ``FedAvg(fraction=1.0, ...)``); instructions and aggregation stay the wrapped strategy's.

**Oort** (Lai et al., "Oort: Efficient Federated Learning via Guided Participant Selection",
OSDI 2021). Client i's utility, once it has reported, is

    U_i = |B_i| * sqrt(mean_k loss_k^2)  *  (T / t_i)^alpha  if t_i > T  (else factor 1)

with |B_i| its sample count, the root-mean-square of its per-sample training loss (from the
update's ``train_loss_sq`` metric when a trainer reports it, else ``train_loss^2``, the mean
loss standing in), t_i its round time predicted from the profiles for the local steps it took
when it last reported (Oort uses the observed duration; the simulation knows it), and T the
preferred round duration. Each round ``round(epsilon * K)`` of the K slots go to clients that
have never reported (uniform, from the round's sampling generator, so the choice is seeded),
the rest to the highest-utility explored clients (ties: lower id); unused exploration slots
fall back to exploitation and vice versa. Oort's staleness bonus and pacer are left out.
The per-client statistics live in the strategy state as arrays: ``state["oort"]["utility"]``
(statistical utility, NaN: unexplored), ``["last_round"]`` and ``["last_steps"]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fedfleet.client import FitInstructions
from fedfleet.errors import ConfigError
from fedfleet.strategies._base import ClientUpdate, Strategy, StrategyState
from fedfleet.strategies._wrapper import Wrapper

if TYPE_CHECKING:  # sim/ imports rounds/, which imports strategies/: a cycle at run time
    from fedfleet.sim._profiles import ClientProfiles

__all__ = ["AvailableOnly", "OortSelection", "oort_penalty", "oort_utility"]


def oort_utility(num_samples: float, loss_sq_mean: float) -> float:
    """Oort's statistical utility ``|B_i| * sqrt(mean loss^2)``."""
    return float(num_samples * np.sqrt(loss_sq_mean))


def oort_penalty(duration_s: float, preferred_s: float, alpha: float) -> float:
    """``(T / t_i)^alpha`` for a client slower than the preferred duration T, else 1."""
    return float((preferred_s / duration_s) ** alpha) if duration_s > preferred_s else 1.0


@dataclass(frozen=True, kw_only=True)
class OortSelection(Wrapper):
    """Select ``clients_per_round`` clients by Oort utility with epsilon-greedy exploration.

    Attributes:
        inner: the strategy that gives instructions and aggregates (its cohort must cover K).
        profiles: the clients' system profiles (for t_i).
        clients_per_round: K.
        preferred_s: T, the preferred round duration in simulated seconds.
        alpha: the straggler penalty exponent (Oort's default 2).
        epsilon: share of the slots for unexplored clients.

    Examples:
        >>> OortSelection(inner=FedAvg(fraction=1.0, local=local), profiles=profiles,
        ...               clients_per_round=10, preferred_s=30.0)
    """

    inner: Strategy
    profiles: ClientProfiles
    clients_per_round: int
    preferred_s: float
    alpha: float = 2.0
    epsilon: float = 0.2

    def __post_init__(self) -> None:
        if self.clients_per_round < 1:
            raise ConfigError(f"oort: clients_per_round must be >= 1, got {self.clients_per_round}")
        if not self.preferred_s > 0:
            raise ConfigError(f"oort: preferred_s must be > 0, got {self.preferred_s}")
        if not 0.0 <= self.epsilon <= 1.0:
            raise ConfigError(f"oort: epsilon must be in [0, 1], got {self.epsilon}")
        if self.alpha < 0:
            raise ConfigError(f"oort: alpha must be >= 0, got {self.alpha}")

    def init(self, vector: np.ndarray) -> StrategyState:
        n = self.profiles.num_clients
        return {
            "inner": self.inner.init(vector),
            "oort": {
                "utility": np.full(n, np.nan),
                "last_round": np.zeros(n, dtype=np.int64),
                "last_steps": np.zeros(n, dtype=np.int64),
            },
        }

    def select(
        self, state: StrategyState, clients: Sequence[int], num_bytes: int, rng: np.random.Generator
    ) -> list[int]:
        """The round's K clients among ``clients`` (ascending ids)."""
        stats: Any = state["oort"]
        k = min(self.clients_per_round, len(clients))
        ids = np.asarray(sorted(clients), dtype=np.int64)
        base = stats["utility"][ids] if len(ids) else np.zeros(0)
        explored = ids[~np.isnan(base)]
        fresh = ids[np.isnan(base)]
        n_explore = min(len(fresh), max(round(self.epsilon * k), k - len(explored)))
        n_exploit = min(k - n_explore, len(explored))
        util = np.array(
            [
                stats["utility"][c]
                * oort_penalty(
                    self.profiles.duration(int(c), int(stats["last_steps"][c]), num_bytes),
                    self.preferred_s,
                    self.alpha,
                )
                for c in explored
            ]
        )
        order = np.lexsort((explored, -util)) if len(explored) else np.zeros(0, dtype=np.int64)
        best = explored[order[:n_exploit]]
        picked = rng.choice(fresh, size=n_explore, replace=False) if n_explore else fresh[:0]
        return sorted(int(c) for c in np.concatenate([best, picked]))

    def configure_fit(
        self,
        rnd: int,
        vector: np.ndarray,
        state: StrategyState,
        clients: Sequence[int],
        rng: np.random.Generator,
    ) -> list[tuple[int, FitInstructions]]:
        chosen = self.select(state, clients, vector.nbytes, rng)
        return self.inner.configure_fit(rnd, vector, state["inner"], chosen, rng)  # type: ignore[arg-type]

    def aggregate_fit(
        self,
        rnd: int,
        vector: np.ndarray,
        state: StrategyState,
        updates: Sequence[ClientUpdate],
    ) -> tuple[np.ndarray, StrategyState, dict[str, float]]:
        stats: Any = state["oort"]
        utility, last = stats["utility"].copy(), stats["last_round"].copy()
        steps = stats["last_steps"].copy()
        for u in updates:
            sq = u.metrics.get("train_loss_sq")
            if sq is None and u.metrics.get("train_loss") is not None:
                sq = float(u.metrics["train_loss"]) ** 2
            if sq is not None and np.isfinite(sq):
                utility[u.client_id] = oort_utility(u.num_samples, sq)
                last[u.client_id] = rnd
                steps[u.client_id] = u.num_steps
        new, inner_state, metrics = self.inner.aggregate_fit(rnd, vector, state["inner"], updates)  # type: ignore[arg-type]
        metrics = {**metrics, "oort_explored": float(np.sum(~np.isnan(utility)))}
        oort = {"utility": utility, "last_round": last, "last_steps": steps}
        return new, {"inner": inner_state, "oort": oort}, metrics


@dataclass(frozen=True, kw_only=True)
class AvailableOnly(Wrapper):
    """Offer the wrapped strategy only the clients online in the round (profiles' availability,
    the same draw as the engine's, key ``(rnd, 4)`` of ``seed``), then sample uniformly as it
    does. For engines that do not filter by availability themselves; :class:`Simulation` with
    ``profiles`` already does."""

    inner: Strategy
    profiles: ClientProfiles
    seed: int

    def configure_fit(
        self,
        rnd: int,
        vector: np.ndarray,
        state: StrategyState,
        clients: Sequence[int],
        rng: np.random.Generator,
    ) -> list[tuple[int, FitInstructions]]:
        online = self.profiles.available(clients, rnd, self.seed)
        return self.inner.configure_fit(rnd, vector, state, online, rng)
