"""FedAdam, FedYogi, FedAdagrad and FedAvgM against hand computations (Reddi et al. 2021,
Algorithm 2), and end to end on the blobs task."""

import copy

import numpy as np
import pytest
from torch import nn

from fedfleet.client import FitInstructions, TorchTrainer
from fedfleet.errors import ConfigError
from fedfleet.sim import Federation, Simulation
from fedfleet.strategies import (
    ClientUpdate,
    FedAvg,
    Stragglers,
    fedadagrad,
    fedadam,
    fedavgm,
    fedyogi,
)
from fedfleet.transforms import adagrad, adam, yogi

TAU = 1e-3
W0 = np.array([1.0, -1.0, 0.5], dtype=np.float32)
# round 1: two clients, n = 1 and 3 -> Delta_1 = 0.25 d_a + 0.75 d_b = [0.5, -0.1, 0.0]
ROUND1 = [
    ClientUpdate(0, np.array([0.2, -0.4, 0.0], dtype=np.float32), 1, 1),
    ClientUpdate(1, np.array([0.6, 0.0, 0.0], dtype=np.float32), 3, 1),
]
# (from the float32 deltas the clients send, so hand and code see the same inputs)
DELTA1 = 0.25 * ROUND1[0].delta.astype(np.float64) + 0.75 * ROUND1[1].delta.astype(np.float64)
# round 2: one client. Coordinate 0 is small next to v_1, so Yogi's sign flips there.
ROUND2 = [ClientUpdate(0, np.array([0.01, 0.3, -0.2], dtype=np.float32), 5, 1)]
DELTA2 = ROUND2[0].delta.astype(np.float64)


def _two_rounds(strategy):
    state = strategy.init(W0)
    w1, state, _ = strategy.aggregate_fit(1, W0, state, ROUND1)
    w2, state, _ = strategy.aggregate_fit(2, w1, state, ROUND2)
    return w1, w2, state["server_optimizer"]


def test_fedadam_two_rounds_by_hand():
    lr, b1, b2 = 0.1, 0.9, 0.99
    w1, w2, state = _two_rounds(fedadam(server_lr=lr, b1=b1, b2=b2, tau=TAU, clients_per_round=2))
    v0 = np.full(3, TAU**2)
    m1 = (1 - b1) * DELTA1
    v1 = b2 * v0 + (1 - b2) * DELTA1**2
    x1 = W0 + lr * m1 / (np.sqrt(v1) + TAU)
    m2 = b1 * m1 + (1 - b1) * DELTA2
    v2 = b2 * v1 + (1 - b2) * DELTA2**2
    x2 = x1 + lr * m2 / (np.sqrt(v2) + TAU)
    # first coordinate on paper: v1 = 0.99e-6 + 0.0025, step = 0.005 / (0.0500099 + 0.001)
    assert w1[0] - W0[0] == pytest.approx(0.0980202, rel=1e-5)
    np.testing.assert_allclose(w1, x1, rtol=1e-6)
    np.testing.assert_allclose(w2, x2, rtol=1e-6)
    np.testing.assert_allclose(state["m"], m2, rtol=1e-12)
    np.testing.assert_allclose(state["v"], v2, rtol=1e-12)
    assert w2.dtype == np.float32


def test_fedyogi_two_rounds_by_hand_with_both_signs():
    lr, b1, b2 = 0.1, 0.9, 0.99
    w1, w2, state = _two_rounds(fedyogi(server_lr=lr, b1=b1, b2=b2, tau=TAU, clients_per_round=2))
    v0 = np.full(3, TAU**2)
    d1 = DELTA1**2  # [0.25, 0.01, 0]: above v0 = 1e-6 in coordinates 0 and 1, below in 2
    v1 = np.array(
        [
            v0[0] + (1 - b2) * d1[0],  # v0 < Delta^2: sign -1
            v0[1] + (1 - b2) * d1[1],
            v0[2] - (1 - b2) * d1[2],  # v0 > Delta^2 = 0: sign +1, nothing to subtract
        ]
    )
    m1 = (1 - b1) * DELTA1
    x1 = W0 + lr * m1 / (np.sqrt(v1) + TAU)
    d2 = DELTA2**2  # [1e-4, 0.09, 0.04]; v1[0] = 0.002501 > 1e-4: v shrinks there
    v2 = np.array([v1[0] - (1 - b2) * d2[0], v1[1] + (1 - b2) * d2[1], v1[2] + (1 - b2) * d2[2]])
    m2 = b1 * m1 + (1 - b1) * DELTA2
    x2 = x1 + lr * m2 / (np.sqrt(v2) + TAU)
    np.testing.assert_allclose(state["v"], v2, rtol=1e-12)
    assert state["v"][0] == pytest.approx(0.002501 - 1e-6, rel=1e-6)
    np.testing.assert_allclose(w1, x1, rtol=1e-6)
    np.testing.assert_allclose(w2, x2, rtol=1e-6)
    # and Yogi is not Adam: Adam would decay v[0] multiplicatively
    _, w2_adam, _ = _two_rounds(fedadam(server_lr=lr, tau=TAU, clients_per_round=2))
    assert abs(w2_adam[0] - w2[0]) > 1e-5


