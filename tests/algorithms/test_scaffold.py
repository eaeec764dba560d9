"""SCAFFOLD against a hand computation on a quadratic problem, the gradient correction in both
trainers, and end-to-end runs with the in-memory and the on-disk client-state store."""

import itertools

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fedfleet.client import (
    DiskStateStore,
    FitInstructions,
    MemoryStateStore,
    NumpyLogisticRegression,
    TorchTrainer,
)
from fedfleet.data import ArrayDataset, TaskData
from fedfleet.errors import ConfigError, FedfleetError
from fedfleet.sim import TIMING_KEYS, Federation, Simulation
from fedfleet.strategies import ClientUpdate, Scaffold, sample_clients


def _strip(history):
    return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in history]


class _Point(nn.Module):
    """f_i(w) = mean over client i's rows x of 0.5 ||w - x||^2, gradient w - mean(x)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.5, -1.0, 2.0]))

    def forward(self, x):
        return self.w - x


def _half_squared_norm(out, y):
    return 0.5 * (out**2).sum(dim=1).mean()


def _quadratic_federation(sizes, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 3.0, size=(sum(sizes), 3)).astype(np.float32)
    data = ArrayDataset(x, np.zeros(len(x), np.int64))
    bounds = np.cumsum([0, *sizes])
    parts = [np.arange(a, b) for a, b in itertools.pairwise(bounds)]
    return Federation(TaskData("quadratic", data, data, 3, (3,)), parts)


def test_three_rounds_equal_the_hand_computed_algorithm():
    sizes, n, per_round, lr, k, eta_g, seed = [2, 5, 3, 4], 4, 2, 0.1, 3, 0.5, 11
    fed = _quadratic_federation(sizes)
    # full batches, so each of the K = epochs steps uses the exact local gradient w - a_i
    local = FitInstructions(epochs=k, batch_size=64, lr=lr)
    strategy = Scaffold(num_clients=n, clients_per_round=per_round, local=local, server_lr=eta_g)
    sim = Simulation(TorchTrainer(_Point(), loss_fn=_half_squared_norm), fed, strategy, seed=seed)
    result = sim.run(3)

    # the paper's Algorithm 1 (option II), in float64, by hand
    a = [fed.train_data(i).x.astype(np.float64).mean(axis=0) for i in range(n)]
    x = np.array([0.5, -1.0, 2.0])
    c = np.zeros(3)
    c_i = {i: np.zeros(3) for i in range(n)}
    for rnd in (1, 2, 3):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(rnd, 0)))
        chosen = sample_clients(list(range(n)), per_round, rng)
        dys, dcs = [], []
        for i in chosen:
            y = x.copy()
            for _ in range(k):
                y = y - lr * ((y - a[i]) - c_i[i] + c)
            new_c_i = c_i[i] - c + (x - y) / (k * lr)
            dys.append(y - x)
            dcs.append(new_c_i - c_i[i])
            c_i[i] = new_c_i
        x = x + eta_g * np.mean(dys, axis=0)  # unweighted, whatever the client sizes
        c = c + per_round / n * np.mean(dcs, axis=0)

    np.testing.assert_allclose(result.vector, x, atol=1e-5)
    np.testing.assert_allclose(result.strategy_state["c"], c, atol=1e-5)
    for i in range(n):
        got = sim.client_states.get(i)
        if got is None:  # never selected
            assert not c_i[i].any()
        else:
            np.testing.assert_allclose(got["c"], c_i[i], atol=1e-5)
    # the server's c stays the mean of all N client control variates
    mean_c_i = np.mean([c_i[i] for i in range(n)], axis=0)
    np.testing.assert_allclose(result.strategy_state["c"], mean_c_i, atol=1e-5)
    assert np.abs(c).max() > 0.1  # the corrections were live, not zeros


def test_client_side_uploads_and_state_for_one_client():
    fed = _quadratic_federation([4])
    trainer = TorchTrainer(_Point(), loss_fn=_half_squared_norm)
    x = trainer.init_vector(0)
    c = np.array([0.2, -0.4, 1.0], np.float32)
    c_i = np.array([-0.1, 0.3, 0.0], np.float32)
    instr = FitInstructions(epochs=2, batch_size=4, lr=0.25, payload={"c": c})
    res = Scaffold(num_clients=1).client_fit(trainer, x, fed.train_data(0), instr, 0, {"c": c_i})
    a = fed.train_data(0).x.astype(np.float64).mean(axis=0)
    y = x.astype(np.float64)
    for _ in range(2):
        y = y - 0.25 * ((y - a) - c_i + c)
    new_c_i = c_i - c + (x - y) / (2 * 0.25)
    np.testing.assert_allclose(res.fit.vector, y, atol=1e-6)
    np.testing.assert_allclose(res.state["c"], new_c_i, atol=1e-5)
    np.testing.assert_allclose(res.extras["control_delta"], new_c_i - c_i, atol=1e-5)
    assert res.extras["control_delta"].dtype == np.float32 and res.state["c"].dtype == np.float32


def test_a_client_that_took_no_step_keeps_its_control_variate():
    fed = _quadratic_federation([4])
    trainer = TorchTrainer(_Point(), loss_fn=_half_squared_norm)
    c_i = np.array([-0.1, 0.3, 0.0], np.float32)
    instr = FitInstructions(max_steps=0, payload={"c": np.ones(3, np.float32)})
    with np.errstate(all="raise"):  # no division by K = 0
        res = Scaffold(num_clients=1).client_fit(
            trainer, trainer.init_vector(0), fed.train_data(0), instr, 0, {"c": c_i}
        )
    assert res.fit.num_steps == 0
    assert np.array_equal(res.state["c"], c_i)
    assert np.array_equal(res.extras["control_delta"], np.zeros(3, np.float32))


def test_numpy_correction_equals_a_linear_term_in_the_torch_loss(blobs):
    model = NumpyLogisticRegression((10,), 4)
    rng = np.random.default_rng(0)
    w0 = rng.normal(0, 0.1, model.layout.size).astype(np.float32)
    corr = rng.normal(0, 0.5, model.layout.size).astype(np.float32)
    data = blobs.train.subset(np.arange(24))
    instr = FitInstructions(epochs=2, batch_size=8, lr=0.2, payload={"grad_correction": corr})
    res = model.fit(w0, data, instr, seed=5)
    # reference: SGD on CE + <corr, w>, whose gradient is g + corr
    lin = nn.Linear(10, 4)
    lin.load_state_dict(model.layout.to_state_dict(w0))
    parts = {k: torch.from_numpy(v) for k, v in model.layout.unflatten(corr).items()}
    opt = torch.optim.SGD(lin.parameters(), lr=0.2)
    order_rng = np.random.default_rng(5)
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    for _ in range(2):
        order = order_rng.permutation(24)
        for s in range(0, 24, 8):
            idx = torch.from_numpy(order[s : s + 8])
            opt.zero_grad()
            linear = (parts["weight"] * lin.weight).sum() + (parts["bias"] * lin.bias).sum()
            (F.cross_entropy(lin(x[idx]), y[idx]) + linear).backward()
            opt.step()
    np.testing.assert_allclose(res.vector, model.layout.flatten(lin.state_dict()), atol=1e-5)


def test_scaffold_learns_and_reruns_bit_identically(blobs):
    parts = [np.arange(i, len(blobs.train), 8) for i in range(8)]

    def run():
        strategy = Scaffold(
            num_clients=8, clients_per_round=4, local=FitInstructions(epochs=2, lr=0.05)
        )
        sim = Simulation(NumpyLogisticRegression((10,), 4), Federation(blobs, parts), strategy)
        return sim.run(5)

    a, b = run(), run()
    assert a.final["test_accuracy"] > 0.9
    assert a.history[-1]["train_loss"] < a.history[0]["train_loss"]
    assert np.array_equal(a.vector, b.vector)
    assert np.array_equal(a.strategy_state["c"], b.strategy_state["c"])
    assert _strip(a.history) == _strip(b.history)


def test_disk_state_store_gives_the_same_run_as_memory(blobs, tmp_path):
    parts = [np.arange(i, len(blobs.train), 10) for i in range(10)]
    stores = {"memory": MemoryStateStore(), "disk": DiskStateStore(tmp_path, num_clients=10)}
    results = {}
    for name, store in stores.items():
        strategy = Scaffold(
            num_clients=10, clients_per_round=4, local=FitInstructions(epochs=2, lr=0.1)
        )
        trainer = TorchTrainer(lambda: nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 4)))
        sim = Simulation(trainer, Federation(blobs, parts), strategy, seed=2, client_states=store)
        results[name] = sim.run(4)
    mem, disk = results["memory"], results["disk"]
    assert np.array_equal(mem.vector, disk.vector)
    assert np.array_equal(mem.strategy_state["c"], disk.strategy_state["c"])
    assert _strip(mem.history) == _strip(disk.history)
    assert len(stores["memory"]) == len(stores["disk"]) > 4
    for cid in range(10):
        m, d = stores["memory"].get(cid), stores["disk"].get(cid)
        assert (m is None) == (d is None)
        if m is not None:
            assert np.array_equal(m["c"], d["c"])


def test_misconfigurations_say_what_to_fix():
    with pytest.raises(ConfigError, match="num_clients is 4"):
        Scaffold(num_clients=4).configure_fit(
            1, np.zeros(2, np.float32), {"c": np.zeros(2)}, list(range(5)), np.random.default_rng()
        )
    with pytest.raises(ConfigError, match="server_lr"):
        Scaffold(num_clients=4, server_lr=0.0)
    s = Scaffold(num_clients=4, clients_per_round=2)
    w = np.zeros(2, np.float32)
    with pytest.raises(FedfleetError, match=r"clients \[3\] sent no 'control_delta'"):
        s.aggregate_fit(1, w, s.init(w), [ClientUpdate(3, np.ones(2, np.float32), 5, 1)])
    fed = _quadratic_federation([2])
    trainer = TorchTrainer(_Point(), loss_fn=_half_squared_norm)
    with pytest.raises(ConfigError, match=r"no server control variate payload\['c'\]"):
        s.client_fit(trainer, trainer.init_vector(0), fed.train_data(0), FitInstructions(), 0, None)


def test_configure_fit_broadcasts_c_as_float32_without_touching_local():
    local = FitInstructions(epochs=2, payload={"other": np.ones(2, np.float32)})
    s = Scaffold(num_clients=10, clients_per_round=3, local=local)
    state = {"c": np.array([0.5, -0.25])}
    plan = s.configure_fit(
        1, np.zeros(2, np.float32), state, list(range(10)), np.random.default_rng(0)
    )
    assert len(plan) == 3 and [cid for cid, _ in plan] == sorted(cid for cid, _ in plan)
    for _, instr in plan:
        assert instr.payload["c"].dtype == np.float32
        np.testing.assert_array_equal(instr.payload["c"], [0.5, -0.25])
        assert instr.epochs == 2 and "other" in instr.payload
    assert set(local.payload) == {"other"}
