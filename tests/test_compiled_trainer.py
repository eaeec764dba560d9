"""CompiledTrainer: each client's numba-compiled loop equals TorchTrainer's fit of it.

The reference is TorchTrainer (itself tested against a plain PyTorch loop) on the same model,
batches and SGD options; agreement is to float32 rounding (another summation order).
"""

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fedfleet.client import FitInstructions, TorchTrainer
from fedfleet.client._compiled_trainer import CompiledTrainer
from fedfleet.data import ArrayDataset
from fedfleet.errors import ConfigError, DatasetError

ATOL = 1e-5


def _mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))


def _deep_mlp():  # three layers, one without bias, a ReLU-less hidden layer
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(12, 8),
        nn.ReLU(),
        nn.Linear(8, 8, bias=False),
        nn.Linear(8, 6),
        nn.ReLU(),
        nn.Linear(6, 4),
    )


def _logreg():
    return nn.Sequential(nn.Linear(12, 4))


MODELS = {"mlp": _mlp, "deep": _deep_mlp, "logreg": _logreg}


def _datasets(sizes, seed=0, shape=(12,)):
    rng = np.random.default_rng(seed)
    out = []
    for n in sizes:
        y = rng.integers(0, 4, n)
        x = (rng.normal(size=(n, 12)) + y[:, None]).astype(np.float32)
        out.append(ArrayDataset(x.reshape(n, *shape), y.astype(np.int64)))
    return out


def _compare(factory, args, instructions, sizes=(1, 7, 30, 64), shape=(12,)):
    compiled = CompiledTrainer(factory, args, workers=2)
    torch_trainer = TorchTrainer(factory, F.cross_entropy, "sgd", args)
    w0 = compiled.init_vector(seed=3)
    data = _datasets(sizes, shape=shape)
    seeds = [11 * i + 1 for i in range(len(data))]
    got = compiled.fit_cohort(w0, data, [instructions] * len(data), seeds)
    for g, d, s in zip(got, data, seeds, strict=True):
        ref = torch_trainer.fit(w0, d, instructions, s)
        np.testing.assert_allclose(g.vector, ref.vector, atol=ATOL, rtol=0)
        assert np.max(np.abs(g.vector - w0)) > 1e-3  # it trained
        assert (g.num_steps, g.num_samples) == (ref.num_steps, ref.num_samples)
        assert g.metrics["train_loss"] == pytest.approx(ref.metrics["train_loss"], abs=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize(
    "args",
    [
        {},
        {"momentum": 0.9},
        {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-2},
        {"momentum": 0.5, "dampening": 0.3},
    ],
)
def test_matches_torch_trainer_with_every_sgd_option(name, args):
    _compare(MODELS[name], args, FitInstructions(epochs=3, batch_size=8, lr=0.05))


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_prox_mu_and_grad_correction_match_torch_trainer(momentum):
    w_size = CompiledTrainer(_mlp).layout.size
    correction = np.random.default_rng(5).normal(size=w_size).astype(np.float32) * 0.05
    instructions = FitInstructions(
        epochs=2,
        batch_size=5,
        lr=0.1,
        config={"prox_mu": 0.3},
        payload={"grad_correction": correction},
    )
    _compare(_mlp, {"momentum": momentum}, instructions)


def test_images_through_flatten_and_max_steps():
    _compare(_mlp, {}, FitInstructions(epochs=5, batch_size=4, lr=0.05, max_steps=9), shape=(3, 4))


def test_bit_identical_for_any_workers_and_run_to_run_and_vector_untouched():
    data = _datasets([3, 50, 9, 200, 1, 41])
    ins = [FitInstructions(epochs=2, batch_size=7, lr=0.05 * (i + 1)) for i in range(6)]
    w0 = CompiledTrainer(_mlp).init_vector(seed=0)
    keep = w0.copy()
    runs = [CompiledTrainer(_mlp, workers=k).fit_cohort(w0, data, ins, range(6)) for k in (1, 3, 3)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            assert np.array_equal(a.vector, b.vector)
            assert a.metrics == b.metrics
    assert np.array_equal(w0, keep)
    assert len({r.vector.tobytes() for r in runs[0]}) == 6  # each client its own result


def test_empty_clients_and_zero_epochs_return_the_global_vector():
    trainer = CompiledTrainer(_logreg)
    w0 = trainer.init_vector(seed=0)
    empty = ArrayDataset(np.zeros((0, 12), np.float32), np.zeros(0, np.int64))
    one = _datasets([5])[0]
    res = trainer.fit_cohort(
        w0, [empty, one], [FitInstructions(), FitInstructions(epochs=0)], [0, 1]
    )
    for r in res:
        assert np.array_equal(r.vector, w0) and r.num_steps == 0 and r.metrics == {}


def test_bad_inputs_are_refused_naming_the_client():
    trainer = CompiledTrainer(_mlp)
    w0 = trainer.init_vector(seed=0)
    good, bad = _datasets([5, 5])
    bad_labels = ArrayDataset(bad.x, np.array([0, 1, 4, 2, 3]))
    with pytest.raises(DatasetError, match="client 1 has label 4; the model has 4 classes"):
        trainer.fit_cohort(w0, [good, bad_labels], [FitInstructions()] * 2, [0, 1])
    negative = ArrayDataset(bad.x, np.array([0, -1, 2, 2, 3]))
    with pytest.raises(DatasetError, match="client 0 has label -1"):
        trainer.fit(w0, negative, FitInstructions(), 0)
    wide = ArrayDataset(np.zeros((5, 13), np.float32), bad.y)
    with pytest.raises(DatasetError, match="client 1's samples have 13 features"):
        trainer.fit_cohort(w0, [good, wide], [FitInstructions()] * 2, [0, 1])
    with pytest.raises(ConfigError, match="client 0: batch_size must be >= 1"):
        trainer.fit(w0, good, FitInstructions(batch_size=0), 0)
    with pytest.raises(ConfigError, match="prox_mu"):
        trainer.fit(w0, good, FitInstructions(config={"prox_mu": -1.0}), 0)


def test_models_and_options_it_cannot_train_are_refused():
    with pytest.raises(ConfigError, match=r"nn\.Sequential of Flatten, Linear and ReLU"):
        CompiledTrainer(lambda: nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)))
    with pytest.raises(ConfigError, match=r"nn\.Sequential of Flatten, Linear and ReLU"):
        CompiledTrainer(lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()))
    with pytest.raises(ConfigError, match="valid optimizer_args"):
        CompiledTrainer(_mlp, {"betas": (0.9, 0.99)})
    with pytest.raises(ConfigError, match="nesterov momentum requires"):
        CompiledTrainer(_mlp, {"nesterov": True})


