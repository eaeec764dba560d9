"""Aggregators against hand-written NumPy: the weighted mean, FedNova's normalised mean, q-FFL's
update and DP's clipped sum."""

from __future__ import annotations

import numpy as np
import pytest

from fedfleet.strategies._aggregators import clipped_sum, normalized_mean, qffl_mean, weighted_mean

RNG = np.random.default_rng(42)
DELTAS = [RNG.normal(0, 1, 30).astype(np.float32) for _ in range(5)]
N = np.array([10.0, 3.0, 25.0, 7.0, 1.0])


def test_weighted_mean_is_the_normalised_sum():
    want = sum(n * d.astype(np.float64) for n, d in zip(N, DELTAS, strict=True)) / N.sum()
    got = weighted_mean(DELTAS, N)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # rows of one matrix or separate arrays: the same bits
    stacked = np.stack(DELTAS)
    assert np.array_equal(weighted_mean(list(stacked), N), got)


def test_normalized_mean_follows_fednova():
    a = np.array([4.0, 1.0, 2.5, 8.0, 3.0])  # the clients' a_i (tau_i for plain SGD)
    p = N / N.sum()
    tau_eff = float(np.sum(p * a))
    want = tau_eff * sum(
        pi * d.astype(np.float64) / ai for pi, ai, d in zip(p, a, DELTAS, strict=True)
    )
    got, got_tau = normalized_mean(DELTAS, N, a)
    assert got_tau == pytest.approx(tau_eff, rel=1e-15)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # equal a_i: FedAvg's weighted mean
    same, tau = normalized_mean(DELTAS, N, [3.0] * 5)
    assert tau == 3.0
    np.testing.assert_allclose(same, weighted_mean(DELTAS, N), rtol=1e-12)


@pytest.mark.parametrize("q", [0.0, 0.5, 1.0, 5.0])
def test_qffl_mean_follows_the_paper(q):
    losses = np.array([0.3, 2.0, 1.1, 0.05, 4.0])
    lip = 10.0
    # Li et al. 2020, Algorithm 2, written out without the overflow guard
    dw = [-lip * d.astype(np.float64) for d in DELTAS]
    big_delta = sum(f**q * g for f, g in zip(losses, dw, strict=True))
    h = sum(q * f ** (q - 1) * np.dot(g, g) + lip * f**q for f, g in zip(losses, dw, strict=True))
    np.testing.assert_allclose(qffl_mean(DELTAS, losses, q, lip), -big_delta / h, rtol=1e-10)


def test_qffl_mean_with_q_zero_is_the_unweighted_mean():
    got = qffl_mean(DELTAS, np.ones(5), 0.0, 7.0)
    np.testing.assert_allclose(got, weighted_mean(DELTAS, np.ones(5)), rtol=1e-12)


def test_qffl_mean_survives_a_large_q():
    got = qffl_mean(DELTAS, np.array([50.0, 60.0, 70.0, 80.0, 90.0]), 200.0, 1.0)
    assert np.isfinite(got).all()


def test_clipped_sum_clips_each_delta_then_sums():
    bound = 4.0
    norms = [float(np.linalg.norm(d.astype(np.float64))) for d in DELTAS]
    want = sum(
        d.astype(np.float64) * min(1.0, bound / n) for d, n in zip(DELTAS, norms, strict=True)
    )
    total, got_norms = clipped_sum(DELTAS, bound, 30)
    np.testing.assert_allclose(total, want, rtol=1e-12)
    np.testing.assert_allclose(got_norms, norms, rtol=1e-15)
    empty, none = clipped_sum([], bound, 30)
    assert np.array_equal(empty, np.zeros(30)) and none.shape == (0,)
