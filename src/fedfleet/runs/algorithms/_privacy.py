"""Private aggregation: DP-FedAvg and SecAgg+; their settings are in the [privacy] section."""

from __future__ import annotations

import dataclasses
from typing import Literal

from fedfleet.privacy import DpAccounting, calibrate_noise_multiplier
from fedfleet.privacy.secagg._strategy import SecAggFedAvg
from fedfleet.runs.algorithms._base import Algorithm, BuildContext, CohortParams
from fedfleet.strategies import AdaptiveClipping, DPFedAvg, Strategy


class DPFedAvgParams(CohortParams):
    name: Literal["dpfedavg"] = "dpfedavg"


def _dpfedavg(p: DPFedAvgParams, ctx: BuildContext) -> Strategy:
    priv, n = ctx.privacy, ctx.num_clients
    k = p.clients_per_round if p.fraction is None else max(1, round(p.fraction * n))
    k = min(k or 1, n)
    accounting = DpAccounting(
        noise_multiplier=priv.noise_multiplier if priv.noise_multiplier is not None else 1.0,
        population=n,
        sampling=priv.sampling,
        sampling_rate=k / n if priv.sampling == "poisson" else None,
        cohort_size=k if priv.sampling == "fixed" else None,
        delta=priv.delta,
        accountant=priv.accountant,
    )
    if priv.noise_multiplier is None:
        assert priv.target_epsilon is not None  # needs_noise: the config validator checked
        z = calibrate_noise_multiplier(priv.target_epsilon, ctx.rounds, accounting)
        accounting = dataclasses.replace(accounting, noise_multiplier=z)
    adaptive = priv.adaptive_quantile
    return DPFedAvg(
        accounting=accounting,
        clip_norm=priv.clip_norm,
        local=ctx.local,
        adaptive=AdaptiveClipping(target_quantile=adaptive) if adaptive is not None else None,
        target_epsilon=priv.target_epsilon,
        noise=priv.noise,
        noise_seed=ctx.seed,
    )


class SecAggParams(CohortParams):
    name: Literal["secagg"] = "secagg"


def _secagg(p: SecAggParams, ctx: BuildContext) -> Strategy:
    priv, n = ctx.privacy, ctx.num_clients
    cohort = p.cohort()
    dp = None
    if priv.noise_multiplier is not None:
        q = (cohort["clients_per_round"] or round((p.fraction or 0.0) * n)) / n
        dp = DpAccounting(
            noise_multiplier=priv.noise_multiplier,
            population=n,
            sampling_rate=min(1.0, q),
            delta=priv.delta,
            accountant=priv.accountant,
        )
    return SecAggFedAvg(
        clip_norm=priv.clip_norm, local=ctx.local, dp=dp, noise=priv.noise, seed=ctx.seed, **cohort
    )


ENTRIES = (
    Algorithm(
        name="dpfedavg",
        params=DPFedAvgParams,
        summary="DP-FedAvg (McMahan et al. 2018): client-level DP, see [privacy]",
        strategy=_dpfedavg,
        needs_noise=True,
    ),
    Algorithm(
        name="secagg",
        params=SecAggParams,
        summary="SecAgg+ secure aggregation (Bonawitz et al. 2017, Bell et al. 2020); central DP "
        "on the unmasked sum with privacy.noise_multiplier",
        strategy=_secagg,
    ),
)
"""DP-FedAvg and SecAgg+, in that order."""