def test_evaluate_and_export_are_the_sequential_trainers():
    trainer = CompiledTrainer(_mlp)
    w0 = trainer.init_vector(seed=0)
    data = _datasets([40])[0]
    assert trainer.evaluate(w0, data) == trainer.sequential.evaluate(w0, data)
    model = trainer.export(w0)
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()
    assert np.array_equal(flat, w0)


def test_a_relu_on_the_logits_matches_torch_trainer():
    def relu_out():
        return nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4), nn.ReLU())

    _compare(relu_out, {}, FitInstructions(epochs=3, batch_size=4, lr=0.1))


def test_a_batch_wider_than_the_data_trains_the_whole_data_per_step():
    _compare(_mlp, {"momentum": 0.5}, FitInstructions(epochs=4, batch_size=10**6, lr=0.05))
    trainer = CompiledTrainer(_logreg)
    job = trainer._job(0, _datasets([5])[0], FitInstructions(epochs=2, batch_size=10**6), 0)
    assert job.batches.shape == (2, 5)  # not 10**6 columns of padding


def test_more_bad_settings_are_refused_with_what_and_who():
    with pytest.raises(ConfigError, match="momentum and weight_decay must be >= 0"):
        CompiledTrainer(_mlp, {"momentum": -0.5})
    with pytest.raises(ConfigError, match="momentum and weight_decay must be >= 0"):
        CompiledTrainer(_mlp, {"weight_decay": -1e-3})
    trainer = CompiledTrainer(_mlp)
    w0 = trainer.init_vector(seed=0)
    good = _datasets([6])[0]
    with pytest.raises(ConfigError, match="client 0: lr must be >= 0"):
        trainer.fit(w0, good, FitInstructions(lr=-0.1), 0)
    float_labels = ArrayDataset(good.x, good.y.astype(np.float32))
    with pytest.raises(DatasetError, match="client 1's labels are float32"):
        trainer.fit_cohort(w0, [good, float_labels], [FitInstructions()] * 2, [0, 1])
    two_d = ArrayDataset(good.x, good.y.reshape(6, 1))
    with pytest.raises(DatasetError, match="client 0's labels"):
        trainer.fit(w0, two_d, FitInstructions(), 0)
