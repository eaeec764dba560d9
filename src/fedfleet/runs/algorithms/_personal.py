"""Personalisation: FedPer and FedRep keep a personal head on each client."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedfleet.params import Layout
from fedfleet.runs.algorithms._base import (
    Algorithm,
    BuildContext,
    ServerSgdParams,
    StragglerParams,
    WeightedParams,
)
from fedfleet.strategies import FedAvg, FedPer, FedRep, Strategy


class _PersonalParams(WeightedParams, ServerSgdParams, StragglerParams):
    head: tuple[str, ...] = ()
    """Parameter-name prefixes kept personal on each client; default the model's last layer."""

    def head_or_last(self, layout: Layout) -> tuple[str, ...]:
        if self.head:
            return self.head
        name = layout.specs[-1].name
        return (name.rsplit(".", 1)[0] + ".",) if "." in name else (name,)

    def base(self, ctx: BuildContext) -> FedAvg:
        return FedAvg(
            local=ctx.local,
            server_optimizer=self.server_optimizer(),
            stragglers=self.stragglers(),
            **self.cohort(),
        )


class FedPerParams(_PersonalParams):
    name: Literal["fedper"] = "fedper"


class FedRepParams(_PersonalParams):
    name: Literal["fedrep"] = "fedrep"
    head_epochs: int = Field(1, ge=1)
    """Local epochs on the personal head before the body epochs."""


def _fedper(p: FedPerParams, ctx: BuildContext) -> Strategy:
    layout = ctx.trainer.layout
    return FedPer(strategy=p.base(ctx), layout=layout, head=p.head_or_last(layout))


def _fedrep(p: FedRepParams, ctx: BuildContext) -> Strategy:
    layout = ctx.trainer.layout
    head = p.head_or_last(layout)
    return FedRep(strategy=p.base(ctx), layout=layout, head=head, head_epochs=p.head_epochs)


_PERSONAL = "its personal head is split from the torch model by parameter name"


ENTRIES = (
    Algorithm(
        name="fedper",
        params=FedPerParams,
        summary="FedPer (Arivazhagan et al. 2019): shared body, personal head on each client",
        strategy=_fedper,
        needs_torch=_PERSONAL,
    ),
    Algorithm(
        name="fedrep",
        params=FedRepParams,
        summary="FedRep (Collins et al. 2021): head epochs first, then the shared body",
        strategy=_fedrep,
        needs_torch=_PERSONAL,
    ),
)
"""FedPer and FedRep, in that order."""
