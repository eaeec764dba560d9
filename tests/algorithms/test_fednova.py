"""FedNova's normalised averaging against hand computations and PyTorch's own SGD (Wang et al.
2020), its consistency where FedAvg drifts, and end to end on the blobs task."""

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from fedfleet.client import FitInstructions, TorchTrainer
from fedfleet.errors import ConfigError
from fedfleet.sim import Federation, Simulation
from fedfleet.strategies import ClientUpdate, FedAvg, FedNova, Stragglers
from fedfleet.transforms import sgd


def _agg(strategy, w, updates):
    return strategy.aggregate_fit(1, w, strategy.init(w), updates)


def test_sgd_clients_with_2_and_8_steps():
    w = np.array([1.0, -1.0], dtype=np.float32)
    updates = [
        ClientUpdate(0, np.array([2.0, 0.0], np.float32), num_samples=30, num_steps=2),
        ClientUpdate(1, np.array([0.0, 8.0], np.float32), num_samples=10, num_steps=8),
    ]
    new, _, metrics = _agg(FedNova(clients_per_round=2), w, updates)
    # p = (0.75, 0.25); a = (2, 8); tau_eff = 0.75*2 + 0.25*8 = 3.5
    # sum_i p_i d_i / a_i = 0.75*[1, 0] + 0.25*[0, 1] = [0.75, 0.25]; times 3.5
    np.testing.assert_allclose(new, [1.0 + 2.625, -1.0 + 0.875], rtol=1e-6)
    assert metrics["tau_eff"] == pytest.approx(3.5)
    assert metrics["skipped_zero_steps"] == 0.0
    # FedAvg would give w + 0.75*[2, 0] + 0.25*[0, 8] = [2.5, 1.0]: the 8-step client dominates
    fedavg, _, _ = _agg(FedAvg(clients_per_round=2), w, updates)
    np.testing.assert_allclose(fedavg, [2.5, 1.0], rtol=1e-6)


def _two_clients(tau2):
    """Client 0 ran one step (a = 1 in every variant) along e0, client 1 ran tau2 steps along e1;
    equal sizes, so the new model is x + (1 + a2)/2 * [1/2, 1/(2 a2)]."""
    return [
        ClientUpdate(0, np.array([1.0, 0.0], np.float32), num_samples=5, num_steps=1),
        ClientUpdate(1, np.array([0.0, 1.0], np.float32), num_samples=5, num_steps=tau2),
    ]


def _expected(a2):
    return np.array([(1 + a2) / 4, (1 + a2) / (4 * a2)])


def test_momentum_normaliser():
    # rho = 0.9, 3 steps: the buffer after step k holds 1 + rho + ... + rho^(k-1) unit
    # gradients, so a = 1 + 1.9 + 2.71 = 5.61
    w = np.zeros(2, np.float32)
    new, _, metrics = _agg(FedNova(clients_per_round=2, momentum=0.9), w, _two_clients(3))
    np.testing.assert_allclose(new, _expected(5.61), rtol=1e-6)
    assert metrics["tau_eff"] == pytest.approx((1 + 5.61) / 2)


def test_proximal_normaliser():
    # eta = 0.5, mu = 0.1: each step shrinks the distance travelled by (1 - eta mu) = 0.95, so
    # a = 1 + 0.95 + 0.95^2 + 0.95^3 = 3.709875 for 4 steps
    local = FitInstructions(lr=0.5, config={"prox_mu": 0.1})
    w = np.zeros(2, np.float32)
    new, _, _ = _agg(FedNova(clients_per_round=2, local=local), w, _two_clients(4))
    np.testing.assert_allclose(new, _expected(3.709875), rtol=1e-6)


def _torch_steps(tau, lr, momentum, mu):
    """a measured with PyTorch itself: ``tau`` steps of torch.optim.SGD on a scalar whose loss
    is ``x + mu/2 (x - x0)^2`` (a unit gradient plus the proximal term); a = -(x - x0) / lr."""
    x0 = torch.zeros(1, dtype=torch.float64)
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.SGD([x], lr=lr, momentum=momentum)
    for _ in range(tau):
        opt.zero_grad()
        loss = x.sum() + mu / 2 * ((x - x0) ** 2).sum()
        loss.backward()
        opt.step()
    return float(-(x.detach() - x0) / lr)


@pytest.mark.parametrize(
    "momentum, mu", [(0.0, 0.0), (0.9, 0.0), (0.5, 0.0), (0.0, 0.1), (0.0, 1.5), (0.9, 0.1)]
)
@pytest.mark.parametrize("tau", [2, 7, 20])
def test_normaliser_matches_pytorch_sgd(momentum, mu, tau):
    lr = 0.5
    local = FitInstructions(lr=lr, config={"prox_mu": mu} if mu else {})
    strategy = FedNova(clients_per_round=2, momentum=momentum, local=local)
    new, _, _ = _agg(strategy, np.zeros(2, np.float32), _two_clients(tau))
    np.testing.assert_allclose(new, _expected(_torch_steps(tau, lr, momentum, mu)), rtol=1e-6)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_equal_steps_is_fedavg(momentum):
    # equal tau_i give equal a_i, so c_i = p_i: plain SGD (a = tau) and momentum alike
    rng = np.random.default_rng(0)
    w = rng.normal(size=50).astype(np.float32)
    updates = [
        ClientUpdate(i, rng.normal(size=50).astype(np.float32), int(rng.integers(1, 100)), 6)
        for i in range(5)
    ]
    nova, _, metrics = _agg(FedNova(clients_per_round=5, momentum=momentum), w, updates)
    avg, _, _ = _agg(FedAvg(clients_per_round=5), w, updates)
    np.testing.assert_allclose(nova, avg, rtol=1e-6, atol=1e-6)
    a = 6.0 if momentum == 0 else sum((1 - 0.9**k) / 0.1 for k in range(1, 7))
    assert metrics["tau_eff"] == pytest.approx(a)


