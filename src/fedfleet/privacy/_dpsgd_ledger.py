"""Cumulative sample-level privacy of DP-SGD clients across rounds.

Each :class:`~fedfleet.privacy.DPSGDTrainer` fit reports the epsilon of *its own* steps.
What a client can state at the end of a run is the composition of every fit it made: T_r
subsampled Gaussian steps in each round r it took part in, at the sampling rate of that round
(``B / n``, which changes only if its batch size or data do). :class:`DPSGDLedger` wraps the
run's strategy and keeps, in the strategy state, a table of rows ``(client, rate, steps)``: the
steps each client has taken at each rate. After aggregation it composes a client's rows with
``dp-accounting`` (``ComposedDpEvent`` of ``SelfComposedDpEvent(PoissonSampledDpEvent(q,
Gaussian(sigma)), steps)``; fixed-size batches as replace-one ``SampledWithoutReplacement``
events under RDP, as in :func:`~fedfleet.privacy.dpsgd_epsilon`) for every client that
trained this round and reports:

- ``dpsgd_epsilon_max``: the largest cumulative epsilon of any client so far, at ``delta``:
  the guarantee that holds for every client's records;
- ``dpsgd_epsilon_round_max``: the largest cumulative epsilon among this round's clients.

Only accepted updates count (a rejected update never reached the server's model), and the
table lives in the strategy state, so it survives checkpoints and ``--resume``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np

from fedfleet._extras import require
from fedfleet.errors import ConfigError
from fedfleet.privacy._accountant import pld_epsilon
from fedfleet.strategies._base import ClientUpdate, Strategy, StrategyState
from fedfleet.strategies._wrapper import Wrapper

__all__ = ["DPSGDLedger", "composed_dpsgd_epsilon"]

RATE_METRIC = "dpsgd_sample_rate"
"""The per-step sampling rate B / n a DP-SGD fit reports among its metrics."""


@lru_cache(maxsize=4096)
def composed_dpsgd_epsilon(
    rows: tuple[tuple[float, int, int], ...],
    noise_multiplier: float,
    delta: float,
    accountant: Literal["pld", "rdp"] = "pld",
    sampling: Literal["poisson", "fixed"] = "poisson",
) -> float:
    """Epsilon at ``delta`` of DP-SGD steps at several rates: ``rows`` of ``(rate, steps,
    dataset_size)`` (dataset size is needed for fixed-size batches only).

    Examples:
        >>> round(composed_dpsgd_epsilon(((0.1, 100, 100), (0.1, 100, 100)), 1.0, 1e-5), 2)
        9.97
    """
    # imported here: dp_accounting and its SciPy are ~1 s of start-up only DP runs need
    require("dp_accounting", feature="DP accounting")
    import dp_accounting as dpa
    from dp_accounting.rdp import rdp_privacy_accountant

    if noise_multiplier <= 0:
        return float("inf")
    events: list[dpa.DpEvent] = []
    for rate, steps, size in rows:
        if steps <= 0:
            continue
        if sampling == "poisson":
            event: dpa.DpEvent = dpa.PoissonSampledDpEvent(
                rate, dpa.GaussianDpEvent(noise_multiplier)
            )
        else:  # replace-one: one record moves the clipped sum by 2C, noise is sigma C
            batch = max(1, round(rate * size))
            event = dpa.SampledWithoutReplacementDpEvent(
                size, batch, dpa.GaussianDpEvent(noise_multiplier / 2)
            )
        events.append(dpa.SelfComposedDpEvent(event, steps))
    if not events:
        return 0.0
    if sampling == "poisson" and accountant == "pld":
        return pld_epsilon(dpa.ComposedDpEvent(events), delta)  # the grid chosen per call
    relation = (
        dpa.NeighboringRelation.REPLACE_ONE
        if sampling == "fixed"
        else dpa.NeighboringRelation.ADD_OR_REMOVE_ONE
    )
    acc = rdp_privacy_accountant.RdpAccountant(neighboring_relation=relation)
    acc.compose(dpa.ComposedDpEvent(events))
    return float(acc.get_epsilon(delta))


@dataclass(frozen=True, kw_only=True)
class DPSGDLedger(Wrapper):
    """Wrap ``inner`` to track every DP-SGD client's cumulative epsilon (module docs).

    Attributes:
        inner: the run's strategy (unchanged: sampling, training and aggregation are its own).
        noise_multiplier, delta, accountant, sampling: the DP-SGD trainer's settings.

    Examples:
        >>> ledger = DPSGDLedger(inner=FedAvg(clients_per_round=10), noise_multiplier=1.1)
    """

    inner: Strategy
    noise_multiplier: float
    delta: float = 1e-5
    accountant: Literal["pld", "rdp"] = "pld"
    sampling: Literal["poisson", "fixed"] = "poisson"

    def __post_init__(self) -> None:
        if not self.noise_multiplier > 0:
            raise ConfigError(
                f"the DP-SGD ledger needs noise_multiplier > 0, got {self.noise_multiplier}"
            )

    def init(self, vector: np.ndarray) -> StrategyState:
        empty = {
            "client": np.zeros(0, np.int64),
            "rate": np.zeros(0, np.float64),
            "steps": np.zeros(0, np.int64),
            "size": np.zeros(0, np.int64),
        }
        return {"inner": self.inner.init(vector), "dpsgd": {**empty, "max_epsilon": 0.0}}

    def configure_fit(
        self,
        rnd: int,
        vector: np.ndarray,
        state: StrategyState,
        clients: Sequence[int],
        rng: np.random.Generator,
    ) -> Any:
        return self.inner.configure_fit(rnd, vector, state["inner"], clients, rng)  # type: ignore[arg-type]

    def aggregate_fit(
        self,
        rnd: int,
        vector: np.ndarray,
        state: StrategyState,
        updates: Sequence[ClientUpdate],
    ) -> tuple[np.ndarray, StrategyState, dict[str, float]]:
        book: Any = state["dpsgd"]
        table = {
            (int(c), float(r), int(n)): int(s)
            for c, r, s, n in zip(
                book["client"], book["rate"], book["steps"], book["size"], strict=True
            )
        }
        for u in updates:
            rate = u.metrics.get(RATE_METRIC)
            if rate is None:
                continue
            key = (u.client_id, float(rate), u.num_samples)
            table[key] = table.get(key, 0) + u.num_steps
        trained = {u.client_id for u in updates if RATE_METRIC in u.metrics}
        round_max = 0.0
        for cid in sorted(trained):
            rows = tuple(sorted((r, s, n) for (c, r, n), s in table.items() if c == cid))
            eps = composed_dpsgd_epsilon(
                rows, self.noise_multiplier, self.delta, self.accountant, self.sampling
            )
            round_max = max(round_max, eps)
        overall = max(float(book["max_epsilon"]), round_max)
        keys = sorted(table)
        new_book: dict[str, Any] = {
            "client": np.array([k[0] for k in keys], np.int64),
            "rate": np.array([k[1] for k in keys], np.float64),
            "steps": np.array([table[k] for k in keys], np.int64),
            "size": np.array([k[2] for k in keys], np.int64),
            "max_epsilon": overall,
        }
        new, inner_state, metrics = self.inner.aggregate_fit(rnd, vector, state["inner"], updates)  # type: ignore[arg-type]
        metrics = {**metrics, "dpsgd_epsilon_max": overall, "dpsgd_epsilon_round_max": round_max}
        return new, {"inner": inner_state, "dpsgd": new_book}, metrics
