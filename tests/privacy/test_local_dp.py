"""Local DP: clipping and noise on the client, the stated noise, accounting, learning."""

import dataclasses

import dp_accounting as dpa
import numpy as np
import pytest
from dp_accounting.pld import pld_privacy_accountant
from torch import nn

from fedfleet.client import FitInstructions, TorchTrainer
from fedfleet.errors import ConfigError
from fedfleet.privacy import LocalDP, local_epsilon
from fedfleet.sim import TIMING_KEYS, Federation, Simulation
from fedfleet.strategies import FedAvg

LOCAL = FitInstructions(epochs=1, batch_size=16, lr=0.1)


def _factory():
    return nn.Linear(10, 4)


def _sim(blobs, strategy, seed=0):
    fed = Federation(blobs, [np.arange(i, 400, 20) for i in range(20)])
    return Simulation(TorchTrainer(_factory), fed, strategy, seed=seed)


@pytest.mark.parametrize("source", ["seeded", "secure"])
def test_noise_standard_deviation_within_one_percent(source):
    ldp = LocalDP(strategy=FedAvg(), clip_norm=0.5, noise_multiplier=3.0, noise=source)
    upload, norm = ldp.privatize(np.zeros(1_000_000), seed=7)
    assert norm == 0.0
    assert upload.std() == pytest.approx(1.5, rel=0.01)
    assert abs(upload.mean()) < 0.01


def test_upload_is_the_clipped_delta_plus_seeded_noise():
    ldp = LocalDP(strategy=FedAvg(), clip_norm=1.0, noise_multiplier=0.5)
    delta = np.full(100, 3.0)  # norm 30: clipped to 1
    upload, norm = ldp.privatize(delta, seed=11)
    noise = np.random.default_rng(np.random.SeedSequence(11, spawn_key=(1,))).normal(0, 0.5, 100)
    np.testing.assert_allclose(upload - noise, delta / 30.0, rtol=1e-12)
    assert norm == pytest.approx(30.0)
    again, _ = ldp.privatize(delta, seed=11)
    assert np.array_equal(upload, again)
    other, _ = ldp.privatize(delta, seed=12)
    assert not np.array_equal(upload, other)


def test_upload_norm_distribution_matches_the_mechanism():
    # ||clip(d) + N(0, s^2 I)||^2 has mean S^2 + dim s^2 and variance 2 dim s^4 + 4 S^2 s^2
    S, z, dim, draws = 1.0, 0.2, 200, 4000
    ldp = LocalDP(strategy=FedAvg(), clip_norm=S, noise_multiplier=z)
    delta = np.ones(dim) * 5.0
    sq = np.array([np.sum(ldp.privatize(delta, seed=s)[0] ** 2) for s in range(draws)])
    s2 = (z * S) ** 2
    mean, var = S**2 + dim * s2, 2 * dim * s2**2 + 4 * S**2 * s2
    assert sq.mean() == pytest.approx(mean, abs=5 * np.sqrt(var / draws))
    assert sq.var() == pytest.approx(var, rel=0.1)


def test_client_delta_is_clipped_before_upload(blobs):
    ldp = LocalDP(strategy=FedAvg(local=LOCAL), clip_norm=0.3, noise_multiplier=0.0)
    trainer = TorchTrainer(_factory)
    w = trainer.init_vector(0)
    big = FitInstructions(epochs=3, batch_size=8, lr=1.0)
    res = ldp.client_fit(trainer, w, blobs.train, big, 0, None)
    assert np.linalg.norm(res.fit.vector.astype(np.float64) - w) <= 0.3 + 1e-6
    assert res.fit.metrics["ldp_unclipped"] == 0.0


def test_every_uploaded_delta_respects_the_bound_in_a_run(blobs):
    seen = []

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Spy(FedAvg):
        def aggregate_fit(self, rnd, vector, state, updates):
            seen.extend(np.linalg.norm(u.delta.astype(np.float64)) for u in updates)
            return super().aggregate_fit(rnd, vector, state, updates)

    big = FitInstructions(epochs=2, batch_size=8, lr=1.0)
    _sim(blobs, LocalDP(strategy=Spy(local=big), clip_norm=0.25, noise_multiplier=0.0)).run(3)
    assert len(seen) == 30 and max(seen) <= 0.25 + 1e-5


def test_runs_are_reproducible_and_report_epsilon(blobs):
    strategy = LocalDP(strategy=FedAvg(local=LOCAL), clip_norm=1.0, noise_multiplier=1.0)
    a, b = _sim(blobs, strategy).run(3), _sim(blobs, strategy).run(3)
    assert np.array_equal(a.vector, b.vector)
    strip = [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in a.history]
    assert strip == [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in b.history]
    assert [h["ldp_epsilon"] for h in a.history] == [local_epsilon(1.0, r, 1e-5) for r in (1, 2, 3)]
    assert not np.array_equal(a.vector, _sim(blobs, strategy, seed=1).run(3).vector)


def test_learns_with_small_noise(blobs):
    strategy = LocalDP(strategy=FedAvg(local=LOCAL), clip_norm=2.0, noise_multiplier=0.01)
    assert _sim(blobs, strategy).run(10).final["test_accuracy"] > 0.8


def test_local_epsilon_against_dp_accounting():
    z, r, delta = 4.0, 10, 1e-5
    acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(z / 2), r))  # replace-one: 2S
    assert local_epsilon(z, r, delta) == pytest.approx(acc.get_epsilon(delta), rel=2e-3)
    # r Gaussians with multiplier m compose to one with m / sqrt(r)
    acc1 = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    acc1.compose(dpa.GaussianDpEvent(z / 2 / np.sqrt(r)))
    assert local_epsilon(z, r, delta) == pytest.approx(acc1.get_epsilon(delta), rel=2e-3)
    assert local_epsilon(z, r, delta, adjacency="add_remove") < local_epsilon(z, r, delta)
    assert local_epsilon(z, r, delta, accountant="rdp") >= local_epsilon(z, r, delta)
    assert local_epsilon(z, 0, delta) == 0.0


def test_config_is_validated():
    with pytest.raises(ConfigError, match="clip_norm"):
        LocalDP(strategy=FedAvg(), clip_norm=0.0, noise_multiplier=1.0)
    with pytest.raises(ConfigError, match="noise must be"):
        LocalDP(strategy=FedAvg(), clip_norm=1.0, noise_multiplier=1.0, noise="urandom")
