"""FedBuff: asynchronous buffered aggregation, the round loop's asynchronous mode (simulated on
the clock by ``FedBuffSimulation``, served over gRPC by ``FederatedServer``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedfleet.runs.algorithms._base import Algorithm, BuildContext, StrategyParams
from fedfleet.sim import ClientClock, FedBuffSimulation, Federation, polynomial_staleness
from fedfleet.strategies._fedbuff import FedBuff


class FedBuffParams(StrategyParams):
    name: Literal["fedbuff"] = "fedbuff"
    server_lr: float = Field(1.0, gt=0)
    """Server learning rate on each buffered aggregate."""
    buffer_size: int = Field(10, ge=1)
    """Updates buffered per server step (K)."""
    concurrency: int = Field(20, ge=1)
    """Clients training at any time."""
    staleness_exponent: float = Field(0.5, ge=0)
    """Updates are weighted by 1 / (1 + staleness) ** exponent."""


def _strategy(p: FedBuffParams, ctx: BuildContext) -> FedBuff:
    return FedBuff(
        local=ctx.local,
        buffer_size=p.buffer_size,
        concurrency=min(p.concurrency, ctx.num_clients),
        server_lr=p.server_lr,
        staleness_weight=polynomial_staleness(p.staleness_exponent),
    )


def _fedbuff(p: FedBuffParams, ctx: BuildContext, federation: Federation) -> FedBuffSimulation:
    s = _strategy(p, ctx)
    return FedBuffSimulation(
        ctx.trainer,
        federation,
        local=s.local,
        buffer_size=s.buffer_size,
        concurrency=s.concurrency,
        server_lr=s.server_lr,
        staleness_weight=s.staleness_weight,
        clock=ClientClock(time_per_step=ctx.clock.time_per_step, speed_sigma=ctx.clock.speed_sigma),
        seed=ctx.seed,
        eval_every=ctx.eval_every,
        max_update_norm=p.max_update_norm,
    )


ENTRIES = (
    Algorithm(
        name="fedbuff",
        params=FedBuffParams,
        summary="FedBuff (Nguyen et al. 2022): asynchronous buffered aggregation on a simulated "
        "clock",
        strategy=_strategy,
        engine=_fedbuff,
    ),
)
"""FedBuff."""
