"""SecAggFedAvg: federated averaging in which the server learns only the sum of the clipped
deltas, through SecAgg+ (see :mod:`fedfleet.privacy.secagg`), optionally with central DP.

Each round:

1. sample clients (uniformly, K or C*N of them; with ``dp``, by its Poisson or fixed-size
   sampling, as DP-FedAvg does);
2. each client trains and clips its delta to L2 norm S; its SecAgg client quantises it with
   clip range S (a clipped delta has every coordinate in [-S, S], so quantising clips nothing
   more) and sends it masked;
3. the server runs the protocol and gets sum_{k in U3} q(delta_k) * S / R, where U3 are the
   clients that sent a masked input (simulated dropouts can shrink it);
4. without DP the mean delta is that sum / |U3|; with ``dp`` the server adds N(0, (z S)^2) to
   the unmasked sum and divides by the expected cohort size (the DP-FedAvg estimator), so the
   released model carries a client-level (epsilon, delta) guarantee reported in every round;
5. the mean delta goes through the server transform.

The average is unweighted: weighting by n_k would need each client to upload n_k delta_k and
n_k, both masked (Flower's SecAgg workflows do this), and reveals the total sample count.

Who learns what: the server sees masked vectors and the unmasked sum, never one client's delta;
with DP the model it publishes is (epsilon, delta)-DP. The server cannot re-clip what it cannot
see, so the DP guarantee assumes clients run the clipping code (quantisation bounds each
coordinate by S regardless, so a cheating client moves the sum by at most S sqrt(L)).

In simulation the protocol runs inside ``aggregate_fit`` on the deltas the engine hands it; over
the network transport the same :class:`SecAggClient` / :class:`SecAggServer` run on each side.

The pieces: :class:`~fedfleet.strategies._sampling.Sampling` (or, with ``dp``, the accountant's
:class:`~fedfleet.strategies._sampling.AccountedSampling`); on the client training then
:func:`~fedfleet.transforms._dp.clip`; the secure sum as the aggregator; with ``dp``,
:func:`~fedfleet.transforms._dp.gaussian_noise` on the sum (stream ``secagg_dp_noise(r)`` of
``seed``); the server transform.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

import fedfleet._streams as _streams
from fedfleet.client import ClientState, FitInstructions, Trainer
from fedfleet.data import ArrayDataset
from fedfleet.errors import ConfigError
from fedfleet.privacy._accountant import DpAccounting
from fedfleet.privacy.secagg._config import SecAggConfig
from fedfleet.privacy.secagg._errors import SecAggAborted
from fedfleet.privacy.secagg._simulate import draw_dropouts, run_secagg
from fedfleet.strategies._base import (
    ClientResult,
    ClientUpdate,
    EvaluateAll,
    StrategyState,
    transform_fit,
)
from fedfleet.strategies._sampling import AccountedSampling, Sampler, Sampling
from fedfleet.transforms._base import ServerTransform, apply_delta, sgd
from fedfleet.transforms._dp import NoiseSource, clip, gaussian_noise, noise_rng

__all__ = ["SecAggFedAvg"]


@dataclass(frozen=True, kw_only=True)
class SecAggFedAvg(Sampling, EvaluateAll):
    """Federated averaging over secure aggregation; see the module docstring.

    Attributes:
        clip_norm: S, the L2 bound every client clips its delta to (and the quantiser's range).
        clients_per_round, fraction: K or C, as in :class:`~fedfleet.strategies._sampling.
            Sampling`; ignored when ``dp`` decides the sampling.
        local: the instructions every sampled client gets.
        quant_range: R, the quantisation levels per sign (error <= S / (2R) per coordinate).
        neighbours: SecAgg+ degree k; None: O(log n) default; ``"complete"``: plain SecAgg.
        threshold: t (int, fraction of k + 1, or None for a strict majority).
        drop_rates: simulated dropouts, stage (1-4) -> share of the cohort that drops there.
        dp: client-level central DP (noise multiplier, population, sampling, delta); None: none.
        noise: ``"seeded"`` (simulation) or ``"secure"`` (OS CSPRNG) DP noise.
        seed: seeds the neighbour graph, the simulated dropouts (spawn key (round, 5)) and
            seeded DP noise (spawn key (round, 1)); use the run's seed.
        server_optimizer: transform applied to the pseudo-gradient ``-mean_delta``.

    Examples:
        >>> strategy = SecAggFedAvg(clip_norm=1.0, clients_per_round=100, seed=0,
        ...                         drop_rates={3: 0.1})
    """

    clip_norm: float
    local: FitInstructions = field(default_factory=FitInstructions)
    quant_range: int = 2**20
    neighbours: int | str | None = None
    threshold: int | float | None = None
    drop_rates: Mapping[int, float] = field(default_factory=dict)
    dp: DpAccounting | None = None
    noise: NoiseSource = "seeded"
    seed: int = 0
    server_optimizer: ServerTransform = field(default_factory=sgd)

    def __post_init__(self) -> None:
        if not self.clip_norm > 0:
            raise ConfigError(f"clip_norm must be > 0, got {self.clip_norm}")
        super().__post_init__()
        SecAggConfig(  # validates the protocol parameters early
            vector_length=1,
            clip_range=self.clip_norm,
            quant_range=self.quant_range,
            neighbours=self.neighbours,
            threshold=self.threshold,
        )

    def init(self, vector: np.ndarray) -> StrategyState:
        return {"server_optimizer": self.server_optimizer.init(vector)}

    def configure_fit(
        self,
        rnd: int,
        vector: np.ndarray,
        state: StrategyState,
        clients: Sequence[int],
        rng: np.random.Generator,
    ) -> list[tuple[int, FitInstructions]]:
        # with dp, the sampling its accountant assumes; else uniform, this strategy's own
        sampler: Sampler = self if self.dp is None else AccountedSampling(self.dp)
        return [(cid, self.local) for cid in sampler.sample(clients, rng)]

    def client_fit(
        self,
        trainer: Trainer,
        vector: np.ndarray,
        data: ArrayDataset,
        instructions: FitInstructions,
        seed: int,
        state: ClientState | None,
    ) -> ClientResult:
        """Train, then clip the delta to ``clip_norm`` before it is quantised and masked."""
        fit = trainer.fit(vector, data, instructions, seed)
        return ClientResult(transform_fit(fit, vector, clip(self.clip_norm))[0])

    def aggregate_fit(
        self,
        rnd: int,
        vector: np.ndarray,
        state: StrategyState,
        updates: Sequence[ClientUpdate],
    ) -> tuple[np.ndarray, StrategyState, dict[str, float]]:
        metrics: dict[str, float] = {"secagg_aborted": 0.0}
        total: np.ndarray | None = None
        included = 0
        if len(updates) >= 2:
            ids = [u.client_id for u in updates]
            config, rng = self.round_setup(rnd, vector.size)
            drops = draw_dropouts(ids, self.drop_rates, rng) if self.drop_rates else None
            try:
                run = run_secagg(
                    [u.delta for u in updates], config, rng=rng, client_ids=ids, dropouts=drops
                )
                total, included = run.result.total, len(run.result.included)
                metrics["secagg_bytes_per_client"] = float(np.mean(list(run.sent_bytes.values())))
            except SecAggAborted:
                metrics["secagg_aborted"] = 1.0
        return self.aggregate_sum(rnd, vector, state, total, included, metrics)

    def round_setup(self, rnd: int, size: int) -> tuple[SecAggConfig, np.random.Generator]:
        """Round ``rnd``'s protocol configuration and the generator its neighbour graph is drawn
        from: the simulation and the network transport both take them from here, which is what
        makes their sums (and so their models) bit-identical."""
        config = SecAggConfig(
            vector_length=size,
            clip_range=self.clip_norm,
            quant_range=self.quant_range,
            neighbours=self.neighbours,
            threshold=self.threshold,
            round_id=rnd,
        )
        return config, _streams.generator(self.seed, _streams.secagg_round(rnd))

    def aggregate_sum(
        self,
        rnd: int,
        vector: np.ndarray,
        state: StrategyState,
        total: np.ndarray | None,
        included: int,
        metrics: Mapping[str, float] = MappingProxyType({}),
    ) -> tuple[np.ndarray, StrategyState, dict[str, float]]:
        """The server's step after the protocol: ``total`` is the unmasked sum of ``included``
        clients' clipped deltas (None: the protocol aborted or had under 2 clients). Adds the
        central DP noise if configured, averages, applies the server transform. The network
        transport (:mod:`fedfleet.net.secure`) calls this with the sum it unmasked."""
        metrics = {"secagg_aborted": 0.0, **metrics, "secagg_included": float(included)}
        if self.dp is None:
            if total is None or included == 0:  # nothing securely summed: keep the model
                return vector, state, {**metrics, "aggregated": 0.0}
            mean = total / included
        else:  # the central Gaussian mechanism on the sum, over the expected cohort
            rng = noise_rng(self.noise, self.seed, _streams.secagg_dp_noise(rnd))
            std = self.dp.noise_multiplier * self.clip_norm
            summed = np.zeros(vector.size) if total is None else total
            noisy, _ = gaussian_noise(std, self.noise).update(summed, {}, vector, rng)
            mean = noisy / self.dp.expected_cohort
            metrics.update(
                dp_epsilon=self.dp.epsilon(rnd), dp_delta=self.dp.delta, dp_noise_std=std
            )
        new, opt_state = apply_delta(
            self.server_optimizer,
            vector,
            mean,
            state["server_optimizer"],  # type: ignore[arg-type]
        )
        return new, {"server_optimizer": opt_state}, {**metrics, "aggregated": float(included)}