def test_fedadagrad_two_rounds_by_hand():
    lr = 0.5
    w1, w2, state = _two_rounds(fedadagrad(server_lr=lr, tau=TAU, clients_per_round=2))
    v1 = TAU**2 + DELTA1**2
    x1 = W0 + lr * DELTA1 / (np.sqrt(v1) + TAU)  # b1 = 0: m_t = Delta_t
    v2 = v1 + DELTA2**2
    x2 = x1 + lr * DELTA2 / (np.sqrt(v2) + TAU)
    np.testing.assert_allclose(w1, x1, rtol=1e-6)
    np.testing.assert_allclose(w2, x2, rtol=1e-6)
    np.testing.assert_allclose(state["v"], v2, rtol=1e-12)
    np.testing.assert_allclose(state["m"], DELTA2, rtol=1e-12)


def test_adagrad_with_momentum_keeps_a_first_moment():
    t = adagrad(lr=1.0, tau=TAU, b1=0.5)
    state = t.init(np.zeros(3))
    _, state = t.update(-DELTA1, state, np.zeros(3))
    step, state = t.update(-DELTA2, state, np.zeros(3))
    m2 = 0.5 * (0.5 * DELTA1) + 0.5 * DELTA2
    np.testing.assert_allclose(step, m2 / (np.sqrt(TAU**2 + DELTA1**2 + DELTA2**2) + TAU))


def test_fedavgm_two_rounds_by_hand():
    w1, w2, state = _two_rounds(fedavgm(server_lr=0.5, momentum=0.9, clients_per_round=2))
    m1 = -DELTA1
    x1 = W0 - 0.5 * m1
    m2 = 0.9 * m1 - DELTA2
    x2 = x1 - 0.5 * m2
    np.testing.assert_allclose(w1, x1, rtol=1e-6)
    np.testing.assert_allclose(w2, x2, rtol=1e-6)
    np.testing.assert_allclose(state["momentum"], m2, rtol=1e-12)


def test_initial_second_moment_is_tau_squared_and_first_is_zero():
    state = yogi(lr=0.1, tau=0.01).init(np.zeros(4, np.float32))
    np.testing.assert_array_equal(state["v"], np.full(4, 1e-4))
    np.testing.assert_array_equal(state["m"], np.zeros(4))
    assert state["v"].dtype == np.float64 and state["m"].dtype == np.float64


def test_a_zero_delta_round_moves_nothing():
    for t in (adam(lr=0.1), yogi(lr=0.1), adagrad(lr=0.1)):
        state = t.init(np.zeros(3))
        step, _ = t.update(np.zeros(3), state, np.zeros(3))
        np.testing.assert_array_equal(step, np.zeros(3))


def test_update_does_not_mutate_state_and_resumes_from_a_checkpoint():
    t = adam(lr=0.1)
    x = np.zeros(3)
    state = t.init(x)
    _, state = t.update(-DELTA1, state, x)
    saved = copy.deepcopy(state)
    step_a, _ = t.update(-DELTA2, state, x)
    for key in state:
        np.testing.assert_array_equal(state[key], saved[key])  # untouched
    step_b, _ = t.update(-DELTA2, saved, x)
    np.testing.assert_array_equal(step_a, step_b)


def test_constructors_are_fedavg_with_the_transform():
    local = FitInstructions(epochs=2, lr=0.05)
    s = fedadam(server_lr=0.01, fraction=0.2, local=local)
    assert isinstance(s, FedAvg)
    assert s.fraction == 0.2 and s.clients_per_round is None and s.local is local
    assert s.server_optimizer == adam(0.01)
    assert fedyogi(server_lr=0.01).clients_per_round == 10  # FedAvg's default
    assert fedadagrad(server_lr=0.1).local == FitInstructions()
    slow = Stragglers(fraction=0.5, drop=False)
    assert fedavgm(stragglers=slow).stragglers is slow


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: adam(lr=0.0), "lr must be > 0"),
        (lambda: yogi(lr=0.1, b2=1.0), "b2"),
        (lambda: adam(lr=0.1, b1=-0.1), "b1"),
        (lambda: adagrad(lr=0.1, tau=0.0), "tau must be > 0"),
        (lambda: fedadam(server_lr=0.1, clients_per_round=2, fraction=0.5), "exactly one"),
        (lambda: fedavgm(momentum=1.0), "momentum"),
        (lambda: fedavgm(server_lr=-1.0), "server_lr"),
    ],
)
def test_bad_hyperparameters_are_config_errors(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


# --- end to end ------------------------------------------------------------------------------

LOCAL = FitInstructions(epochs=1, batch_size=16, lr=0.1)


def _factory():
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 4))


def _run(task, strategy, seed=0, rounds=8):
    parts = [np.arange(i, len(task.train), 8) for i in range(8)]
    sim = Simulation(TorchTrainer(_factory), Federation(task, parts), strategy, seed=seed)
    return sim.run(rounds)


@pytest.mark.parametrize(
    "make",
    [
        lambda: fedadam(server_lr=0.03, clients_per_round=4, local=LOCAL),
        lambda: fedyogi(server_lr=0.03, clients_per_round=4, local=LOCAL),
        lambda: fedadagrad(server_lr=0.03, clients_per_round=4, local=LOCAL),
        lambda: fedavgm(server_lr=1.0, momentum=0.5, clients_per_round=4, local=LOCAL),
    ],
    ids=["fedadam", "fedyogi", "fedadagrad", "fedavgm"],
)
def test_learns_on_blobs_and_is_deterministic(blobs, make):
    a = _run(blobs, make())
    b = _run(blobs, make())
    assert a.final["test_accuracy"] > 0.85
    assert np.array_equal(a.vector, b.vector)
    assert not np.array_equal(a.vector, _run(blobs, make(), seed=1).vector)
    # the moments are in the returned state, not on the strategy
    assert set(a.strategy_state) == {"server_optimizer"}