def test_consistent_where_fedavg_drifts():
    # Two clients with F_i(x) = (x - c_i)^2 / 2, c = (0, 1): the global optimum is 0.5. Client 0
    # runs 1 gradient step per round, client 1 runs 10 (lr 0.01), so after tau steps
    # delta_i = (1 - 0.99^tau) (c_i - x). FedAvg's fixed point weights the clients by
    # 1 - 0.99^tau (0.01 vs 0.096) and lands near 0.9; FedNova's by (1 - 0.99^tau)/tau.
    c, tau, eta = np.array([0.0, 1.0]), [1, 10], 0.01
    local = FitInstructions(lr=eta)

    def run(strategy):
        w = np.zeros(1, np.float32)
        state = strategy.init(w)
        for rnd in range(1, 400):
            updates = [
                ClientUpdate(i, ((1 - (1 - eta) ** t) * (c[i] - w)).astype(np.float32), 10, t)
                for i, t in enumerate(tau)
            ]
            w, state, _ = strategy.aggregate_fit(rnd, w, state, updates)
        return float(w[0])

    assert abs(run(FedAvg(clients_per_round=2, local=local)) - 0.5) > 0.35
    assert abs(run(FedNova(clients_per_round=2, local=local)) - 0.5) < 0.02


def test_clients_without_steps_are_skipped_and_counted():
    w = np.zeros(2, np.float32)
    updates = [
        ClientUpdate(0, np.array([4.0, 4.0], np.float32), num_samples=10, num_steps=2),
        ClientUpdate(1, np.array([100.0, -100.0], np.float32), num_samples=90, num_steps=0),
    ]
    new, _, metrics = _agg(FedNova(clients_per_round=2), w, updates)
    np.testing.assert_allclose(new, [4.0, 4.0])  # client 0 alone: p = 1, a = tau_eff = 2
    assert metrics["skipped_zero_steps"] == 1.0 and metrics["aggregated"] == 1.0
    strategy = FedNova(clients_per_round=2)
    state = strategy.init(w)
    same, state2, metrics = strategy.aggregate_fit(1, w, state, updates[1:])
    assert same is w and state2 is state and metrics["aggregated"] == 0.0


def test_server_optimizer_receives_minus_the_normalised_update():
    w = np.zeros(2, np.float32)
    strategy = FedNova(clients_per_round=2, server_optimizer=sgd(lr=0.5, momentum=0.9))
    state = strategy.init(w)
    updates = [
        ClientUpdate(0, np.array([2.0, 0.0], np.float32), 30, 2),
        ClientUpdate(1, np.array([0.0, 8.0], np.float32), 10, 8),
    ]
    w1, state, _ = strategy.aggregate_fit(1, w, state, updates)
    np.testing.assert_allclose(w1, 0.5 * np.array([2.625, 0.875]), rtol=1e-6)
    np.testing.assert_allclose(state["server_optimizer"]["momentum"], [-2.625, -0.875])


def test_stragglers_vary_epochs_on_the_fedavg_cohort():
    local = FitInstructions(epochs=5, lr=0.1)
    nova = FedNova(
        clients_per_round=6, local=local, stragglers=Stragglers(fraction=1.0, drop=False)
    )
    plan = nova.configure_fit(1, np.zeros(1), {}, list(range(20)), np.random.default_rng(4))
    fedavg = FedAvg(clients_per_round=6, local=local)
    cohort = fedavg.configure_fit(1, np.zeros(1), {}, list(range(20)), np.random.default_rng(4))
    assert [cid for cid, _ in plan] == [cid for cid, _ in cohort]
    epochs = [instr.epochs for _, instr in plan]
    assert all(1 <= e <= 5 for e in epochs) and len(set(epochs)) > 1
    assert all(dataclasses.replace(instr, epochs=5) == local for _, instr in plan)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"momentum": 1.0}, "momentum"),
        ({"local": FitInstructions(lr=0.5, config={"prox_mu": 2.0})}, "lr \\* mu"),
        ({"local": FitInstructions(config={"prox_mu": "big"})}, "prox_mu"),
        ({"clients_per_round": 0}, "clients_per_round"),
    ],
)
def test_bad_settings_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        FedNova(**kwargs)


# --- end to end ------------------------------------------------------------------------------

LOCAL = FitInstructions(epochs=3, batch_size=16, lr=0.1)  # 50 samples: 4 steps an epoch


def _factory():
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 4))


def _run(task, strategy, seed=0, rounds=8, momentum=0.0):
    parts = [np.arange(i, len(task.train), 8) for i in range(8)]
    trainer = TorchTrainer(_factory, optimizer_args={"momentum": momentum})
    return Simulation(trainer, Federation(task, parts), strategy, seed=seed).run(rounds)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_learns_on_blobs_with_stragglers_and_is_deterministic(blobs, momentum):
    def make():
        return FedNova(
            clients_per_round=4,
            local=LOCAL,
            momentum=momentum,
            stragglers=Stragglers(fraction=0.75, drop=False),
        )

    a = _run(blobs, make(), momentum=momentum)
    b = _run(blobs, make(), momentum=momentum)
    assert a.final["test_accuracy"] > 0.85
    assert np.array_equal(a.vector, b.vector)
    assert not np.array_equal(a.vector, _run(blobs, make(), seed=1, momentum=momentum).vector)
    taus = [h["tau_eff"] for h in a.history]
    assert len(set(taus)) > 1 and all(t >= 4.0 for t in taus)  # >= one epoch of 4 steps
