"""Privacy accounting for client-level DP-FedAvg with Google's ``dp-accounting``.

Each round is one subsampled Gaussian mechanism: the clipped sum of the sampled clients' deltas
(each of L2 norm at most S) plus N(0, (z S)^2) noise. How clients are sampled decides the event:

- ``"poisson"``: each of the N clients takes part independently with probability q
  (``PoissonSampledDpEvent``), the setting of DP-FedAvg (McMahan et al. 2018) under add/remove
  adjacency; accounted with PLD (the default, tight) or RDP.
- ``"fixed"``: exactly K of N clients without replacement (``SampledWithoutReplacementDpEvent``),
  under replace-one adjacency, where one client's change moves the clipped sum by up to 2S (so
  the event's noise multiplier is z/2); only RDP supports it, so set ``accountant = "rdp"``.

Rounds compose as ``SelfComposedDpEvent(event, rounds)``. PLD's rounding onto its grid of
privacy-loss values is pessimistic, so every epsilon it reports is an upper bound; how far above
the truth depends on the grid and on the number of compositions: on a fixed 1e-3 grid it is
0.04% at q = 0.01 for 1000 rounds but 0.4% at q = 256/60000 for 14,062 steps and 5.4% at
q = 0.001 for 100,000 steps. :func:`pld_epsilon` picks the grid per call: the overstatement
behaves as ``c h^2`` for an interval h, so epsilons on the 2e-3 and 1e-3 grids estimate it
(``e(2h) - e(h) ~ 3 c h^2``); when 1e-3 is not within ``PLD_REL_TOL`` (2.5e-4 relative) it
recomputes on the interval that is (never finer than ``PLD_FINEST``). Where 1e-3 already suffices
it returns exactly the 1e-3 epsilon, at 1.5 times its cost; ``bench/accountant_precision.py``
times it against a 1e-5 reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

from fedfleet._extras import require
from fedfleet.errors import ConfigError

# dp_accounting is imported in the functions that use it: with the SciPy it pulls in, it is
# ~1 s of every process's start-up (CLI, network clients, workers) that only DP runs need
if TYPE_CHECKING:
    require("dp_accounting", feature="DP accounting")
    import dp_accounting as dpa

__all__ = [
    "PLD_COARSE",
    "PLD_FINEST",
    "PLD_REL_TOL",
    "DpAccounting",
    "calibrate_noise_multiplier",
    "pld_epsilon",
]

PLD_COARSE = 1e-3
"""The PLD grid interval every adaptive call starts from (and calibration uses)."""
PLD_FINEST = 2e-5
"""The finest interval :func:`pld_epsilon` refines to (about 3 s a call on one core)."""
PLD_REL_TOL = 2.5e-4
"""The overstatement of epsilon :func:`pld_epsilon` aims for, relative (4x inside 1e-3)."""

Sampling = Literal["poisson", "fixed"]
AccountantKind = Literal["pld", "rdp"]


@dataclass(frozen=True, kw_only=True)
class DpAccounting:
    """The privacy parameters of a DP-FedAvg run and the epsilon they give.

    Attributes:
        noise_multiplier: z, noise standard deviation over the clipping norm.
        population: N, the number of clients.
        sampling: ``"poisson"`` (rate ``sampling_rate``) or ``"fixed"`` (``cohort_size`` a round).
        sampling_rate: q for Poisson sampling.
        cohort_size: K for fixed-size sampling.
        delta: the target delta epsilon is reported at.
        accountant: ``"pld"`` (default; Poisson only) or ``"rdp"``.
        pld_discretization: PLD's value discretisation interval (smaller = slower, tighter);
            None (default) chooses it per call (:func:`pld_epsilon`).

    Examples:
        >>> acc = DpAccounting(noise_multiplier=1.0, population=1000, sampling_rate=0.01,
        ...                    delta=1e-5)
        >>> round(acc.epsilon(1000), 2)
        1.83
    """

    noise_multiplier: float
    population: int
    sampling: Sampling = "poisson"
    sampling_rate: float | None = None
    cohort_size: int | None = None
    delta: float = 1e-5
    accountant: AccountantKind = "pld"
    pld_discretization: float | None = None

    def __post_init__(self) -> None:
        if self.noise_multiplier < 0:
            raise ConfigError(f"noise_multiplier must be >= 0, got {self.noise_multiplier}")
        if not 0 < self.delta < 1:
            raise ConfigError(f"delta must be in (0, 1), got {self.delta}")
        if self.sampling == "poisson":
            if self.sampling_rate is None or not 0 < self.sampling_rate <= 1:
                raise ConfigError(
                    f"poisson sampling needs sampling_rate in (0, 1], got {self.sampling_rate}"
                )
        elif self.sampling == "fixed":
            if self.cohort_size is None or not 1 <= self.cohort_size <= self.population:
                raise ConfigError(
                    f"fixed-size sampling needs cohort_size in 1..{self.population}, "
                    f"got {self.cohort_size}"
                )
            if self.accountant == "pld":
                raise ConfigError(
                    "PLD accounting supports Poisson sampling only; use accountant = 'rdp' "
                    "with fixed-size sampling, or sampling = 'poisson'"
                )
        else:
            raise ConfigError(f"sampling must be 'poisson' or 'fixed', got {self.sampling!r}")

    @property
    def expected_cohort(self) -> float:
        """The expected number of clients a round (the DP-FedAvg denominator)."""
        if self.sampling == "poisson":
            assert self.sampling_rate is not None
            return self.sampling_rate * self.population
        assert self.cohort_size is not None
        return float(self.cohort_size)

    def round_event(self, noise_multiplier: float | None = None) -> dpa.DpEvent:
        """The DP event of one round."""
        require("dp_accounting", feature="DP accounting")
        import dp_accounting as dpa

        z = self.noise_multiplier if noise_multiplier is None else noise_multiplier
        if self.sampling == "poisson":
            return dpa.PoissonSampledDpEvent(self.sampling_rate, dpa.GaussianDpEvent(z))
        # Replace-one neighbours: swapping one client moves the clipped sum by up to 2S while
        # the noise is z*S, so the mechanism's noise-to-sensitivity ratio is z / 2.
        return dpa.SampledWithoutReplacementDpEvent(
            self.population, self.cohort_size, dpa.GaussianDpEvent(z / 2)
        )

    def _new_accountant(self) -> dpa.PrivacyAccountant:
        require("dp_accounting", feature="DP accounting")
        import dp_accounting as dpa
        from dp_accounting.pld import pld_privacy_accountant
        from dp_accounting.rdp import rdp_privacy_accountant

        if self.accountant == "pld":
            return pld_privacy_accountant.PLDAccountant(
                value_discretization_interval=self.pld_discretization or PLD_COARSE
            )
        relation = (
            dpa.NeighboringRelation.REPLACE_ONE
            if self.sampling == "fixed"
            else dpa.NeighboringRelation.ADD_OR_REMOVE_ONE
        )
        return rdp_privacy_accountant.RdpAccountant(neighboring_relation=relation)

    def epsilon(self, rounds: int) -> float:
        """Epsilon at ``delta`` after ``rounds`` rounds (0 rounds: 0); cached, as a run asks
        for the same round's epsilon more than once."""
        return _epsilon(self, rounds)

    def max_rounds(self, target_epsilon: float, upper: int = 100_000) -> int:
        """The most rounds whose epsilon stays at or below ``target_epsilon`` (bisection)."""
        if self.epsilon(1) > target_epsilon:
            return 0
        lo, hi = 1, upper
        if self.epsilon(hi) <= target_epsilon:
            return hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self.epsilon(mid) <= target_epsilon else (lo, mid)
        return lo


