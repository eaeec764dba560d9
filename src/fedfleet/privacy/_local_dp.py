"""Local differential privacy: every client clips and noises its own delta before upload.

:class:`LocalDP` wraps any strategy. Its client side runs the inner strategy's ``client_fit``,
then releases

    delta_k' = clip(delta_k, S) + N(0, (z S)^2 I),      clip(d, S) = d * min(1, S / ||d||_2)

so the server (and anyone on the wire) only ever sees a noised vector; aggregation is the inner
strategy's, unchanged. No trust in the server is needed, at the price of noise that does not
shrink with the cohort (central DP, :class:`fedfleet.strategies.DPFedAvg`, adds z S once to the
sum; here every one of K clients adds it, so the mean carries z S / sqrt(K)).

Guarantee (stated per client, per round it takes part in): one upload is the Gaussian mechanism
on the client's whole local dataset under **replace-one** adjacency - the client's data may be
replaced by anything, so two possible clipped deltas differ by up to 2S in L2 norm and the
effective noise multiplier is z / 2. (Add/remove adjacency, sensitivity S, has no meaning here:
a client always sends something.) A client taking part in r rounds composes r such mechanisms;
:func:`local_epsilon` gives epsilon at delta from ``dp-accounting``'s exact Gaussian privacy
loss (r Gaussians of multiplier m compose to one of m / sqrt(r); delta(epsilon) is bisected to
1e-9 relative), or its RDP accountant. There is no amplification by sampling: the client knows
it took part.
The inner strategy's own client-side steps (extras, client state) are not covered: wrap only
strategies whose only upload is the delta (FedAvg, FedProx, FedOpt, FedNova).

The client's release is the transform ``chain(clip(S), gaussian_noise(z S))``
(:mod:`fedfleet.transforms._dp`, :attr:`LocalDP.mechanism`) applied to its delta. Noise is seeded
in simulation: client seed s (the engine derives it from the run seed, round and client id)
feeds ``SeedSequence(s, spawn_key=(1,))``, a stream independent of the training one
(``default_rng(s)``), so runs are reproducible; ``noise="secure"`` draws from the OS CSPRNG.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np

import fedfleet._streams as _streams
from fedfleet._extras import require
from fedfleet.client import ClientState, FitInstructions, Trainer
from fedfleet.data import ArrayDataset
from fedfleet.errors import ConfigError
from fedfleet.strategies._base import (
    ClientResult,
    ClientUpdate,
    DelegatedEvaluation,
    Strategy,
    StrategyState,
    transform_fit,
)
from fedfleet.transforms import ServerTransform, chain
from fedfleet.transforms._dp import NoiseSource, clip, gaussian_noise, noise_rng

__all__ = ["LocalDP", "local_epsilon"]

Adjacency = Literal["replace_one", "add_remove"]


@lru_cache(maxsize=256)
def local_epsilon(
    noise_multiplier: float,
    rounds_participated: int,
    delta: float,
    adjacency: Adjacency = "replace_one",
    accountant: Literal["pld", "rdp"] = "pld",
) -> float:
    """Epsilon at ``delta`` of a client that sent ``rounds_participated`` local-DP uploads.

    Each upload is a Gaussian mechanism with noise z S on an L2 sensitivity of 2S
    (``"replace_one"``, the default and the meaningful one for local DP) or S (``"add_remove"``),
    i.e. noise multiplier z/2 or z; rounds compose with no sampling amplification.

    Examples:
        >>> round(local_epsilon(10.0, 1, 1e-5), 2)
        0.73
    """
    # imported here: dp_accounting and its SciPy are ~1 s of start-up only DP runs need
    require("dp_accounting", feature="DP accounting")
    import dp_accounting as dpa
    from dp_accounting.pld import privacy_loss_mechanism
    from dp_accounting.rdp import rdp_privacy_accountant

    if noise_multiplier < 0:
        raise ConfigError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    if not 0 < delta < 1:
        raise ConfigError(f"delta must be in (0, 1), got {delta}")
    if rounds_participated <= 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    z = noise_multiplier / 2 if adjacency == "replace_one" else noise_multiplier
    if accountant == "rdp":
        acc = rdp_privacy_accountant.RdpAccountant()
        acc.compose(dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(z), rounds_participated))
        return float(acc.get_epsilon(delta))
    # r Gaussians of multiplier z compose to one of z / sqrt(r) exactly; its privacy loss is
    # known in closed form, so bisect delta(epsilon) instead of discretising a PLD (whose grid
    # explodes for tiny noise)
    loss = privacy_loss_mechanism.GaussianPrivacyLoss(
        standard_deviation=z / math.sqrt(rounds_participated), sensitivity=1.0
    )
    lo, hi = 0.0, 1.0
    while loss.get_delta_for_epsilon(hi) > delta:
        lo, hi = hi, 2 * hi
    if loss.get_delta_for_epsilon(0.0) <= delta:
        return 0.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if loss.get_delta_for_epsilon(mid) <= delta else (mid, hi)
        if hi - lo <= 1e-9 * hi:
            break
    return hi


@dataclass(frozen=True, kw_only=True)
class LocalDP(DelegatedEvaluation):
    """Wrap ``strategy`` so every client clips its delta to ``clip_norm`` and adds Gaussian
    noise before upload; see the module docstring for the guarantee.

    Attributes:
        strategy: the inner strategy (sampling, local training and aggregation are its own).
        clip_norm: S, the L2 bound on a client's delta.
        noise_multiplier: z; each client adds N(0, (z S)^2) per coordinate.
        noise: ``"seeded"`` (from the client's seed; simulation) or ``"secure"`` (OS CSPRNG).
        delta: the delta the per-round ``ldp_epsilon`` metric is reported at.

    Examples:
        >>> strategy = LocalDP(strategy=FedAvg(clients_per_round=10), clip_norm=1.0,
        ...                    noise_multiplier=2.0)
    """

    strategy: Strategy
    clip_norm: float
    noise_multiplier: float
    noise: NoiseSource = "seeded"
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if not 0 < self.clip_norm < math.inf:
            raise ConfigError(f"clip_norm must be a finite number > 0, got {self.clip_norm}")
        if not 0 <= self.noise_multiplier < math.inf:
            raise ConfigError(f"noise_multiplier must be >= 0, got {self.noise_multiplier}")
        if self.noise not in ("seeded", "seeded-testing-only", "secure"):
            raise ConfigError(
                f"noise must be 'seeded', 'seeded-testing-only' or 'secure', got {self.noise!r}"
            )
        if not 0 < self.delta < 1:
            raise ConfigError(f"delta must be in (0, 1), got {self.delta}")

    @property
    def noise_std(self) -> float:
        """z S, the per-coordinate standard deviation each client adds."""
        return self.noise_multiplier * self.clip_norm

    def init(self, vector: np.ndarray) -> StrategyState:
        return self.strategy.init(vector)

    def configure_fit(
        self,
        rnd: int,
        vector: np.ndarray,
        state: StrategyState,
        clients: Sequence[int],
        rng: np.random.Generator,
    ) -> list[tuple[int, FitInstructions]]:
        return self.strategy.configure_fit(rnd, vector, state, clients, rng)

    @property
    def mechanism(self) -> ServerTransform:
        """What a client applies to its delta: ``chain(clip(S), gaussian_noise(z S))`` (just
        the clip when z = 0)."""
        if self.noise_multiplier == 0:
            return clip(self.clip_norm)
        return chain(clip(self.clip_norm), gaussian_noise(self.noise_std, self.noise))

    def privatize(self, delta: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
        """``clip(delta, S) + N(0, (z S)^2)`` in float64 and the delta's original norm, with
        the noise from client seed ``seed``'s local-DP stream."""
        rng = noise_rng(self.noise, seed, _streams.LOCAL_DP_NOISE)
        noisy, _ = self.mechanism.update(delta, self.mechanism.init(delta), delta, rng)
        return noisy, float(np.linalg.norm(np.asarray(delta, dtype=np.float64)))

    def client_fit(
        self,
        trainer: Trainer,
        vector: np.ndarray,
        data: ArrayDataset,
        instructions: FitInstructions,
        seed: int,
        state: ClientState | None,
    ) -> ClientResult:
        """The inner client side, then clip and noise the delta before it leaves the client."""
        inner = self.strategy.client_fit(trainer, vector, data, instructions, seed, state)
        rng = noise_rng(self.noise, seed, _streams.LOCAL_DP_NOISE)
        fit, norm = transform_fit(inner.fit, vector, self.mechanism, rng)
        metrics = {**fit.metrics, "ldp_unclipped": float(norm <= self.clip_norm)}
        return dataclasses.replace(inner, fit=dataclasses.replace(fit, metrics=metrics))

    def aggregate_fit(
        self,
        rnd: int,
        vector: np.ndarray,
        state: StrategyState,
        updates: Sequence[ClientUpdate],
    ) -> tuple[np.ndarray, StrategyState, dict[str, float]]:
        """The inner aggregation, plus ``ldp_noise_std`` and ``ldp_epsilon``: the epsilon of
        a client that took part in every round so far (an upper bound for every client)."""
        new, new_state, metrics = self.strategy.aggregate_fit(rnd, vector, state, updates)
        extra = {"ldp_noise_std": self.noise_std, "ldp_delta": self.delta}
        if self.noise_multiplier > 0:  # metrics must be finite: no epsilon without noise
            extra["ldp_epsilon"] = local_epsilon(self.noise_multiplier, rnd, self.delta)
        return new, new_state, {**metrics, **extra}

    def _evaluates_as(self) -> Strategy:
        return self.strategy
