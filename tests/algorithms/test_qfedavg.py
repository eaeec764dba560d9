"""q-FedAvg (Li et al. 2020, Algorithm 2) against hand computations, its q = 0 reduction, its
client side, and end to end on the blobs task."""

import logging

import numpy as np
import pytest
from torch import nn

from fedfleet.client import FitInstructions, NumpyLogisticRegression, TorchTrainer
from fedfleet.errors import ConfigError
from fedfleet.sim import Federation, Simulation, client_seed
from fedfleet.strategies import ClientUpdate, FedAvg, QFedAvg


def _update(cid, delta, loss, n=10):
    return ClientUpdate(
        cid, np.asarray(delta, np.float32), n, 5, {"train_loss": 9.9, "loss_at_global": loss}
    )


def _agg(strategy, w, updates):
    return strategy.aggregate_fit(1, np.asarray(w, np.float32), strategy.init(w), updates)


def test_one_step_by_hand_q1():
    # eta = 0.5 -> L = 2. dw_1 = -2 [0.5, 0] = [-1, 0], dw_2 = -2 [0, -1] = [0, 2].
    # Delta = F^q dw: [-2, 0] and [0, 1]. h = q F^(q-1) |dw|^2 + L F^q: 1 + 4 = 5 and 4 + 1 = 5.
    # w <- [1, 1] - ([-2, 0] + [0, 1]) / 10 = [1.2, 0.9]
    strategy = QFedAvg(q=1.0, clients_per_round=2, local=FitInstructions(lr=0.5))
    updates = [_update(0, [0.5, 0.0], 2.0), _update(1, [0.0, -1.0], 0.5)]
    new, _, metrics = _agg(strategy, [1.0, 1.0], updates)
    np.testing.assert_allclose(new, [1.2, 0.9], rtol=1e-6)
    assert new.dtype == np.float32
    assert metrics["loss_at_global_mean"] == pytest.approx(1.25)
    assert metrics["loss_at_global_max"] == pytest.approx(2.0)


@pytest.mark.parametrize("q", [0.5, 2.0, 5.0])
def test_step_matches_the_formula_on_random_vectors(q):
    rng = np.random.default_rng(1)
    w = rng.normal(size=20)
    deltas = [rng.normal(size=20) * 0.1 for _ in range(4)]
    losses = [0.3, 1.0, 2.5, 0.05]
    lr = 0.1
    pairs = enumerate(zip(deltas, losses, strict=True))
    updates = [_update(i, d, f, n=10 * (i + 1)) for i, (d, f) in pairs]
    new, _, _ = _agg(QFedAvg(q=q, clients_per_round=4, local=FitInstructions(lr=lr)), w, updates)
    big_l = 1 / lr
    num, den = np.zeros(20), 0.0
    for u, f in zip(updates, losses, strict=True):
        dw = -big_l * u.delta.astype(np.float64)
        num += f**q * dw
        den += q * f ** (q - 1) * np.sum(dw**2) + big_l * f**q
    np.testing.assert_allclose(new, w.astype(np.float32) - num / den, rtol=1e-5, atol=1e-6)


def test_lipschitz_override_replaces_one_over_lr():
    updates = [_update(0, [0.5, 0.0], 2.0), _update(1, [0.0, -1.0], 0.5)]
    # L = 2 given directly, client lr irrelevant: same numbers as the hand computation above
    strategy = QFedAvg(q=1.0, clients_per_round=2, lipschitz=2.0, local=FitInstructions(lr=0.01))
    new, _, _ = _agg(strategy, [1.0, 1.0], updates)
    np.testing.assert_allclose(new, [1.2, 0.9], rtol=1e-6)


def test_q0_is_the_unweighted_average_of_client_models():
    w = np.array([1.0, -2.0, 0.5], dtype=np.float32)
    models = [np.array(m, np.float32) for m in ([2.0, 0.0, 1.0], [0.0, 4.0, -1.0], [1, 1, 1])]
    losses, ns = [3.0, 0.2, 1.0], [10, 30, 60]  # neither losses nor sizes may matter
    triples = enumerate(zip(models, losses, ns, strict=True))
    updates = [_update(i, m - w, f, n) for i, (m, f, n) in triples]
    strategy = QFedAvg(q=0.0, clients_per_round=3, local=FitInstructions(lr=0.1))
    new, _, _ = _agg(strategy, w, updates)
    np.testing.assert_allclose(new, [1.0, 5.0 / 3.0, 1.0 / 3.0], rtol=1e-6)
    fedavg, _, _ = _agg(FedAvg(clients_per_round=3), w, updates)  # sample-weighted: differs
    assert not np.allclose(new, fedavg)


def test_zero_loss_with_q_below_one_stays_finite():
    strategy = QFedAvg(q=0.5, clients_per_round=2, local=FitInstructions(lr=0.5))
    w = np.zeros(2, np.float32)
    # a converged client: zero loss and zero delta. It must neither blow up nor freeze the step.
    with_zero, _, _ = _agg(strategy, w, [_update(0, [0.0, 0.0], 0.0), _update(1, [0.0, 1.0], 1.0)])
    alone, _, _ = _agg(strategy, w, [_update(1, [0.0, 1.0], 1.0)])
    assert np.isfinite(with_zero).all()
    np.testing.assert_allclose(with_zero, alone, rtol=1e-4)
    # zero loss with a non-zero delta (possible with float32 losses): still finite
    odd, _, _ = _agg(strategy, w, [_update(0, [1.0, 0.0], 0.0), _update(1, [0.0, 1.0], 1.0)])
    assert np.isfinite(odd).all()


