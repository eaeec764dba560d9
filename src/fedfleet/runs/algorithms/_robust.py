"""Byzantine-robust aggregation: median, trimmed mean and (multi-)Krum around FedAvg's rounds
(:mod:`fedfleet.strategies._robust`)."""

from __future__ import annotations

import abc
from typing import Literal

from pydantic import Field, model_validator

from fedfleet.runs.algorithms._base import Algorithm, BuildContext, ServerSgdParams, StragglerParams
from fedfleet.strategies import Strategy
from fedfleet.strategies._robust import Krum, Median, RobustFedAvg, RobustRule, TrimmedMean


class _RobustParams(ServerSgdParams, StragglerParams):
    @abc.abstractmethod
    def rule(self) -> RobustRule:
        """The robust aggregation rule these parameters describe."""


class MedianParams(_RobustParams):
    name: Literal["median"] = "median"

    def rule(self) -> RobustRule:
        return Median()


class TrimmedMeanParams(_RobustParams):
    name: Literal["trimmed-mean"] = "trimmed-mean"
    beta: float = Field(0.1, ge=0, lt=0.5)
    """Share of the largest and of the smallest values dropped per coordinate (tolerates
    floor(beta K) Byzantine clients a round)."""

    def rule(self) -> RobustRule:
        return TrimmedMean(beta=self.beta)


class KrumParams(_RobustParams):
    name: Literal["krum"] = "krum"
    byzantine: int = Field(1, ge=0)
    """f: Byzantine clients a round tolerates (needs clients_per_round >= 2f + 3)."""
    select: int = Field(1, ge=1)
    """m: the lowest-scoring updates averaged (1 = Krum, more = multi-Krum)."""

    @model_validator(mode="after")
    def _enough_clients(self) -> KrumParams:
        k, f = self.clients_per_round, self.byzantine
        if self.fraction is None and k is not None and k < 2 * f + 3:
            raise ValueError(
                f"krum with byzantine = {f} needs clients_per_round >= 2f + 3 = {2 * f + 3} "
                f"(Blanchard et al.'s n > 2f + 2), got {k}: sample more clients or lower byzantine"
            )
        if self.fraction is None and k is not None and self.select > k - f:
            raise ValueError(
                f"krum averages the select = {self.select} best of clients_per_round - byzantine "
                f"= {k - f} candidates at most: lower select"
            )
        return self

    def rule(self) -> RobustRule:
        return Krum(byzantine=self.byzantine, select=self.select)


def _robust(p: _RobustParams, ctx: BuildContext) -> Strategy:
    return RobustFedAvg(
        rule=p.rule(),
        local=ctx.local,
        server_optimizer=p.server_optimizer(),
        stragglers=p.stragglers(),
        **p.cohort(),
    )


ENTRIES = (
    Algorithm(
        name="median",
        params=MedianParams,
        summary="Byzantine-robust FedAvg: coordinate-wise median (Yin et al. 2018)",
        strategy=_robust,
        delta_only=True,
    ),
    Algorithm(
        name="trimmed-mean",
        params=TrimmedMeanParams,
        summary="Byzantine-robust FedAvg: coordinate-wise trimmed mean (Yin et al. 2018)",
        strategy=_robust,
        delta_only=True,
    ),
    Algorithm(
        name="krum",
        params=KrumParams,
        summary="Byzantine-robust FedAvg: (multi-)Krum (Blanchard et al. 2017)",
        strategy=_robust,
        delta_only=True,
    ),
)
"""Median, trimmed mean and Krum, in that order."""
