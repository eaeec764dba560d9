"""FedProx: the trainers' proximal term against PyTorch with the term in the loss, mu = 0 against
FedAvg bit for bit, and end-to-end runs."""

import dataclasses

import numpy as np
import pytest
import torch
from sklearn.linear_model import SGDClassifier
from torch import nn
from torch.nn import functional as F

from fedfleet.client import FitInstructions, NumpyLogisticRegression, SklearnTrainer, TorchTrainer
from fedfleet.data import ArrayDataset
from fedfleet.errors import ConfigError, LayoutError
from fedfleet.sim import TIMING_KEYS, Federation, Simulation
from fedfleet.strategies import FedAvg, Stragglers, fedprox


def _factory():
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 4))


def _strip(history):
    return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in history]


def _reference_prox_loop(module, w0_params, data, mu, epochs, batch, lr, seed, momentum=0.0):
    """Textbook FedProx client: SGD on CE + mu/2 ||w - w0||^2, the term written in the loss."""
    opt = torch.optim.SGD(module.parameters(), lr=lr, momentum=momentum)
    rng = np.random.default_rng(seed)
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for s in range(0, len(y), batch):
            idx = torch.from_numpy(order[s : s + batch])
            opt.zero_grad()
            pairs = zip(module.parameters(), w0_params, strict=True)
            prox = sum(((p - p0) ** 2).sum() for p, p0 in pairs)
            (F.cross_entropy(module(x[idx]), y[idx]) + mu / 2 * prox).backward()
            opt.step()


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_torch_prox_step_equals_the_prox_term_in_the_loss(blobs, momentum):
    trainer = TorchTrainer(_factory, optimizer="sgd", optimizer_args={"momentum": momentum})
    w0 = trainer.init_vector(seed=1)
    data = blobs.train.subset(np.arange(60))
    instr = FitInstructions(epochs=3, batch_size=8, lr=0.1, config={"prox_mu": 0.7})
    res = trainer.fit(w0, data, instr, seed=7)

    ref = _factory()
    ref.load_state_dict(trainer.layout.to_state_dict(w0))
    w0_params = [p.detach().clone() for p in ref.parameters()]
    _reference_prox_loop(ref, w0_params, data, 0.7, 3, 8, 0.1, seed=7, momentum=momentum)
    np.testing.assert_allclose(res.vector, trainer.layout.flatten(ref.state_dict()), atol=2e-6)
    # and the term matters: without it the result is elsewhere
    plain = trainer.fit(w0, data, dataclasses.replace(instr, config={}), seed=7).vector
    assert np.abs(plain - res.vector).max() > 1e-3


def test_numpy_prox_step_equals_the_prox_term_in_the_loss(blobs):
    model = NumpyLogisticRegression((10,), 4)
    w0 = np.random.default_rng(0).normal(0, 0.1, model.layout.size).astype(np.float32)
    data = blobs.train.subset(np.arange(40))
    res = model.fit(
        w0, data, FitInstructions(epochs=2, batch_size=8, lr=0.3, config={"prox_mu": 0.5}), 3
    )
    lin = nn.Linear(10, 4)
    lin.load_state_dict(model.layout.to_state_dict(w0))
    _reference_prox_loop(
        lin, [p.detach().clone() for p in lin.parameters()], data, 0.5, 2, 8, 0.3, seed=3
    )
    np.testing.assert_allclose(res.vector, model.layout.flatten(lin.state_dict()), atol=1e-5)


def test_prox_pull_in_closed_form_with_a_flat_loss():
    """With a loss whose gradient is zero, only the added terms move w. From w0 with correction
    c, plain SGD gives d_{t+1} = (1 - lr mu) d_t - lr c for d = w - w0, so after K steps
    d_K = -lr c sum_{j<K} (1 - lr mu)^j: the hand computation for mu and correction together."""

    class Vec(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))

        def forward(self, x):
            return self.w.expand(len(x), 3)

    trainer = TorchTrainer(Vec(), loss_fn=lambda out, y: 0.0 * out.sum())
    w0 = trainer.init_vector(0)
    data = ArrayDataset(np.zeros((4, 3), np.float32), np.zeros(4, np.int64))
    c = np.array([0.3, -0.1, 2.0], np.float32)
    mu, lr, k = 0.5, 0.1, 6
    instr = FitInstructions(
        epochs=k, batch_size=4, lr=lr, config={"prox_mu": mu}, payload={"grad_correction": c}
    )
    res = trainer.fit(w0, data, instr, seed=0)
    d = -lr * c.astype(np.float64) * sum((1 - lr * mu) ** j for j in range(k))
    np.testing.assert_allclose(res.vector, w0 + d, atol=1e-6)
    assert res.num_steps == k


