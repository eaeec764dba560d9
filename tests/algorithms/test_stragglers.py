"""Stragglers (FedProx's systems heterogeneity): how many, how few epochs, drop vs keep,
determinism, and FedAvg applying them."""

from collections import Counter

import numpy as np
import pytest

from fedfleet.client import FitInstructions, NumpyLogisticRegression
from fedfleet.errors import ConfigError
from fedfleet.sim import TIMING_KEYS, Federation, Simulation, client_seed
from fedfleet.strategies import FedAvg, Stragglers, weighted_mean

LOCAL = FitInstructions(epochs=5, batch_size=16, lr=0.1)


def _plan(k, local=LOCAL):
    return [(cid, local) for cid in range(100, 100 + k)]


def _strip(history):
    return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in history]


def _sampling_rng(seed, rnd):
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(rnd, 0)))


def test_count_is_the_fraction_of_the_cohort_rounded_half_up():
    assert Stragglers(fraction=0.9, drop=True).count(10) == 9
    assert Stragglers(fraction=0.5, drop=True).count(5) == 3
    assert Stragglers(fraction=0.25, drop=True).count(2) == 1
    assert Stragglers(fraction=0.0, drop=True).count(10) == 0
    assert Stragglers(fraction=1.0, drop=False).count(7) == 7
    for bad in (-0.1, 1.5):
        with pytest.raises(ConfigError, match="stragglers fraction must be in"):
            Stragglers(fraction=bad, drop=True)


def test_kept_stragglers_run_1_to_e_epochs_uniformly_and_the_rest_run_e():
    lag = Stragglers(fraction=0.5, drop=False)
    rng = np.random.default_rng(0)
    epochs, straggled = Counter(), Counter()
    for _ in range(2000):
        draw = lag.draw(_plan(20), rng)
        assert [cid for cid, _ in draw.plan] == list(range(100, 120)) and draw.dropped == ()
        assert len(draw.stragglers) == 10
        for cid, instr in draw.plan:
            if cid in draw.stragglers:
                epochs[instr.epochs] += 1
                straggled[cid] += 1
                assert (instr.batch_size, instr.lr) == (LOCAL.batch_size, LOCAL.lr)
            else:
                assert instr is LOCAL
    # 20,000 straggler draws over x in 1..5: 4000 each, sd ~ 57
    assert sorted(epochs) == [1, 2, 3, 4, 5]
    assert all(abs(n - 4000) < 300 for n in epochs.values())
    # every client straggles with probability 1/2: 1000 of 2000 rounds, sd ~ 22
    assert all(abs(straggled[cid] - 1000) < 120 for cid in range(100, 120))


def test_dropped_stragglers_are_left_out_of_the_plan():
    lag = Stragglers(fraction=0.9, drop=True)
    draw = lag.draw(_plan(10), np.random.default_rng(3))
    assert len(draw.stragglers) == 9 and draw.dropped == draw.stragglers
    kept = [cid for cid, _ in draw.plan]
    assert len(kept) == 1 and kept[0] not in draw.stragglers
    assert sorted(kept + list(draw.dropped)) == list(range(100, 110))
    assert all(instr is LOCAL for _, instr in draw.plan)  # whoever is kept does full work


def test_one_epoch_stragglers_keep_their_epoch_and_draws_are_deterministic():
    lag = Stragglers(fraction=0.5, drop=False)
    one = FitInstructions(epochs=1)
    assert all(i.epochs == 1 for _, i in lag.apply(_plan(6, one), np.random.default_rng(0)))
    a = lag.draw(_plan(10), np.random.default_rng(7))
    b = lag.draw(_plan(10), np.random.default_rng(7))
    c = lag.draw(_plan(10), np.random.default_rng(8))
    assert a == b and a != c


def test_fedavg_draws_stragglers_after_sampling_the_same_cohort():
    w = np.zeros(1, np.float32)
    clients = list(range(50))
    plain = FedAvg(clients_per_round=10, local=LOCAL)
    keep = FedAvg(
        clients_per_round=10, local=LOCAL, stragglers=Stragglers(fraction=0.5, drop=False)
    )
    drop = FedAvg(clients_per_round=10, local=LOCAL, stragglers=Stragglers(fraction=0.5, drop=True))
    base = [cid for cid, _ in plain.configure_fit(1, w, {}, clients, np.random.default_rng(4))]
    kept = keep.configure_fit(1, w, {}, clients, np.random.default_rng(4))
    assert [cid for cid, _ in kept] == base
    assert sum(instr.epochs < LOCAL.epochs for _, instr in kept) >= 1
    dropped = drop.configure_fit(1, w, {}, clients, np.random.default_rng(4))
    assert len(dropped) == 5 and {cid for cid, _ in dropped} < set(base)
    # the plan carries the counts that only planning knows (dropped clients never report)
    assert dropped.metrics == {"stragglers": 5.0, "stragglers_dropped": 5.0}
    assert kept.metrics == {"stragglers": 5.0, "stragglers_dropped": 0.0}
    assert isinstance(kept, list) and not hasattr(
        plain.configure_fit(1, w, {}, clients, np.random.default_rng(4)), "metrics"
    )


def test_simulation_drops_or_keeps_stragglers_and_aggregates_partial_work(blobs):
    parts = [np.arange(i, len(blobs.train), 10) for i in range(10)]
    fed = Federation(blobs, parts)
    trainer = NumpyLogisticRegression((10,), 4)

    def run(drop, rounds=3, seed=1):
        strategy = FedAvg(
            clients_per_round=5, local=LOCAL, stragglers=Stragglers(fraction=0.6, drop=drop)
        )
        return Simulation(trainer, fed, strategy, seed=seed).run(rounds)

    dropped, kept = run(True), run(False)
    assert [h["num_clients"] for h in dropped.history] == [2, 2, 2]
    assert [h["num_clients"] for h in kept.history] == [5, 5, 5]
    again = run(True)
    assert np.array_equal(dropped.vector, again.vector)
    assert _strip(dropped.history) == _strip(again.history)

    # round 1 with partial work kept, by hand: the stragglers' few epochs are averaged in
    one = run(False, rounds=1)
    strategy = FedAvg(
        clients_per_round=5, local=LOCAL, stragglers=Stragglers(fraction=0.6, drop=False)
    )
    w0 = trainer.init_vector(1)
    plan = strategy.configure_fit(1, w0, {}, fed.client_ids, _sampling_rng(1, 1))
    assert sum(i.epochs < LOCAL.epochs for _, i in plan) >= 1  # stragglers cut short
    fits = [
        trainer.fit(w0, fed.train_data(cid), instr, client_seed(1, 1, cid)) for cid, instr in plan
    ]
    assert [f.num_steps for f in fits] == [3 * i.epochs for _, i in plan]  # 40 samples, B=16
    expected = w0 + weighted_mean([f.vector - w0 for f in fits], [f.num_samples for f in fits])
    np.testing.assert_allclose(one.vector, expected, atol=1e-7)


def test_all_stragglers_dropped_keeps_the_model(blobs):
    fed = Federation(blobs, [np.arange(i, len(blobs.train), 4) for i in range(4)])
    strategy = FedAvg(
        clients_per_round=4, local=LOCAL, stragglers=Stragglers(fraction=1.0, drop=True)
    )
    trainer = NumpyLogisticRegression((10,), 4)
    result = Simulation(trainer, fed, strategy, seed=0).run(2)
    assert [h["num_clients"] for h in result.history] == [0, 0]
    assert np.array_equal(result.vector, trainer.init_vector(0))
