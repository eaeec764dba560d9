"""DP-FedAvg: clipping, noise, accounting in the metrics, the budget stop."""

import numpy as np
import pytest
from torch import nn

from fedfleet.client import FitInstructions, TorchTrainer
from fedfleet.errors import ConfigError
from fedfleet.privacy import DpAccounting, clip_by_l2, gaussian, secure_normal
from fedfleet.sim import TIMING_KEYS, Federation, Simulation
from fedfleet.strategies import AdaptiveClipping, ClientUpdate, DPFedAvg

LOCAL = FitInstructions(epochs=1, batch_size=16, lr=0.1)


def _acc(z=1.0, q=0.5, n=8):
    return DpAccounting(noise_multiplier=z, population=n, sampling_rate=q, delta=1e-5)


@pytest.mark.parametrize("source", ["seeded", "secure"])
def test_noise_standard_deviation_within_one_percent(source):
    draw = gaussian(1_000_000, 2.5, source, np.random.default_rng(0))
    assert draw.std() == pytest.approx(2.5, rel=0.01)
    assert abs(draw.mean()) < 0.01


def test_secure_normals_are_fresh_each_call():
    assert not np.array_equal(secure_normal(10), secure_normal(10))


def test_clip_by_l2():
    v = np.array([3.0, 4.0], np.float32)
    clipped, norm = clip_by_l2(v, 1.0)
    assert norm == 5.0 and np.allclose(clipped, [0.6, 0.8])
    same, _ = clip_by_l2(v, 10.0)
    assert np.array_equal(same, v)


def test_aggregate_clips_every_update_and_adds_the_stated_noise():
    strategy = DPFedAvg(accounting=_acc(z=0.5, q=0.5, n=8), clip_norm=1.0, noise_seed=3)
    w = np.zeros(4, np.float32)
    deltas = [np.array([10.0, 0, 0, 0], np.float32), np.array([0, 0.3, 0, 0], np.float32)]
    updates = [ClientUpdate(i, d, 5, 1) for i, d in enumerate(deltas)]
    new, _, metrics = strategy.aggregate_fit(1, w, strategy.init(w), updates)
    # hand computation: clipped sum [1, 0.3, 0, 0] + N(0, 0.5^2) noise, over q*N = 4
    noise = np.random.default_rng(np.random.SeedSequence(3, spawn_key=(1,))).normal(0, 0.5, 4)
    np.testing.assert_allclose(new, (np.array([1.0, 0.3, 0, 0]) + noise) / 4, rtol=1e-6)
    assert metrics["dp_noise_std"] == 0.5
    assert metrics["dp_epsilon"] == pytest.approx(_acc(z=0.5, q=0.5, n=8).epsilon(1))


def _factory():
    return nn.Linear(10, 4)


def _sim(blobs, strategy, seed=0):
    fed = Federation(blobs, [np.arange(i, 400, 20) for i in range(20)])
    return Simulation(TorchTrainer(_factory), fed, strategy, seed=seed)


def test_client_deltas_respect_the_bound_and_runs_are_reproducible(blobs):
    acc = DpAccounting(noise_multiplier=0.3, population=20, sampling_rate=0.5, delta=1e-5)
    strategy = DPFedAvg(noise_seed=0, accounting=acc, clip_norm=0.5, local=LOCAL)
    a = _sim(blobs, strategy).run(5)
    b = _sim(blobs, strategy).run(5)
    assert np.array_equal(a.vector, b.vector)
    strip = [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in a.history]
    assert strip == [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in b.history]
    eps = [h["dp_epsilon"] for h in a.history]
    assert eps == sorted(eps) and eps[-1] == pytest.approx(acc.epsilon(5))
    # Poisson sampling: cohort sizes vary around q*N = 10
    sizes = [h["num_clients"] for h in a.history]
    assert len(set(sizes)) > 1 and all(0 < s < 20 for s in sizes)
    # a client's delta leaves clipped to the broadcast bound, even after a large step
    trainer = TorchTrainer(_factory)
    w = trainer.init_vector(0)
    big = FitInstructions(epochs=3, batch_size=8, lr=1.0, config={"clip_norm": 0.5})
    res = strategy.client_fit(trainer, w, blobs.train, big, 0, None)
    assert np.linalg.norm(res.fit.vector.astype(np.float64) - w) <= 0.5 + 1e-6
    assert res.fit.metrics["dp_unclipped"] == 0.0