def test_mu_zero_is_fedavg_bit_for_bit(blobs):
    local = FitInstructions(epochs=2, batch_size=16, lr=0.1)
    parts = [np.arange(i, len(blobs.train), 6) for i in range(6)]

    def run(strategy, trainer):
        return Simulation(trainer, Federation(blobs, parts), strategy, seed=3).run(3)

    for make in (lambda: TorchTrainer(_factory), lambda: NumpyLogisticRegression((10,), 4)):
        a = run(FedAvg(clients_per_round=3, local=local), make())
        b = run(fedprox(mu=0.0, clients_per_round=3, local=local), make())
        assert np.array_equal(a.vector, b.vector)
        assert _strip(a.history) == _strip(b.history)


def test_fedprox_is_a_configured_fedavg_and_leaves_the_callers_config_alone():
    local = FitInstructions(epochs=20, batch_size=10, lr=0.01, config={"note": 1})
    lag = Stragglers(fraction=0.9, drop=False)
    strategy = fedprox(mu=1.0, clients_per_round=10, local=local, stragglers=lag)
    assert isinstance(strategy, FedAvg) and strategy.stragglers is lag
    assert strategy.local.config == {"note": 1, "prox_mu": 1.0}
    assert local.config == {"note": 1}
    assert (strategy.local.epochs, strategy.local.batch_size, strategy.local.lr) == (20, 10, 0.01)
    assert fedprox(mu=0.1).clients_per_round == 10


def test_bad_mu_and_bad_correction_are_refused(blobs):
    with pytest.raises(ConfigError, match="mu must be a finite number >= 0, got -1"):
        fedprox(mu=-1)
    trainer = TorchTrainer(_factory)
    w0 = trainer.init_vector(0)
    for bad in ("0.1", float("nan"), -0.5):
        with pytest.raises(ConfigError, match="prox_mu"):
            trainer.fit(w0, blobs.train, FitInstructions(config={"prox_mu": bad}), 0)
    short = {"grad_correction": np.zeros(5, np.float32)}
    with pytest.raises(LayoutError, match=r"payload\['grad_correction'\] has shape \(5,\)"):
        trainer.fit(w0, blobs.train, FitInstructions(payload=short), 0)
    with pytest.raises(LayoutError):
        NumpyLogisticRegression((10,), 4).fit(
            np.zeros(44, np.float32), blobs.train, FitInstructions(payload=short), 0
        )
    # scikit-learn's partial_fit owns its gradient step: it says so instead of ignoring mu
    sk = SklearnTrainer(lambda: SGDClassifier(loss="log_loss"), (10,), 4)
    with pytest.raises(ConfigError, match="SklearnTrainer cannot add FedProx"):
        sk.fit(sk.init_vector(0), blobs.train, FitInstructions(config={"prox_mu": 0.1}), 0)


def test_a_larger_mu_keeps_the_client_closer_to_the_global_model(blobs):
    trainer = NumpyLogisticRegression((10,), 4)
    w0 = trainer.init_vector(0)
    dist = []
    for mu in (0.0, 0.1, 1.0, 10.0):
        instr = FitInstructions(epochs=5, batch_size=10, lr=0.05, config={"prox_mu": mu})
        dist.append(np.linalg.norm(trainer.fit(w0, blobs.train, instr, 0).vector - w0))
    assert dist == sorted(dist, reverse=True) and dist[-1] < 0.5 * dist[0]


def test_fedprox_learns_with_stragglers_and_reruns_bit_identically(blobs):
    parts = [np.arange(i, len(blobs.train), 10) for i in range(10)]

    def run():
        strategy = fedprox(
            mu=0.1,
            clients_per_round=5,
            local=FitInstructions(epochs=3, batch_size=10, lr=0.05),
            stragglers=Stragglers(fraction=0.6, drop=False),
        )
        return Simulation(TorchTrainer(_factory), Federation(blobs, parts), strategy, seed=4).run(6)

    a, b = run(), run()
    assert a.final["test_accuracy"] > 0.9
    assert all(h["num_clients"] == 5 for h in a.history)  # partial work is kept
    assert np.array_equal(a.vector, b.vector)
    assert _strip(a.history) == _strip(b.history)
