"""Privacy accounting for client-level DP-FedAvg with Google's ``dp-accounting``.

Each round is one subsampled Gaussian mechanism: the clipped sum of the sampled clients' deltas
(each of L2 norm at most S) plus N(0, (z S)^2) noise. How clients are sampled decides the event:

- ``"poisson"``: each of the N clients takes part independently with probability q
  (``PoissonSampledDpEvent``), the setting of DP-FedAvg (McMahan et al. 2018) under add/remove
  adjacency; accounted with PLD (the default, tight) or RDP.
- ``"fixed"``: exactly K of N clients without replacement (``SampledWithoutReplacementDpEvent``),
  under replace-one adjacency, where one client's change moves the clipped sum by up to 2S (so
  the event's noise multiplier is z/2); only RDP supports it, so set ``accountant = "rdp"``.

Rounds compose as ``SelfComposedDpEvent(event, rounds)``. PLD uses a value discretisation
interval of 1e-3 by default: its rounding is pessimistic, so the reported epsilon is an upper
bound, within 0.05% of the finer 1e-4 grid on the test vectors, and about ten times faster,
which is what lets every round report its epsilon.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from fedfleet.errors import ConfigError

# dp_accounting is imported in the functions that use it: with the SciPy it pulls in, it is
# ~1 s of every process's start-up (CLI, network clients, workers) that only DP runs need
if TYPE_CHECKING:
    import dp_accounting as dpa

__all__ = ["DpAccounting", "calibrate_noise_multiplier"]

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
        pld_discretization: PLD's value discretisation interval (smaller = slower, tighter).

    Example:
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
    pld_discretization: float = 1e-3

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
        import dp_accounting as dpa
        from dp_accounting.pld import pld_privacy_accountant
        from dp_accounting.rdp import rdp_privacy_accountant

        if self.accountant == "pld":
            return pld_privacy_accountant.PLDAccountant(
                value_discretization_interval=self.pld_discretization
            )
        relation = (
            dpa.NeighboringRelation.REPLACE_ONE
            if self.sampling == "fixed"
            else dpa.NeighboringRelation.ADD_OR_REMOVE_ONE
        )
        return rdp_privacy_accountant.RdpAccountant(neighboring_relation=relation)

    def epsilon(self, rounds: int) -> float:
        """Epsilon at ``delta`` after ``rounds`` rounds (0 rounds: 0)."""
        import dp_accounting as dpa

        if rounds <= 0:
            return 0.0
        if self.noise_multiplier == 0:
            return float("inf")
        acc = self._new_accountant()
        acc.compose(dpa.SelfComposedDpEvent(self.round_event(), rounds))
        return float(acc.get_epsilon(self.delta))

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


def calibrate_noise_multiplier(
    target_epsilon: float,
    rounds: int,
    accounting: DpAccounting,
    tolerance: float = 1e-4,
) -> float:
    """The smallest noise multiplier z whose epsilon after ``rounds`` rounds is at most
    ``target_epsilon`` with ``accounting``'s sampling, delta and accountant (bisection through
    ``dp_accounting.calibrate_dp_mechanism``)."""
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
