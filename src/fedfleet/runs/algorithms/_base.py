"""What every registered algorithm is made of: the parameter bases, the build context and the
:class:`Algorithm` entry. The entries themselves are in this package's other modules."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from fedfleet.client import FitInstructions, Trainer
from fedfleet.runs._registry import Entry, Params, Registry
from fedfleet.runs._sections import ClientConfig, ClockConfig, PrivacyConfig
from fedfleet.sim import FedBuffSimulation, Federation
from fedfleet.strategies import Stragglers, Strategy
from fedfleet.strategies._fedbuff import FedBuff
from fedfleet.transforms import ServerTransform, sgd

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "BuildContext",
    "CohortParams",
    "ServerSgdParams",
    "StragglerParams",
    "StrategyParams",
    "WeightedParams",
    "with_prox",
]


class StrategyParams(Params):
    """What every ``[strategy]`` section has."""

    max_update_norm: float | None = Field(None, gt=0)
    """Refuse (and name) any client update whose delta has a larger L2 norm (None = no bound)."""


class CohortParams(StrategyParams):
    """A synchronous algorithm: each round samples a cohort of clients."""

    clients_per_round: int | None = Field(10, ge=1)
    """Clients sampled per round (K); ignored when 'fraction' is set."""
    fraction: float | None = Field(None, gt=0, le=1)
    """Fraction of clients sampled per round (C); overrides clients_per_round when set."""

    def cohort(self) -> dict[str, Any]:
        """``clients_per_round`` and ``fraction`` as a strategy takes them (one of the two)."""
        k = None if self.fraction is not None else self.clients_per_round
        return {"clients_per_round": k, "fraction": self.fraction}


class StragglerParams(CohortParams):
    """Straggling clients (as in the FedProx paper) for an algorithm that aggregates partial
    work."""

    straggler_fraction: float = Field(0.0, ge=0, le=1)
    """Share of each round's clients that can do only 1..E local epochs."""
    straggler_policy: Literal["drop", "partial"] = "partial"
    """Stragglers are left out ('drop', FedAvg's way) or send their partial work ('partial')."""

    def stragglers(self) -> Stragglers | None:
        """The straggler model, or None when nobody straggles."""
        if self.straggler_fraction == 0:
            return None
        return Stragglers(fraction=self.straggler_fraction, drop=self.straggler_policy == "drop")


class ServerSgdParams(CohortParams):
    """A server SGD step on the aggregated delta."""

    server_lr: float = Field(1.0, gt=0)
    """Server learning rate on the aggregated delta."""
    server_momentum: float = Field(0.0, ge=0, lt=1)
    """Server heavy-ball momentum (FedAvgM when > 0)."""

    def server_optimizer(self) -> ServerTransform:
        """``sgd(server_lr, server_momentum)``."""
        return sgd(self.server_lr, self.server_momentum)


class WeightedParams(CohortParams):
    """An algorithm that weights updates by ``num_samples`` (so ``Reweighted`` changes it)."""

    weighting: Literal["samples", "steps", "uniform"] = "samples"
    """Aggregation weights: by sample count (FedAvg), by local steps completed, or uniform."""


@dataclass(frozen=True, kw_only=True)
class BuildContext:
    """What a build function may read besides its own parameters."""

    local: FitInstructions
    """The [client] section as every sampled client's instructions."""
    client: ClientConfig
    privacy: PrivacyConfig
    clock: ClockConfig
    trainer: Trainer
    num_clients: int
    seed: int
    rounds: int
    eval_every: int


StrategyBuild = Callable[[Any, BuildContext], Strategy | FedBuff]
EngineBuild = Callable[[Any, BuildContext, Federation], FedBuffSimulation]


@dataclass(frozen=True, kw_only=True)
class Algorithm(Entry[Any]):
    """A registered federated algorithm: its ``strategy``, and for an asynchronous one the
    ``engine`` that simulates it.

    Attributes:
        strategy: builds the strategy from its parameters (FedBuff's for the asynchronous loop,
            which the gRPC server runs too).
        engine: builds the asynchronous simulation (FedBuff's clocked loop); None for the
            synchronous round loop.
        needs_torch: why it needs ``model.backend = 'torch'``, or None.
        delta_only: it uploads only its delta, so local DP
            (``privacy.local_noise_multiplier``) can clip and noise that.
        needs_noise: it needs ``privacy.noise_multiplier`` or ``privacy.target_epsilon``.
    """

    strategy: StrategyBuild
    engine: EngineBuild | None = None
    needs_torch: str | None = None
    delta_only: bool = False
    needs_noise: bool = False

    @property
    def asynchronous(self) -> bool:
        """Runs its own asynchronous loop: no deadlines or selection, no cohort executors,
        no resume."""
        return self.engine is not None


ALGORITHMS: Registry[Algorithm, StrategyParams] = Registry(
    kind="strategy", section="strategy", base=StrategyParams, default="fedavg"
)
"""Every algorithm the config can name, in the order the README lists them."""


def with_prox(local: FitInstructions, mu: float) -> FitInstructions:
    """``local`` with FedProx's proximal term ``mu`` (none when 0)."""
    return dataclasses.replace(local, config={**local.config, "prox_mu": mu}) if mu > 0 else local