def test_budget_refuses_to_start_and_stops_the_run(blobs):
    acc = DpAccounting(noise_multiplier=1.0, population=20, sampling_rate=0.5, delta=1e-5)
    with pytest.raises(ConfigError, match="one round already costs"):
        DPFedAvg(noise_seed=0, accounting=acc, clip_norm=1.0, target_epsilon=0.01)
    target = acc.epsilon(3) + 1e-9
    result = _sim(
        blobs,
        DPFedAvg(noise_seed=0, accounting=acc, clip_norm=1.0, target_epsilon=target, local=LOCAL),
    ).run(10)
    assert len(result.history) == 3
    assert result.final["dp_epsilon"] <= target
    assert "test_accuracy" in result.final


def test_adaptive_clipping_moves_the_norm_towards_the_quantile(blobs):
    acc = DpAccounting(noise_multiplier=1.0, population=20, sampling_rate=0.5, delta=1e-5)
    strategy = DPFedAvg(
        noise_seed=0,
        accounting=acc,
        clip_norm=100.0,
        local=LOCAL,
        adaptive=AdaptiveClipping(target_quantile=0.5, learning_rate=0.5, count_noise=1.0),
    )
    norms = [h["dp_clip_norm"] for h in _sim(blobs, strategy).run(8).history]
    assert norms[-1] < norms[0] / 2  # every delta is far below 100: the norm shrinks
    # part of the budget went to the count: z_delta = (1 - (2*1)^-2)^-1/2 = 1/sqrt(0.75)
    assert strategy.delta_noise_multiplier == pytest.approx(1 / np.sqrt(0.75))


def test_learns_with_moderate_noise(blobs):
    acc = DpAccounting(noise_multiplier=0.1, population=20, sampling_rate=0.5, delta=1e-5)
    result = _sim(blobs, DPFedAvg(noise_seed=0, accounting=acc, clip_norm=2.0, local=LOCAL)).run(10)
    assert result.final["test_accuracy"] > 0.8


def test_a_client_cannot_move_the_adaptive_clip_norm_by_lying(blobs):
    acc = DpAccounting(noise_multiplier=1.0, population=20, sampling_rate=0.5, delta=1e-5)
    strategy = DPFedAvg(
        noise_seed=0,
        accounting=acc,
        clip_norm=1.0,
        adaptive=AdaptiveClipping(target_quantile=0.5, learning_rate=0.5, count_noise=1.0),
    )
    w = np.zeros(4, np.float32)
    big = np.array([20.0, 0, 0, 0], np.float32)  # clipped: does not count as unclipped
    honest = [ClientUpdate(i, big, 5, 1, {"dp_unclipped": 0.0}) for i in range(2)]
    lying = [ClientUpdate(i, big, 5, 1, {"dp_unclipped": -1e4}) for i in range(2)]
    _, s1, m1 = strategy.aggregate_fit(1, w, strategy.init(w), honest)
    _, s2, _ = strategy.aggregate_fit(1, w, strategy.init(w), lying)
    assert s1["clip_norm"] == s2["clip_norm"] and m1["dp_unclipped_fraction"] == 0.0


def test_budget_stop_evaluates_the_final_model_even_between_evaluations(blobs):
    acc = DpAccounting(noise_multiplier=1.0, population=20, sampling_rate=0.5, delta=1e-5)
    strategy = DPFedAvg(
        noise_seed=0,
        accounting=acc,
        clip_norm=1.0,
        local=LOCAL,
        target_epsilon=acc.epsilon(3) + 1e-9,
    )
    fed = Federation(blobs, [np.arange(i, 400, 20) for i in range(20)])
    result = Simulation(TorchTrainer(_factory), fed, strategy, seed=0, eval_every=5).run(10)
    assert len(result.history) == 3 and 0.0 <= result.final["test_accuracy"] <= 1.0


def test_seeded_noise_needs_a_seed_and_population_must_match(blobs):
    acc = DpAccounting(noise_multiplier=1.0, population=20, sampling_rate=0.5, delta=1e-5)
    with pytest.raises(ConfigError, match="noise_seed"):
        DPFedAvg(accounting=acc, clip_norm=1.0)
    DPFedAvg(accounting=acc, clip_norm=1.0, noise="secure")  # no seed needed
    wrong = DpAccounting(noise_multiplier=1.0, population=50, sampling_rate=0.5, delta=1e-5)
    with pytest.raises(ConfigError, match="population of 50 clients but 20"):
        _sim(blobs, DPFedAvg(noise_seed=0, accounting=wrong, clip_norm=1.0)).run(1)