def test_large_q_does_not_overflow():
    # 50^200 overflows float64; the step must still be finite and, at this q, essentially the
    # worst client's own q-FedAvg step: w - dw/(q |dw|^2 / F + L) with dw = -L delta
    strategy = QFedAvg(q=200.0, clients_per_round=2, local=FitInstructions(lr=0.5))
    w = np.zeros(2, np.float32)
    new, _, _ = _agg(strategy, w, [_update(0, [1.0, 0.0], 50.0), _update(1, [0.0, 1.0], 40.0)])
    dw = np.array([-2.0, 0.0])
    np.testing.assert_allclose(new, -dw / (200.0 * 4.0 / 50.0 + 2.0), rtol=1e-6, atol=1e-12)


def test_client_fit_reports_the_global_models_loss_before_training(blobs):
    trainer = NumpyLogisticRegression((10,), 4)
    w = trainer.init_vector(0) + 0.1
    data = blobs.train.subset(np.arange(40))
    local = FitInstructions(epochs=2, batch_size=8, lr=0.1)
    result = QFedAvg(q=1.0, local=local).client_fit(trainer, w, data, local, 7, None)
    plain = trainer.fit(w, data, local, 7)
    np.testing.assert_array_equal(result.fit.vector, plain.vector)
    assert result.fit.metrics["loss_at_global"] == trainer.evaluate(w, data).loss
    assert result.fit.metrics["train_loss"] == plain.metrics["train_loss"]
    assert result.fit.num_steps == plain.num_steps == 10


def test_updates_without_the_loss_metric_are_left_out_and_logged(caplog):
    strategy = QFedAvg(q=1.0, clients_per_round=2, local=FitInstructions(lr=0.5))
    stray = ClientUpdate(7, np.array([100.0, 100.0], np.float32), 10, 5, {"train_loss": 1.0})
    good = [_update(0, [0.5, 0.0], 2.0), _update(1, [0.0, -1.0], 0.5)]
    with caplog.at_level(logging.WARNING, logger="fedfleet"):
        new, _, metrics = _agg(strategy, [1.0, 1.0], [*good, stray])
    np.testing.assert_allclose(new, [1.2, 0.9], rtol=1e-6)
    assert metrics["skipped_no_loss"] == 1.0 and metrics["aggregated"] == 2.0
    assert "client 7" in caplog.text and "loss_at_global" in caplog.text
    w = np.ones(2, np.float32)
    same, _, metrics = strategy.aggregate_fit(1, w, {}, [stray])
    assert same is w and metrics["aggregated"] == 0.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"q": -1.0}, "q must be >= 0"),
        ({"q": 1.0, "lipschitz": 0.0}, "lipschitz"),
        ({"q": 1.0, "local": FitInstructions(lr=0.0)}, "local.lr"),
        ({"q": 1.0, "fraction": 2.0}, "fraction"),
    ],
)
def test_bad_settings_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        QFedAvg(**kwargs)


# --- end to end ------------------------------------------------------------------------------

LOCAL = FitInstructions(epochs=1, batch_size=16, lr=0.1)


def _factory():
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 4))


def _sim(task, q, seed=0):
    parts = [np.arange(i, len(task.train), 8) for i in range(8)]
    strategy = QFedAvg(q=q, clients_per_round=4, local=LOCAL)
    return Simulation(TorchTrainer(_factory), Federation(task, parts), strategy, seed=seed)


@pytest.mark.parametrize("q", [0.0, 1.0])
def test_learns_on_blobs_and_is_deterministic(blobs, q):
    a = _sim(blobs, q).run(8)
    b = _sim(blobs, q).run(8)
    assert a.final["test_accuracy"] > 0.85
    assert np.array_equal(a.vector, b.vector)
    assert not np.array_equal(a.vector, _sim(blobs, q, seed=1).run(8).vector)
    assert a.history[-1]["loss_at_global_mean"] < a.history[0]["loss_at_global_mean"]


def test_engine_round_one_equals_a_hand_run(blobs):
    sim = _sim(blobs, 1.0, seed=3)
    result = sim.run(1)
    trainer = TorchTrainer(_factory)
    w0 = trainer.init_vector(3)
    plan = sim.strategy.configure_fit(
        1,
        w0,
        {},
        sim.federation.client_ids,
        np.random.default_rng(np.random.SeedSequence(3, spawn_key=(1, 0))),
    )
    big_l, num, den = 1 / LOCAL.lr, 0.0, 0.0
    for cid, instr in plan:
        data = sim.federation.train_data(cid)
        f = trainer.evaluate(w0, data).loss
        dw = -big_l * (trainer.fit(w0, data, instr, client_seed(3, 1, cid)).vector - w0)
        num = num + f * dw.astype(np.float64)
        den += np.sum(dw.astype(np.float64) ** 2) + big_l * f
    np.testing.assert_allclose(result.vector, w0 - num / den, atol=1e-6)
