"""DP-FedAvg: client-level central differential privacy (McMahan et al. 2018, "Learning
Differentially Private Recurrent Language Models"), with optional adaptive clipping (Andrew et
al. 2021, "Differentially Private Learning with Adaptive Clipping").

Each round:

1. sample clients: Poisson (each of N independently with probability q) or a fixed K of N;
2. each client trains and clips its delta to L2 norm S (the server clips again, so the bound
   holds for every update whatever a client sends);
3. the server adds N(0, (z S)^2) noise to the clipped sum and divides by the *expected* cohort
   size (qN or K) - a fixed denominator, so one client changes the sum by at most S;
4. the noisy mean delta goes through the server transform (``sgd(1.0)`` by default).

Adaptive clipping: with b_i = [||delta_i|| <= S] (computed by the server from the delta it
receives, so a client cannot shift the count by more than one), the server estimates the
unclipped fraction b = (sum b_i + N(0, sigma_b^2)) / expected cohort and sets
S <- S * exp(-eta_C (b - gamma)) towards the target quantile gamma. The delta noise then uses
z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2 so the two releases together cost what z alone would.

Accounting (:class:`fedfleet.privacy.DpAccounting`) reports epsilon at the configured delta in
every round's metrics; a run with ``target_epsilon`` refuses to start when one round would
exceed it and stops (``PrivacyBudgetExhausted``) before the round that would.

The pieces: the accountant's sampling (:class:`~fedfleet.strategies._sampling.
AccountedSampling`); on the client, training then :func:`~fedfleet.transforms._dp.clip`; on the
server :func:`~fedfleet.strategies._aggregators.clipped_sum`, then
:func:`~fedfleet.transforms._dp.gaussian_noise` on the sum (drawn from stream
``central_dp_noise(r)`` of ``noise_seed``), the division by the expected cohort and the server
transform; :func:`~fedfleet.transforms._dp.adaptive_clip` moves S (its count noise continues the
round's stream after the delta noise).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

import fedfleet._streams as _streams
from fedfleet.client import ClientState, FitInstructions, Trainer
from fedfleet.data import ArrayDataset
from fedfleet.errors import ConfigError, PrivacyBudgetExhausted
from fedfleet.privacy._accountant import DpAccounting
from fedfleet.strategies._aggregators import clipped_sum
from fedfleet.strategies._base import (
    ClientResult,
    ClientUpdate,
    EvaluateAll,
    StrategyState,
    transform_fit,
)
from fedfleet.strategies._sampling import AccountedSampling
from fedfleet.transforms._base import ServerTransform, apply_delta, sgd
from fedfleet.transforms._dp import (
    NoiseSource,
    adaptive_clip,
    clip,
    gaussian_noise,
    is_seeded,
    noise_rng,
)

__all__ = ["AdaptiveClipping", "DPFedAvg"]

UNCLIPPED = "dp_unclipped"
"""Client metric: 1.0 when the client's delta was within the clipping norm (informational; the
server recomputes it from the delta)."""

CLIP_NORM = "clip_norm"
"""``FitInstructions.config`` key carrying the round's clipping norm to the clients."""


@dataclass(frozen=True, kw_only=True)
class AdaptiveClipping:
    """Quantile-based clipping norm (Andrew et al. 2021).

    Attributes:
        target_quantile: gamma, the fraction of deltas that should fall under the norm.
        learning_rate: eta_C of the geometric update.
        count_noise: sigma_b, noise on the count of unclipped clients.
    """

    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_noise: float = 10.0


