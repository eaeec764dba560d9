"""Oort selection, availability-aware sampling, aggregation weights, compensation."""

import math

import numpy as np
import pytest

from conftest import blob_task
from fedfleet.client import FitInstructions, NumpyLogisticRegression
from fedfleet.errors import ConfigError
from fedfleet.sim import TIMING_KEYS, ClientProfiles, Federation, Simulation
from fedfleet.sim._cohort import _is_plain
from fedfleet.strategies import (
    ClientUpdate,
    Compensation,
    FedAvg,
    MoreEpochs,
    ScaleLR,
    weighted_mean,
)
from fedfleet.strategies._selection import (
    AvailableOnly,
    OortSelection,
    oort_penalty,
    oort_utility,
)
from fedfleet.strategies._weighting import (
    Reweighted,
    aggregation_weights,
    by_samples,
    by_steps,
    uniform,
)

LOCAL = FitInstructions(epochs=1, batch_size=10, lr=0.1)
V = np.zeros(4, dtype=np.float32)  # 16 bytes


def _profiles(speeds, availability=None):
    n = len(speeds)
    return ClientProfiles(
        speed=np.asarray(speeds, dtype=float),
        download=np.full(n, np.inf),
        upload=np.full(n, np.inf),
        latency=np.zeros(n),
        availability=np.ones(n) if availability is None else np.asarray(availability, float),
        time_per_step=1.0,
    )


def _upd(cid, n=10, steps=5, loss=1.0, delta=None):
    d = np.full(4, float(cid), dtype=np.float32) if delta is None else delta
    return ClientUpdate(cid, d, n, steps, {"train_loss": loss})


def _rng(seed=0):
    return np.random.default_rng(seed)


# --- Oort ---------------------------------------------------------------------------------


def test_oort_utility_and_penalty_by_hand():
    assert oort_utility(100, 0.25) == pytest.approx(50.0)  # 100 * sqrt(0.25)
    assert oort_penalty(5.0, 10.0, 2.0) == 1.0  # on time: no penalty
    assert oort_penalty(20.0, 10.0, 2.0) == pytest.approx(0.25)  # (10/20)^2
    assert oort_penalty(40.0, 10.0, 1.0) == pytest.approx(0.25)


def _oort(speeds, k=2, epsilon=0.0, **kw):
    return OortSelection(
        inner=FedAvg(fraction=1.0, local=LOCAL),
        profiles=_profiles(speeds),
        clients_per_round=k,
        preferred_s=10.0,
        epsilon=epsilon,
        **kw,
    )


def test_oort_tracks_utility_from_reported_losses():
    oort = _oort([1.0, 1.0, 1.0, 1.0])
    state = oort.init(V)
    assert np.isnan(state["oort"]["utility"]).all()
    _, state, m = oort.aggregate_fit(
        1, V, state, [_upd(0, n=10, loss=2.0), _upd(2, n=40, loss=0.5)]
    )
    u = state["oort"]["utility"]
    assert u[0] == pytest.approx(20.0) and u[2] == pytest.approx(20.0)  # 10*2, 40*0.5
    assert np.isnan(u[1]) and state["oort"]["last_round"].tolist() == [1, 0, 1, 0]
    assert state["oort"]["last_steps"].tolist() == [5, 0, 5, 0]
    assert m["oort_explored"] == 2.0


def test_oort_exploits_penalised_utility():
    # clients 0..3 all explored; 10 steps at speed 1, 0.25, 1, 1 -> 10, 40, 10, 10 s
    oort = _oort([1.0, 0.25, 1.0, 1.0], k=2)
    state = oort.init(V)
    state["oort"]["last_steps"][:] = 10
    state["oort"]["utility"][:] = [10.0, 100.0, 20.0, 5.0]
    # client 1: 100 * (10/40)^2 = 6.25 < 10 < 20
    assert oort.select(state, [0, 1, 2, 3], 0, _rng()) == [0, 2]
    state["oort"]["utility"][:] = [10.0, 400.0, 20.0, 5.0]  # 400 / 16 = 25 > 20
    assert oort.select(state, [0, 1, 2, 3], 0, _rng()) == [1, 2]
    assert oort.select(state, [0, 3], 0, _rng()) == [0, 3]  # only among the offered


def test_oort_explores_unexplored_clients_seeded():
    oort = _oort([1.0] * 10, k=4, epsilon=0.5)
    state = oort.init(V)
    state["oort"]["utility"][:5] = [1.0, 2.0, 3.0, 4.0, 5.0]  # 5..9 unexplored
    a = oort.select(state, range(10), 0, _rng(7))
    assert a == oort.select(state, range(10), 0, _rng(7))
    assert a[:2] == [3, 4]  # the two best explored
    assert all(c >= 5 for c in a[2:]) and len(a) == 4
    draws = {tuple(oort.select(state, range(10), 0, _rng(s))) for s in range(20)}
    assert len(draws) > 1  # exploration really draws
    fresh = oort.init(V)  # nothing explored yet: all K slots explore
    assert len(oort.select(fresh, range(10), 0, _rng(1))) == 4


