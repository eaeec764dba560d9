"""The privacy transforms against hand-written NumPy: clipping, seeded Gaussian noise and its
statistics, adaptive clipping's update (Andrew et al. 2021), and how a chain passes one stream."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedfleet import _streams
from fedfleet.errors import ConfigError
from fedfleet.transforms import chain, sgd
from fedfleet.transforms._base import apply_delta
from fedfleet.transforms._dp import adaptive_clip, clip, gaussian_noise, noise_rng

W = np.zeros(5)


def _oracle_clip(x: np.ndarray, bound: float) -> np.ndarray:
    x = x.astype(np.float64)
    return x * min(1.0, bound / np.sqrt(np.sum(x * x)))


@pytest.mark.parametrize("bound", [0.5, 3.0, 7.0, 100.0])
def test_clip_scales_to_the_bound_only_when_above_it(bound):
    x = np.array([3.0, -4.0, 0.0, 2.0, 1.0], np.float32)  # ||x|| = sqrt(30) ~ 5.48
    t = clip(bound)
    out, state = t.update(x, t.init(W), W)
    assert out.dtype == np.float64 and state == {}
    np.testing.assert_allclose(out, _oracle_clip(x, bound), rtol=1e-15)
    assert np.linalg.norm(out) == pytest.approx(min(bound, math.sqrt(30.0)), rel=1e-14)
    if bound > math.sqrt(30.0):
        assert np.array_equal(out, x.astype(np.float64))  # within the bound: untouched, bit for bit


def test_clip_keeps_direction_and_zero():
    rng = np.random.default_rng(0)
    x = rng.normal(size=1000)
    out, _ = clip(1.0).update(x, {}, x)
    np.testing.assert_allclose(out / np.linalg.norm(out), x / np.linalg.norm(x), rtol=1e-12)
    zero, _ = clip(1.0).update(np.zeros(4), {}, np.zeros(4))
    assert np.array_equal(zero, np.zeros(4))


def test_seeded_noise_is_the_streams_normal_draw():
    rng = noise_rng("seeded", 11, _streams.central_dp_noise(4))
    x = np.arange(6, dtype=np.float64)
    out, state = gaussian_noise(0.3).update(x, {}, x, rng)
    want = np.random.default_rng(np.random.SeedSequence(11, spawn_key=(4,))).normal(0, 0.3, 6)
    assert np.array_equal(out, x + want) and state == {}


@pytest.mark.parametrize("source", ["seeded", "secure"])
def test_noise_statistics(source):
    # n = 10^6 draws: the sample mean has sd std/1000, the sample std relative sd 1/sqrt(2n)
    std, n = 2.5, 1_000_000
    rng = np.random.default_rng(123) if source == "seeded" else None
    out, _ = gaussian_noise(std, source).update(np.zeros(n), {}, np.zeros(n), rng)
    assert abs(out.mean()) < 5 * std / math.sqrt(n)
    assert out.std() == pytest.approx(std, rel=5 / math.sqrt(2 * n))
    # fourth moment of a normal: 3 std^4 (a uniform or Laplace would be off by far more)
    assert np.mean(out**4) / std**4 == pytest.approx(3.0, rel=0.02)
    # independent coordinates: neighbours are uncorrelated
    assert abs(np.corrcoef(out[:-1], out[1:])[0, 1]) < 5 / math.sqrt(n)


def test_seeded_noise_needs_a_generator_and_secure_noise_needs_none():
    with pytest.raises(ConfigError, match="needs a generator"):
        gaussian_noise(1.0).update(np.zeros(3), {}, np.zeros(3))
    a, _ = gaussian_noise(1.0, "secure").update(np.zeros(3), {}, np.zeros(3))
    b, _ = gaussian_noise(1.0, "secure").update(np.zeros(3), {}, np.zeros(3))
    assert not np.array_equal(a, b)
    assert noise_rng("secure", None, (1,)) is None
    with pytest.raises(ConfigError, match="needs a seed"):
        noise_rng("seeded", None, (1,))


def test_a_chain_hands_one_stream_to_its_pieces_in_order():
    t = chain(clip(1.0), gaussian_noise(0.5), gaussian_noise(2.0))
    x = np.array([30.0, 40.0, 0.0])  # clipped to [0.6, 0.8, 0]
    out, state = t.update(x, t.init(x), x, _streams.generator(5, (1,)))
    draws = _streams.generator(5, (1,))
    first, second = draws.normal(0, 0.5, 3), draws.normal(0, 2.0, 3)
    assert np.array_equal(out, (np.array([0.6, 0.8, 0.0]) + first) + second)
    assert state == {"0": {}, "1": {}, "2": {}}


def _oracle_adaptive(c, norms, expected, gamma, eta, sigma_b, rng):
    """Andrew et al. 2021, geometric update: C exp(-eta (b~ - gamma)), b~ the noisy fraction of
    norms at most C over the expected cohort."""
    b = np.sum(np.asarray(norms) <= c)
    b_noisy = (b + rng.normal(0.0, sigma_b)) / expected
    return c * np.exp(-eta * (b_noisy - gamma))


def test_adaptive_clip_update_matches_the_papers_formula():
    norms = np.array([0.2, 1.0, 1.5, 3.0, 0.9, 4.2])
    t = adaptive_clip(
        initial=1.2, expected_cohort=5.0, target_quantile=0.3, learning_rate=0.4, count_noise=2.0
    )
    state = t.init(W)
    assert state == {"clip_norm": 1.2}
    out, new = t.update(norms, state, W, _streams.generator(3, (7,)))
    assert out is norms  # passes its input through
    want = _oracle_adaptive(1.2, norms, 5.0, 0.3, 0.4, 2.0, _streams.generator(3, (7,)))
    assert new["clip_norm"] == pytest.approx(want, rel=1e-15)
    # it reads its bound from the state it is given
    _, again = t.update(norms, {"clip_norm": 2.0}, W, _streams.generator(3, (7,)))
    want = _oracle_adaptive(2.0, norms, 5.0, 0.3, 0.4, 2.0, _streams.generator(3, (7,)))
    assert again["clip_norm"] == pytest.approx(want, rel=1e-15)


def test_adaptive_clip_moves_towards_the_target_quantile():
    # noiseless (sigma_b tiny), everyone reports: C converges to the gamma-quantile of the norms
    rng = np.random.default_rng(0)
    population = rng.lognormal(0.0, 1.0, size=4000)
    gamma, k = 0.8, 200
    t = adaptive_clip(
        initial=0.01, expected_cohort=k, target_quantile=gamma, learning_rate=0.2, count_noise=1e-6
    )
    state = t.init(W)
    for _ in range(400):
        _, state = t.update(rng.choice(population, k), state, W, rng)
    assert float(state["clip_norm"]) == pytest.approx(np.quantile(population, gamma), rel=0.15)


def test_apply_delta_is_w_plus_the_step():
    w = np.array([1.0, 2.0], np.float32)
    delta = np.array([0.5, -0.25])
    new, state = apply_delta(sgd(1.0), w, delta, {})
    assert new.dtype == np.float32 and np.array_equal(new, [1.5, 1.75]) and state == {}
    new, state = apply_delta(sgd(0.5, momentum=0.9), w, delta, sgd(0.5, 0.9).init(w))
    np.testing.assert_array_equal(new, (w + 0.5 * delta).astype(np.float32))
    np.testing.assert_array_equal(state["momentum"], -delta)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: clip(-1.0), "bound must be >= 0"),
        (lambda: gaussian_noise(-0.1), "std must be"),
        (lambda: gaussian_noise(1.0, "urandom"), "source must be"),
        (lambda: adaptive_clip(initial=0.0, expected_cohort=1.0), "initial"),
        (lambda: adaptive_clip(initial=1.0, expected_cohort=0.0), "expected_cohort"),
        (lambda: adaptive_clip(initial=1.0, expected_cohort=5, target_quantile=1.5), "quantile"),
        (lambda: adaptive_clip(initial=1.0, expected_cohort=5, count_noise=-1), "count_noise"),
    ],
)
def test_bad_parameters_are_config_errors(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_a_chain_without_a_generator_still_takes_three_argument_transforms():
    class Halve:  # written before update took rng
        def init(self, vector):
            return {}

        def update(self, grad, state, vector):
            return grad / 2, state

    t = chain(Halve(), clip(1.0))
    out, _ = t.update(np.array([4.0, 0.0]), t.init(W), W)
    assert np.array_equal(out, [1.0, 0.0])