@lru_cache(maxsize=1024)
def _epsilon(acc: DpAccounting, rounds: int) -> float:
    require("dp_accounting", feature="DP accounting")
    import dp_accounting as dpa

    if rounds <= 0:
        return 0.0
    if acc.noise_multiplier == 0:
        return float("inf")
    event = dpa.SelfComposedDpEvent(acc.round_event(), rounds)
    if acc.accountant == "pld":
        return pld_epsilon(event, acc.delta, acc.pld_discretization)
    rdp = acc._new_accountant()
    rdp.compose(event)
    return float(rdp.get_epsilon(acc.delta))


def _pld_at(event: dpa.DpEvent, delta: float, interval: float) -> float:
    from dp_accounting.pld import pld_privacy_accountant

    acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=interval)
    acc.compose(event)
    return float(acc.get_epsilon(delta))


def pld_epsilon(event: dpa.DpEvent, delta: float, interval: float | None = None) -> float:
    """Epsilon at ``delta`` of ``event`` under PLD accounting (add/remove adjacency), on the
    grid ``interval``, or, with None, on a grid chosen so that the pessimistic rounding
    overstates epsilon by about ``PLD_REL_TOL`` relative at most (module docs).

    The overstatement on a grid of interval h is close to ``c h^2`` (measured against a 1e-5
    grid: the estimate below is within 10% of the true 1e-3 error on the issue's vectors), so
    ``err(1e-3) ~ (e(2e-3) - e(1e-3)) / 3`` and the interval that meets the tolerance is
    ``1e-3 * sqrt(tolerance / err(1e-3))``. Epsilons below 0.1 are held to ``PLD_REL_TOL * 0.1``
    absolute. Both grids are upper bounds, so the smaller of the two is returned.

    Examples:
        >>> import dp_accounting as dpa
        >>> step = dpa.PoissonSampledDpEvent(0.001, dpa.GaussianDpEvent(1.0))
        >>> round(pld_epsilon(dpa.SelfComposedDpEvent(step, 100_000), 1e-5), 3)  # 1e-3: 1.726
        1.638
    """
    if interval is not None:
        return _pld_at(event, delta, interval)
    eps = _pld_at(event, delta, PLD_COARSE)
    if not math.isfinite(eps):
        return eps
    err = max(_pld_at(event, delta, 2 * PLD_COARSE) - eps, 0.0) / 3
    allowed = PLD_REL_TOL * max(eps, 0.1)
    if err <= allowed:
        return eps
    fine = max(PLD_FINEST, PLD_COARSE * math.sqrt(allowed / err))
    return min(eps, _pld_at(event, delta, fine))


def calibrate_noise_multiplier(
    target_epsilon: float,
    rounds: int,
    accounting: DpAccounting,
    tolerance: float = 1e-4,
) -> float:
    """The smallest noise multiplier z whose epsilon after ``rounds`` rounds is at most
    ``target_epsilon`` with ``accounting``'s sampling, delta and accountant (bisection through
    ``dp_accounting.calibrate_dp_mechanism``). PLD bisects on the ``PLD_COARSE`` grid (or
    ``accounting.pld_discretization``): its epsilons are upper bounds, so z errs on the safe
    side, by the grid's overstatement at most."""
    require("dp_accounting", feature="DP accounting")
    import dp_accounting as dpa

    if target_epsilon <= 0:
        raise ConfigError(f"target_epsilon must be > 0, got {target_epsilon}")

    def make_event(z: float) -> dpa.DpEvent:
        event = accounting.round_event(z)
        return dpa.SelfComposedDpEvent(event, rounds)

    def make_accountant() -> dpa.PrivacyAccountant:
        return accounting._new_accountant()

    return float(
        dpa.calibrate_dp_mechanism(
            make_accountant,
            make_event,
            target_epsilon,
            accounting.delta,
            tol=tolerance,
        )
    )