@dataclass(frozen=True, kw_only=True)
class DPFedAvg(EvaluateAll):
    """Federated averaging with client-level DP; see the module docstring.

    Attributes:
        accounting: noise multiplier z, population, sampling and the accountant.
        clip_norm: S (the initial S with adaptive clipping).
        local: instructions every sampled client gets.
        adaptive: adaptive clipping, or None for a fixed norm.
        target_epsilon: refuse to start / stop before exceeding this epsilon.
        noise: ``"seeded"`` (simulation, reproducible) or ``"secure"`` (OS CSPRNG).
        noise_seed: seed of the seeded noise (round r uses spawn key (r,)); required with
            ``noise="seeded"`` (use the run's seed) and ignored with ``"secure"``.
        server_optimizer: transform on the noisy mean pseudo-gradient.
    """

    accounting: DpAccounting
    clip_norm: float
    local: FitInstructions = field(default_factory=FitInstructions)
    adaptive: AdaptiveClipping | None = None
    target_epsilon: float | None = None
    noise: NoiseSource = "seeded"
    noise_seed: int | None = None
    server_optimizer: ServerTransform = field(default_factory=sgd)

    def __post_init__(self) -> None:
        if is_seeded(self.noise) and self.noise_seed is None:
            raise ConfigError(
                "seeded DP noise needs noise_seed (e.g. the run's seed); use noise='secure' for "
                "noise from the OS CSPRNG"
            )
        if self.clip_norm <= 0:
            raise ConfigError(f"clip_norm must be > 0, got {self.clip_norm}")
        if self.adaptive is not None and 2 * self.adaptive.count_noise <= (
            1 / self.accounting.noise_multiplier if self.accounting.noise_multiplier else math.inf
        ):
            raise ConfigError(
                "adaptive clipping needs count_noise > 1 / (2 z) so that some of the privacy "
                "budget is left for the delta; raise count_noise or the noise multiplier"
            )
        self._adaptive_clip()  # its settings are checked here, before any round
        if self.target_epsilon is not None and self.accounting.epsilon(1) > self.target_epsilon:
            raise ConfigError(
                f"one round already costs epsilon {self.accounting.epsilon(1):.3f} > target "
                f"{self.target_epsilon}; raise the noise multiplier or lower the sampling rate"
            )

    @property
    def delta_noise_multiplier(self) -> float:
        z = self.accounting.noise_multiplier
        if self.adaptive is None:
            return z
        return (z**-2 - (2 * self.adaptive.count_noise) ** -2) ** -0.5

    def _adaptive_clip(self) -> ServerTransform | None:
        """The piece that moves the clipping norm, None for a fixed one."""
        a = self.adaptive
        if a is None:
            return None
        return adaptive_clip(
            initial=self.clip_norm,
            expected_cohort=self.accounting.expected_cohort,
            target_quantile=a.target_quantile,
            learning_rate=a.learning_rate,
            count_noise=a.count_noise,
            source=self.noise,
        )

    def init(self, vector: np.ndarray) -> StrategyState:
        return {
            "server_optimizer": self.server_optimizer.init(vector),
            "clip_norm": float(self.clip_norm),
        }

    def configure_fit(
        self,
        rnd: int,
        vector: np.ndarray,
        state: StrategyState,
        clients: Sequence[int],
        rng: np.random.Generator,
    ) -> list[tuple[int, FitInstructions]]:
        if self.target_epsilon is not None and self.accounting.epsilon(rnd) > self.target_epsilon:
            raise PrivacyBudgetExhausted(
                f"round {rnd} would raise epsilon to {self.accounting.epsilon(rnd):.3f}, past "
                f"the target {self.target_epsilon} (delta {self.accounting.delta})"
            )
        chosen = AccountedSampling(self.accounting).sample(clients, rng)
        config = {**self.local.config, CLIP_NORM: float(state["clip_norm"])}  # type: ignore[arg-type]
        instructions = dataclasses.replace(self.local, config=config)
        return [(cid, instructions) for cid in chosen]

    def client_fit(
        self,
        trainer: Trainer,
        vector: np.ndarray,
        data: ArrayDataset,
        instructions: FitInstructions,
        seed: int,
        state: ClientState | None,
    ) -> ClientResult:
        """Train, then clip the delta to the broadcast ``clip_norm`` before it leaves."""
        fit = trainer.fit(vector, data, instructions, seed)
        if CLIP_NORM not in instructions.config:
            raise ConfigError(
                "DP-FedAvg client got no clip_norm in its instructions; is the server running "
                "another strategy?"
            )
        bound = float(instructions.config[CLIP_NORM])
        fit, norm = transform_fit(fit, vector, clip(bound))
        return ClientResult(
            dataclasses.replace(fit, metrics={**fit.metrics, UNCLIPPED: float(norm <= bound)})
        )

    def aggregate_fit(
        self,
        rnd: int,
        vector: np.ndarray,
        state: StrategyState,
        updates: Sequence[ClientUpdate],
    ) -> tuple[np.ndarray, StrategyState, dict[str, float]]:
        bound = float(state["clip_norm"])  # type: ignore[arg-type]
        # the server clips again (the bound holds whatever a client sent) and measures the
        # norms itself: the count of unclipped deltas never rests on a client's word
        total, norms = clipped_sum([u.delta for u in updates], bound, vector.size)
        # one stream for the round: the delta noise, then (adaptive) the count noise
        rng = noise_rng(self.noise, self.noise_seed, _streams.central_dp_noise(rnd))
        std = self.delta_noise_multiplier * bound
        total, _ = gaussian_noise(std, self.noise).update(total, {}, vector, rng)
        expected = self.accounting.expected_cohort
        new, opt_state = apply_delta(
            self.server_optimizer,
            vector,
            total / expected,
            state["server_optimizer"],  # type: ignore[arg-type]
        )
        new_state: StrategyState = {"server_optimizer": opt_state, "clip_norm": bound}
        moving = self._adaptive_clip()
        if moving is not None:  # after the delta noise: its draw continues the round's stream
            _, moved = moving.update(norms, {"clip_norm": bound}, vector, rng)
            new_state.update(moved)
        unclipped = int(np.count_nonzero(norms <= bound))
        metrics = {
            "dp_epsilon": self.accounting.epsilon(rnd),
            "dp_delta": self.accounting.delta,
            "dp_clip_norm": bound,
            "dp_noise_std": std,
            "dp_unclipped_fraction": unclipped / len(updates) if updates else 0.0,
        }
        return new, new_state, metrics
