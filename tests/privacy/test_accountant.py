"""The accountant against the issue's test vectors (delta = 1e-5, Poisson sampling)."""

import dp_accounting as dpa
import pytest
from dp_accounting.rdp import rdp_privacy_accountant

from fedfleet.errors import ConfigError
from fedfleet.privacy import DpAccounting, calibrate_noise_multiplier
from fedfleet.privacy._accountant import pld_epsilon


def _acc(q, z=1.0, kind="pld"):
    return DpAccounting(
        noise_multiplier=z, population=10_000, sampling_rate=q, delta=1e-5, accountant=kind
    )


@pytest.mark.parametrize(
    ("q", "rounds", "kind", "expected"),
    [
        (0.01, 1000, "pld", 1.8282),
        (0.01, 1000, "rdp", 2.1014),
        (0.1, 100, "pld", 7.0466),
        (0.1, 100, "rdp", 7.9039),
    ],
)
def test_epsilon_matches_the_reference_vectors(q, rounds, kind, expected):
    eps = _acc(q, kind=kind).epsilon(rounds)
    assert eps == pytest.approx(expected, rel=1e-3)
    if kind == "pld":
        assert eps >= expected - 1e-4  # the coarse PLD grid rounds pessimistically


def test_calibration_finds_the_noise_for_a_target():
    z = calibrate_noise_multiplier(2.0, 1000, _acc(0.01))
    assert z == pytest.approx(0.9591, rel=1e-3)
    assert _acc(0.01, z=z).epsilon(1000) <= 2.0 + 1e-6


def test_epsilon_grows_with_rounds_and_max_rounds_inverts_it():
    acc = _acc(0.01)
    eps = [acc.epsilon(r) for r in (0, 1, 10, 100)]
    assert eps[0] == 0.0 and eps == sorted(eps) and eps[1] > 0
    n = acc.max_rounds(1.0)
    assert acc.epsilon(n) <= 1.0 < acc.epsilon(n + 1)


def test_fixed_size_sampling_uses_rdp_with_replace_one():
    fixed = DpAccounting(
        noise_multiplier=1.0, population=1000, sampling="fixed", cohort_size=10, accountant="rdp"
    )
    assert fixed.expected_cohort == 10
    assert 0 < fixed.epsilon(100) < fixed.epsilon(200)
    # replace-one: one client moves the clipped sum by 2S against noise z*S, i.e. ratio z/2
    ref = rdp_privacy_accountant.RdpAccountant(
        neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE
    )
    ref.compose(dpa.SampledWithoutReplacementDpEvent(1000, 10, dpa.GaussianDpEvent(0.5)), 50)
    assert fixed.epsilon(50) == pytest.approx(ref.get_epsilon(1e-5), rel=1e-9)
    with pytest.raises(ConfigError, match="PLD accounting supports Poisson sampling only"):
        DpAccounting(noise_multiplier=1.0, population=1000, sampling="fixed", cohort_size=10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(sampling_rate=None), "sampling_rate"),
        (dict(sampling_rate=1.5), "sampling_rate"),
        (dict(sampling_rate=0.1, delta=0.0), "delta"),
        (dict(sampling_rate=0.1, noise_multiplier=-1.0), "noise_multiplier"),
    ],
)
def test_bad_parameters_are_refused(kwargs, message):
    base = dict(noise_multiplier=1.0, population=100)
    with pytest.raises(ConfigError, match=message):
        DpAccounting(**{**base, **kwargs})


# (q, z, steps, epsilon on a 1e-5 grid): the DP-SGD vectors, where the old fixed 1e-3
# grid said 2.3905 and 1.7259, and the DP-FedAvg vectors above
FINE_GRID = [
    (256 / 60000, 1.1, 14062, 2.38160),
    (0.001, 1.0, 100_000, 1.63718),
    (0.01, 1.0, 1000, 1.82824),
    (0.1, 1.0, 100, 7.04660),
]


@pytest.mark.parametrize(("q", "z", "steps", "fine"), FINE_GRID)
def test_adaptive_grid_is_within_1e_3_of_a_fine_grid_and_above_it(q, z, steps, fine):
    eps = DpAccounting(noise_multiplier=z, population=100_000, sampling_rate=q, delta=1e-5).epsilon(
        steps
    )
    assert eps == pytest.approx(fine, rel=1e-3)
    assert eps >= fine - 1e-5  # pessimistic: an upper bound
    event = dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z)), steps)
    assert pld_epsilon(event, 1e-5) == eps  # the same policy for DP-SGD's accountant


@pytest.mark.slow
@pytest.mark.parametrize(("q", "z", "steps", "fine"), FINE_GRID[:2])
def test_the_fine_grid_references_are_dp_accountings(q, z, steps, fine):
    event = dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z)), steps)
    assert pld_epsilon(event, 1e-5, interval=1e-5) == pytest.approx(fine, abs=1e-5)
    # and the old fixed grid was off by more than the tolerance there
    assert pld_epsilon(event, 1e-5, interval=1e-3) > fine * (1 + 3e-3)
