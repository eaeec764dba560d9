"""FedAvg and the algorithms that change its server step, client objective or averaging: FedAvgM,
FedProx, FedOpt (FedAdam, FedYogi, FedAdagrad), SCAFFOLD, FedNova, q-FedAvg."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from pydantic import Field

from fedfleet.errors import ConfigError
from fedfleet.runs.algorithms._base import (
    Algorithm,
    BuildContext,
    CohortParams,
    ServerSgdParams,
    StragglerParams,
    WeightedParams,
    with_prox,
)
from fedfleet.strategies import (
    FedAvg,
    FedNova,
    QFedAvg,
    Scaffold,
    Strategy,
    fedadagrad,
    fedadam,
    fedyogi,
)


class FedAvgParams(WeightedParams, ServerSgdParams, StragglerParams):
    name: Literal["fedavg"] = "fedavg"


class FedAvgMParams(WeightedParams, ServerSgdParams, StragglerParams):
    name: Literal["fedavgm"] = "fedavgm"
    server_momentum: float = Field(0.9, ge=0, lt=1)
    """Server heavy-ball momentum (Hsu et al. 2019)."""


class FedProxParams(WeightedParams, ServerSgdParams, StragglerParams):
    name: Literal["fedprox"] = "fedprox"
    mu: float = Field(0.01, ge=0)
    """Proximal coefficient: clients minimise loss + mu/2 ||w - w_global||^2."""


def _fedavg(p: FedAvgParams | FedAvgMParams | FedProxParams, ctx: BuildContext) -> Strategy:
    return FedAvg(
        local=ctx.local,
        server_optimizer=p.server_optimizer(),
        stragglers=p.stragglers(),
        **p.cohort(),
    )


def _fedprox(p: FedProxParams, ctx: BuildContext) -> Strategy:
    return _fedavg(p, dataclasses.replace(ctx, local=with_prox(ctx.local, p.mu)))


class _FedOpt(WeightedParams, StragglerParams):
    server_lr: float = Field(0.03, gt=0)
    """Server learning rate of the adaptive optimizer."""
    b1: float = Field(0.9, ge=0, lt=1)
    """First-moment decay."""
    tau: float = Field(1e-3, gt=0)
    """Adaptivity constant (the optimizer's epsilon)."""


class _AdamLike(_FedOpt):
    b2: float = Field(0.99, ge=0, lt=1)
    """Second-moment decay."""


class FedAdamParams(_AdamLike):
    name: Literal["fedadam"] = "fedadam"


class FedYogiParams(_AdamLike):
    name: Literal["fedyogi"] = "fedyogi"


class FedAdagradParams(_FedOpt):
    name: Literal["fedadagrad"] = "fedadagrad"


def _fedopt_kwargs(p: _FedOpt, ctx: BuildContext) -> dict[str, Any]:
    return {
        "server_lr": p.server_lr,
        "b1": p.b1,
        "tau": p.tau,
        "local": ctx.local,
        "stragglers": p.stragglers(),
        **p.cohort(),
    }


class ScaffoldParams(CohortParams):
    name: Literal["scaffold"] = "scaffold"
    server_lr: float = Field(1.0, gt=0)
    """Global step size eta_g on the averaged model delta."""


def _scaffold(p: ScaffoldParams, ctx: BuildContext) -> Strategy:
    c = ctx.client
    if c.optimizer != "sgd" or c.momentum or c.weight_decay:
        raise ConfigError(
            "scaffold's control-variate update (option II) assumes plain SGD clients; set "
            "client.optimizer = 'sgd', client.momentum = 0 and client.weight_decay = 0"
        )
    return Scaffold(
        num_clients=ctx.num_clients, local=ctx.local, server_lr=p.server_lr, **p.cohort()
    )


class FedNovaParams(WeightedParams, ServerSgdParams, StragglerParams):
    name: Literal["fednova"] = "fednova"
    mu: float = Field(0.01, ge=0)
    """Proximal coefficient of the clients' local objective (0 = none)."""


def _fednova(p: FedNovaParams, ctx: BuildContext) -> Strategy:
    if ctx.client.optimizer != "sgd" or ctx.client.weight_decay:
        raise ConfigError(
            "fednova normalises plain SGD (with optional momentum) updates; set "
            "client.optimizer = 'sgd' and client.weight_decay = 0"
        )
    return FedNova(
        local=with_prox(ctx.local, p.mu),
        momentum=ctx.client.momentum,
        server_optimizer=p.server_optimizer(),
        stragglers=p.stragglers(),
        **p.cohort(),
    )


class QFedAvgParams(CohortParams):
    name: Literal["qfedavg"] = "qfedavg"
    q: float = Field(1.0, ge=0)
    """Fairness parameter (0 = plain averaging; larger q favours clients with a higher loss)."""


def _fedadam(p: FedAdamParams, ctx: BuildContext) -> Strategy:
    return fedadam(b2=p.b2, **_fedopt_kwargs(p, ctx))


def _fedyogi(p: FedYogiParams, ctx: BuildContext) -> Strategy:
    return fedyogi(b2=p.b2, **_fedopt_kwargs(p, ctx))


def _fedadagrad(p: FedAdagradParams, ctx: BuildContext) -> Strategy:
    return fedadagrad(**_fedopt_kwargs(p, ctx))


def _qfedavg(p: QFedAvgParams, ctx: BuildContext) -> Strategy:
    return QFedAvg(q=p.q, local=ctx.local, **p.cohort())


ENTRIES = (
    Algorithm(
        name="fedavg",
        params=FedAvgParams,
        summary="FedAvg (McMahan et al. 2017)",
        strategy=_fedavg,
        delta_only=True,
    ),
    Algorithm(
        name="fedavgm",
        params=FedAvgMParams,
        summary="FedAvg with server momentum (Hsu et al. 2019)",
        strategy=_fedavg,
        delta_only=True,
    ),
    Algorithm(
        name="fedprox",
        params=FedProxParams,
        summary="FedProx (Li et al. 2020): proximal term on the client",
        strategy=_fedprox,
        delta_only=True,
    ),
    Algorithm(
        name="fedadam",
        params=FedAdamParams,
        summary="FedOpt (Reddi et al. 2021): server Adam",
        strategy=_fedadam,
        delta_only=True,
    ),
    Algorithm(
        name="fedyogi",
        params=FedYogiParams,
        summary="FedOpt (Reddi et al. 2021): server Yogi",
        strategy=_fedyogi,
        delta_only=True,
    ),
    Algorithm(
        name="fedadagrad",
        params=FedAdagradParams,
        summary="FedOpt (Reddi et al. 2021): server Adagrad",
        strategy=_fedadagrad,
        delta_only=True,
    ),
    Algorithm(
        name="scaffold",
        params=ScaffoldParams,
        summary="SCAFFOLD (Karimireddy et al. 2020), option II control variates",
        strategy=_scaffold,
        needs_torch="its SGD settings",
    ),
    Algorithm(
        name="fednova",
        params=FedNovaParams,
        summary="FedNova (Wang et al. 2020): normalised averaging of unequal local work",
        strategy=_fednova,
        needs_torch="its SGD settings",
        delta_only=True,
    ),
    Algorithm(
        name="qfedavg",
        params=QFedAvgParams,
        summary="q-FedAvg (Li et al. 2020, q-FFL): fairness-weighted aggregation",
        strategy=_qfedavg,
    ),
)
"""FedAvg's family, in the order the README lists them."""
