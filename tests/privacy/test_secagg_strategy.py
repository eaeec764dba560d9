"""SecAggFedAvg: the mean of clipped deltas through the protocol, dropouts, central DP, a run."""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from fedfleet.client import FitInstructions, TorchTrainer
from fedfleet.errors import ConfigError
from fedfleet.privacy import DpAccounting
from fedfleet.privacy.secagg._strategy import SecAggFedAvg
from fedfleet.sim import TIMING_KEYS, Federation, Simulation
from fedfleet.strategies import ClientUpdate

LOCAL = FitInstructions(epochs=1, batch_size=16, lr=0.1)


def _updates(n, size, seed=0, scale=0.1):
    rng = np.random.default_rng(seed)
    return [ClientUpdate(i, rng.normal(0, scale, size).astype(np.float32), 5, 1) for i in range(n)]


def test_mean_equals_plain_mean_within_quantisation_error():
    strategy = SecAggFedAvg(clip_norm=1.0, neighbours="complete")
    w = np.zeros(50, np.float32)
    ups = _updates(12, 50)
    new, _, metrics = strategy.aggregate_fit(1, w, strategy.init(w), ups)
    plain = np.mean([u.delta.astype(np.float64) for u in ups], axis=0)
    assert np.abs(new - plain).max() <= 1.0 / 2**21 + 1e-7
    assert metrics["secagg_included"] == 12 and metrics["secagg_aborted"] == 0.0
    assert metrics["secagg_bytes_per_client"] > 0


def test_dropouts_shrink_the_sum_not_the_mean():
    strategy = SecAggFedAvg(clip_norm=1.0, drop_rates={3: 0.25}, seed=4)
    w = np.zeros(20, np.float32)
    ups = [ClientUpdate(i, np.full(20, 0.5, np.float32), 5, 1) for i in range(16)]
    new, _, metrics = strategy.aggregate_fit(1, w, strategy.init(w), ups)
    assert metrics["secagg_included"] == 12
    assert np.allclose(new, 0.5, atol=1e-6)


def test_abort_keeps_the_model_and_says_so():
    strategy = SecAggFedAvg(clip_norm=1.0, neighbours="complete", drop_rates={2: 0.6})
    w = np.ones(5, np.float32)
    new, _, metrics = strategy.aggregate_fit(1, w, strategy.init(w), _updates(10, 5))
    assert metrics["secagg_aborted"] == 1.0 and metrics["aggregated"] == 0.0
    assert np.array_equal(new, w)


def test_central_dp_noise_on_the_unmasked_sum():
    acc = DpAccounting(noise_multiplier=0.5, population=100, sampling_rate=0.1, delta=1e-5)
    strategy = SecAggFedAvg(clip_norm=2.0, dp=acc, seed=1)
    size = 200_000
    w = np.zeros(size, np.float32)
    ups = [ClientUpdate(i, np.zeros(size, np.float32), 5, 1) for i in range(4)]
    new, _, metrics = strategy.aggregate_fit(3, w, strategy.init(w), ups)
    # zero deltas: what is left is N(0, (z S)^2) / (q N)
    assert np.std(new.astype(np.float64)) == pytest.approx(0.5 * 2.0 / 10, rel=0.01)
    assert metrics["dp_noise_std"] == 1.0
    assert metrics["dp_epsilon"] == pytest.approx(acc.epsilon(3))


def test_config_is_checked_early():
    with pytest.raises(ConfigError, match="clip_norm"):
        SecAggFedAvg(clip_norm=0.0)
    with pytest.raises(ConfigError, match="neighbours"):
        SecAggFedAvg(clip_norm=1.0, neighbours=-3)


def test_a_run_learns_and_is_reproducible(blobs):
    def sim():
        fed = Federation(blobs, [np.arange(i, 400, 20) for i in range(20)])
        strategy = SecAggFedAvg(
            clip_norm=5.0, clients_per_round=10, local=LOCAL, drop_rates={3: 0.1}, seed=0
        )
        return Simulation(TorchTrainer(lambda: nn.Linear(10, 4)), fed, strategy, seed=0).run(8)

    a, b = sim(), sim()
    assert np.array_equal(a.vector, b.vector)
    strip = [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in a.history]
    assert strip == [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in b.history]
    assert all(h["secagg_included"] == 9 for h in a.history)
    assert a.final["test_accuracy"] > 0.8
