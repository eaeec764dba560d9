"""Local trainers: the torch trainer against a hand-written PyTorch loop, and the NumPy ones."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import SGDClassifier
from torch import nn
from torch.nn import functional as F

from fedfleet.client import FitInstructions, NumpyLogisticRegression, SklearnTrainer, TorchTrainer
from fedfleet.data import ArrayDataset
from fedfleet.errors import ConfigError


def _factory():
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 4))


def test_torch_fit_equals_a_plain_pytorch_loop(blobs):
    trainer = TorchTrainer(_factory, optimizer="sgd", optimizer_args={"momentum": 0.9})
    w0 = trainer.init_vector(seed=1)
    data = blobs.train.subset(np.arange(50))
    instr = FitInstructions(epochs=2, batch_size=8, lr=0.1)
    res = trainer.fit(w0, data, instr, seed=7)

    # the reference: same init, same batch order, textbook loop
    ref = _factory()
    ref.load_state_dict(trainer.layout.to_state_dict(w0))
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(7)
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    steps = 0
    for _ in range(2):
        order = rng.permutation(50)
        for s in range(0, 50, 8):
            idx = torch.from_numpy(order[s : s + 8])
            opt.zero_grad()
            F.cross_entropy(ref(x[idx]), y[idx]).backward()
            opt.step()
            steps += 1
    np.testing.assert_allclose(res.vector, trainer.layout.flatten(ref.state_dict()), atol=1e-6)
    assert res.num_steps == steps == 14 and res.num_samples == 50
    assert np.isfinite(res.metrics["train_loss"])


def test_fit_does_not_mutate_the_global_vector_and_is_seeded(blobs):
    trainer = TorchTrainer(_factory)
    w0 = trainer.init_vector(seed=0)
    keep = w0.copy()
    instr = FitInstructions(epochs=1, batch_size=16, lr=0.1)
    a = trainer.fit(w0, blobs.train, instr, seed=3).vector
    b = trainer.fit(w0, blobs.train, instr, seed=3).vector
    c = trainer.fit(w0, blobs.train, instr, seed=4).vector
    assert np.array_equal(w0, keep)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_optimizer_state_does_not_leak_between_fits(blobs):
    trainer = TorchTrainer(_factory, optimizer="adam")
    w0 = trainer.init_vector(seed=0)
    instr = FitInstructions(epochs=1, batch_size=16, lr=0.01)
    first = trainer.fit(w0, blobs.train, instr, seed=1).vector
    trainer.fit(w0, blobs.train.subset(np.arange(100, 200)), instr, seed=2)  # builds up moments
    again = trainer.fit(w0, blobs.train, instr, seed=1).vector
    assert np.array_equal(first, again)


def test_max_steps_caps_local_work(blobs):
    trainer = TorchTrainer(_factory)
    res = trainer.fit(
        trainer.init_vector(0),
        blobs.train,
        FitInstructions(epochs=5, batch_size=10, lr=0.1, max_steps=7),
        seed=0,
    )
    assert res.num_steps == 7


def test_init_vector_depends_on_seed_only():
    trainer = TorchTrainer(_factory)
    torch.manual_seed(123)  # global RNG state must not matter
    a = trainer.init_vector(5)
    torch.manual_seed(999)
    assert np.array_equal(a, trainer.init_vector(5))
    assert not np.array_equal(a, trainer.init_vector(6))


def test_evaluate_matches_direct_computation(blobs):
    trainer = TorchTrainer(_factory, eval_batch_size=64)
    w = trainer.init_vector(0)
    ev = trainer.evaluate(w, blobs.test)
    model = trainer.export(w)
    with torch.no_grad():
        out = model(torch.from_numpy(blobs.test.x))
        y = torch.from_numpy(blobs.test.y)
        assert ev.accuracy == pytest.approx((out.argmax(1) == y).float().mean().item())
        assert ev.loss == pytest.approx(F.cross_entropy(out, y).item(), rel=1e-5)
    assert ev.num_samples == len(blobs.test)


def test_unknown_optimizer_lists_valid_ones():
    with pytest.raises(ConfigError, match=r"valid: .*adam.*sgd"):
        TorchTrainer(_factory, optimizer="sgdd")


def test_any_torch_optimizer_by_name_or_factory(blobs):
    for spec in ("rmsprop", "adagrad", torch.optim.AdamW):
        trainer = TorchTrainer(_factory, optimizer=spec)
        w0 = trainer.init_vector(0)
        res = trainer.fit(w0, blobs.train, FitInstructions(epochs=1, batch_size=32, lr=0.01), 0)
        assert not np.array_equal(res.vector, w0)


def test_numpy_logistic_regression_gradient_matches_torch(blobs):
    model = NumpyLogisticRegression((10,), 4)
    rng = np.random.default_rng(0)
    w0 = rng.normal(0, 0.1, model.layout.size).astype(np.float32)
    data = blobs.train.subset(np.arange(8))
    res = model.fit(w0, data, FitInstructions(epochs=1, batch_size=8, lr=0.5), seed=0)
    lin = nn.Linear(10, 4)
    lin.load_state_dict(model.layout.to_state_dict(w0))
    F.cross_entropy(lin(torch.from_numpy(data.x)), torch.from_numpy(data.y)).backward()
    with torch.no_grad():
        for p in lin.parameters():
            p -= 0.5 * p.grad
    np.testing.assert_allclose(res.vector, model.layout.flatten(lin.state_dict()), atol=1e-5)


def test_numpy_logistic_regression_learns(blobs):
    model = NumpyLogisticRegression((10,), 4)
    res = model.fit(
        model.init_vector(0), blobs.train, FitInstructions(epochs=5, batch_size=16, lr=0.1), seed=0
    )
    assert model.evaluate(res.vector, blobs.test).accuracy > 0.9


def test_sklearn_trainer_round_trips_coefficients_and_learns(blobs):
    trainer = SklearnTrainer(lambda: SGDClassifier(loss="log_loss"), (10,), 4)
    w0 = trainer.init_vector(0)
    res = trainer.fit(w0, blobs.train, FitInstructions(epochs=3, lr=0.01), seed=0)
    assert res.vector.shape == (trainer.layout.size,) == (44,)
    assert trainer.evaluate(res.vector, blobs.test).accuracy > 0.9
    # starting from a trained vector continues from it rather than from zeros
    cont = trainer.fit(
        res.vector, blobs.train.subset(np.arange(1)), FitInstructions(epochs=1, lr=1e-6), seed=0
    )
    np.testing.assert_allclose(cont.vector, res.vector, atol=1e-3)


def test_sklearn_trainer_binary_task():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    x = (y[:, None] * 3.0 + rng.normal(size=(200, 3))).astype(np.float32)
    data = ArrayDataset(x, y.astype(np.int64))
    trainer = SklearnTrainer(lambda: SGDClassifier(loss="log_loss"), (3,), 2)
    res = trainer.fit(trainer.init_vector(0), data, FitInstructions(epochs=3, lr=0.01), 0)
    assert trainer.evaluate(res.vector, data).accuracy > 0.9