def test_oort_in_a_run_is_deterministic_and_vectorisable():
    task = blob_task(n_train=400)
    fed = Federation(task, [np.arange(i, 400, 8) for i in range(8)])
    oort = _oort([1.0, 0.5, 2.0, 0.25, 1.0, 1.0, 3.0, 1.0], k=3, epsilon=0.34)
    assert _is_plain(oort)  # the wrapper keeps the plain client side

    def run():
        sim = Simulation(NumpyLogisticRegression(10, 4), fed, oort, seed=2, profiles=oort.profiles)
        return sim.run(5)

    a, b = run(), run()
    assert np.array_equal(a.vector, b.vector)
    strip = [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in a.history]
    assert strip == [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in b.history]
    ua, ub = a.strategy_state["oort"]["utility"], b.strategy_state["oort"]["utility"]
    assert np.array_equal(ua, ub, equal_nan=True)


def test_available_only_filters_offline_clients():
    profiles = _profiles([1.0] * 6, availability=[1, 0, 1, 0, 1, 1])
    s = AvailableOnly(inner=FedAvg(clients_per_round=6, local=LOCAL), profiles=profiles, seed=0)
    plan = s.configure_fit(1, V, s.init(V), list(range(6)), _rng())
    assert [c for c, _ in plan] == [0, 2, 4, 5]


def test_oort_validates():
    with pytest.raises(ConfigError, match="epsilon"):
        _oort([1.0], epsilon=2.0)


# --- weighting ----------------------------------------------------------------------------


def test_weighting_rules_by_hand():
    ups = [_upd(0, n=10, steps=2, loss=0.5), _upd(1, n=30, steps=8, loss=1.0)]
    assert aggregation_weights(ups, by_samples).tolist() == [10.0, 30.0]
    assert aggregation_weights(ups, by_steps).tolist() == [2.0, 8.0]
    assert aggregation_weights(ups, uniform).tolist() == [1.0, 1.0]
    custom = aggregation_weights(ups, lambda u: u.num_samples * u.metrics["train_loss"])
    assert custom.tolist() == [5.0, 30.0]
    with pytest.raises(ConfigError, match=r"client 1 the weight -1\.0"):
        aggregation_weights(ups, lambda u: -1.0 if u.client_id == 1 else 1.0)
    with pytest.raises(ConfigError, match="every client weight 0"):
        aggregation_weights(ups, lambda u: 0.0)


@pytest.mark.parametrize(
    ("rule", "weights"), [(by_samples, [10, 30]), (by_steps, [2, 8]), (uniform, [1, 1])]
)
def test_reweighted_fedavg_matches_hand_mean(rule, weights):
    d0, d1 = np.array([1, 0, 0, 2], np.float32), np.array([0, 4, 0, -2], np.float32)
    ups = [_upd(0, n=10, steps=2, delta=d0), _upd(1, n=30, steps=8, delta=d1)]
    s = Reweighted(inner=FedAvg(clients_per_round=2, local=LOCAL), weighting=rule)
    new, _, _ = s.aggregate_fit(1, V, s.init(V), ups)
    w = np.asarray(weights, float) / sum(weights)
    np.testing.assert_allclose(new, w[0] * d0 + w[1] * d1, rtol=1e-6)
    np.testing.assert_array_equal(new, weighted_mean([d0, d1], weights).astype(np.float32))


# --- compensation -------------------------------------------------------------------------


def _comp(rule, n=4):
    return Compensation(
        inner=FedAvg(clients_per_round=n, local=LOCAL), rule=rule, num_clients=n, decay=0.5
    )


def test_compensation_tracks_loss_and_flags_laggards():
    c = _comp(ScaleLR(factor=2.0))
    state = c.init(V)
    _, state, _ = c.aggregate_fit(
        1, V, state, [_upd(0, loss=1.0), _upd(1, loss=1.0), _upd(2, loss=3.0)]
    )
    assert c.lagging(state) == {2: pytest.approx(3.0)}
    _, state, _ = c.aggregate_fit(2, V, state, [_upd(2, loss=1.0)])
    assert state["compensation"]["loss"][2] == pytest.approx(2.0)  # 0.5 * 3 + 0.5 * 1
    assert math.isnan(state["compensation"]["loss"][3])


def test_scale_lr_changes_only_lagging_clients():
    c = _comp(ScaleLR(factor=2.0))
    state = c.init(V)
    _, state, _ = c.aggregate_fit(1, V, state, [_upd(0), _upd(1), _upd(2, loss=5.0)])
    plan = c.configure_fit(2, V, state, [0, 1, 2, 3], _rng())
    lrs = {cid: i.lr for cid, i in plan}
    assert lrs == {0: 0.1, 1: 0.1, 2: 0.2, 3: 0.1}
    assert plan.metrics["compensated"] == 1.0


def test_more_epochs_within_the_time_budget():
    profiles = _profiles([1.0, 0.5, 1.0, 1.0])
    rule = MoreEpochs(factor=3.0, profiles=profiles, budget_s=12.0, num_bytes=0)
    out = rule.adjust(1, LOCAL, lag=2.0)
    assert out.epochs == 3 and out.max_steps == 6  # 12 s at speed 0.5 -> 6 steps
    assert MoreEpochs(factor=2.0).adjust(0, LOCAL, 2.0) == FitInstructions(
        epochs=2, batch_size=10, lr=0.1
    )
    with pytest.raises(ConfigError, match="factor"):
        MoreEpochs(factor=0.5)


def test_compensation_off_by_default_means_plain_plans():
    c = _comp(ScaleLR(factor=2.0))
    plan = c.configure_fit(1, V, c.init(V), [0, 1, 2, 3], _rng(3))
    inner = FedAvg(clients_per_round=4, local=LOCAL).configure_fit(1, V, {}, [0, 1, 2, 3], _rng(3))
    assert list(plan) == list(inner) and plan.metrics["compensated"] == 0.0
