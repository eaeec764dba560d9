"""DP-SGD: per-sample clipping against an autograd loop, plain SGD as the sigma=0 limit, the
stated noise, the accountant, learning."""

import math

import dp_accounting as dpa
import numpy as np
import pytest
import torch
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant
from torch import nn
from torch.nn import functional as F

from fedfleet.client import FitInstructions
from fedfleet.data import ArrayDataset
from fedfleet.errors import ConfigError
from fedfleet.privacy._dpsgd import DPSGDTrainer, _batches, dpsgd_epsilon
from fedfleet.sim import Federation, Simulation
from fedfleet.strategies import FedAvg


def _mlp():
    return nn.Sequential(nn.Linear(10, 8), nn.Tanh(), nn.Linear(8, 4))


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return ArrayDataset(rng.normal(size=(n, 10)).astype(np.float32), rng.integers(0, 4, n))


def _loop_grads(trainer, vector, x, y):
    """Reference: one autograd backward per sample, flattened in layout order."""
    model = trainer.export(vector)
    rows = []
    for i in range(len(x)):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        grads = dict(model.named_parameters())
        rows.append(torch.cat([grads[s.name].grad.reshape(-1) for s in trainer.layout.specs]))
    return torch.stack(rows)


def test_per_sample_grads_match_autograd_and_clipping_bounds_every_one():
    probe = DPSGDTrainer(_mlp, clip_norm=1.0, noise_multiplier=1.0)
    w = probe.init_vector(0)
    d = _data(32)
    x, y = torch.from_numpy(d.x), torch.from_numpy(d.y)
    flat = torch.from_numpy(w)
    ref = _loop_grads(probe, w, x, y)
    C = float(ref.norm(dim=1).median())  # half the samples get clipped
    trainer = DPSGDTrainer(_mlp, clip_norm=C, noise_multiplier=1.0)
    torch.testing.assert_close(trainer.per_sample_grads(flat, x, y), ref, rtol=1e-5, atol=1e-6)
    clipped, norms = trainer.clipped_grads(flat, x, y)
    ref_norms = ref.norm(dim=1)
    torch.testing.assert_close(norms, ref_norms, rtol=1e-5, atol=1e-6)
    assert (clipped.norm(dim=1) <= C * (1 + 1e-5)).all()
    big = ref_norms > C
    assert big.any() and (~big).any()
    torch.testing.assert_close(clipped[~big], ref[~big], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        clipped[big], ref[big] * (C / ref_norms[big]).unsqueeze(1), rtol=1e-5, atol=1e-6
    )


def test_no_noise_no_clipping_is_plain_sgd_on_the_same_batches():
    trainer = DPSGDTrainer(_mlp, clip_norm=math.inf, noise_multiplier=0.0, sampling="fixed")
    w = trainer.init_vector(0)
    d = _data(64)
    inst = FitInstructions(epochs=2, batch_size=8, lr=0.1)
    out = trainer.fit(w, d, inst, seed=5)
    steps = trainer.steps_for(64, inst)
    assert out.num_steps == steps == 16
    model = trainer.export(w)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.from_numpy(d.x), torch.from_numpy(d.y)
    for idx in _batches(64, 8, steps, "fixed", np.random.default_rng(5)):
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    np.testing.assert_allclose(out.vector, trainer.layout.flatten(model.state_dict()), atol=1e-6)
    assert "dpsgd_epsilon" not in out.metrics  # infinite epsilon is not reported


def test_noise_standard_deviation_within_one_percent():
    # same batches (root stream), noise from its own stream: the difference is lr * noise / B
    def make(z):
        return DPSGDTrainer(lambda: nn.Linear(1000, 100), clip_norm=2.0, noise_multiplier=z)

    quiet, noisy = make(0.0), make(1.5)
    w = quiet.init_vector(0)
    rng = np.random.default_rng(1)
    d = ArrayDataset(rng.normal(size=(40, 1000)).astype(np.float32), rng.integers(0, 100, 40))
    inst = FitInstructions(epochs=1, batch_size=10, lr=0.5, max_steps=1)
    diff = quiet.fit(w, d, inst, 3).vector.astype(np.float64) - noisy.fit(w, d, inst, 3).vector
    noise = diff * 10 / 0.5  # expected batch size q n = 10
    assert noise.std() == pytest.approx(1.5 * 2.0, rel=0.01)
    assert abs(noise.mean()) < 0.02


def test_poisson_batches_have_the_stated_rate():
    sizes = [len(b) for b in _batches(1000, 50, 400, "poisson", np.random.default_rng(0))]
    assert np.mean(sizes) == pytest.approx(50, rel=0.02)
    assert len(set(sizes)) > 5


@pytest.mark.parametrize("kind", ["pld", "rdp"])
def test_accountant_matches_dp_accounting(kind):
    z, q, steps, delta = 1.1, 0.02, 300, 1e-5
    event = dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z)), steps)
    if kind == "pld":
        acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-3)
    else:
        acc = rdp_privacy_accountant.RdpAccountant()
    acc.compose(event)
    assert dpsgd_epsilon(z, q, steps, delta, accountant=kind) == pytest.approx(
        acc.get_epsilon(delta), rel=1e-9
    )


def test_fixed_batches_are_accounted_under_replace_one():
    z, n, b, steps, delta = 1.0, 500, 25, 100, 1e-5
    acc = rdp_privacy_accountant.RdpAccountant(
        neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE
    )
    acc.compose(
        dpa.SelfComposedDpEvent(
            dpa.SampledWithoutReplacementDpEvent(n, b, dpa.GaussianDpEvent(z / 2)), steps
        )
    )
    got = dpsgd_epsilon(z, b / n, steps, delta, sampling="fixed", dataset_size=n)
    assert got == pytest.approx(acc.get_epsilon(delta), rel=1e-9)


def test_learns_on_blobs_and_reports_epsilon(blobs):
    fed = Federation(blobs, [np.arange(i, 400, 4) for i in range(4)])
    trainer = DPSGDTrainer(lambda: nn.Linear(10, 4), clip_norm=1.0, noise_multiplier=0.8)
    local = FitInstructions(epochs=1, batch_size=10, lr=0.5)
    result = Simulation(trainer, fed, FedAvg(clients_per_round=4, local=local), seed=0).run(5)
    assert result.final["test_accuracy"] > 0.8
    expected = dpsgd_epsilon(0.8, 10 / 100, 10, 1e-5)
    fit = trainer.fit(result.vector, fed.train_data(0), local, 0)
    assert fit.metrics["dpsgd_epsilon"] == pytest.approx(expected)
    assert 0 < expected < 10


def test_refuses_batchnorm_and_unclipped_noise():
    with pytest.raises(ConfigError, match="float buffers"):
        DPSGDTrainer(
            lambda: nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)),
            clip_norm=1.0,
            noise_multiplier=1.0,
        )
    with pytest.raises(ConfigError, match="finite clip_norm"):
        DPSGDTrainer(_mlp, clip_norm=math.inf, noise_multiplier=1.0)
