"""Samplers: uniform K or C, Poisson, what a DP accountant assumes; declared once for every
strategy that samples."""

from __future__ import annotations

import numpy as np
import pytest

from fedfleet.client import FitInstructions
from fedfleet.errors import ConfigError
from fedfleet.privacy import DpAccounting, PaillierKeyHolder
from fedfleet.privacy.secagg._strategy import SecAggFedAvg
from fedfleet.strategies import FedAvg, FedNova, HEFedAvg, QFedAvg, Scaffold, Stragglers
from fedfleet.strategies._sampling import (
    AccountedSampling,
    PoissonSampling,
    Sampling,
    plan_round,
    sample_clients,
)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_uniform_sampling_is_k_distinct_sorted_clients():
    chosen = Sampling(clients_per_round=7).sample(range(50), _rng())
    assert len(set(chosen)) == 7 and chosen == sorted(chosen) and set(chosen) <= set(range(50))
    # the same draws as the plain function, and as many as there are when K exceeds them
    assert chosen == sample_clients(range(50), 7, _rng())
    assert Sampling(clients_per_round=7).sample([4, 2, 9], _rng()) == [2, 4, 9]


def test_fraction_rounds_and_keeps_at_least_one():
    assert len(Sampling(fraction=0.25).sample(range(10), _rng())) == 2  # round(2.5) = 2
    assert len(Sampling(fraction=0.01).sample(range(10), _rng())) == 1


def test_ten_clients_by_default_and_bad_settings_are_refused():
    assert Sampling().clients_per_round == 10
    with pytest.raises(ConfigError, match="exactly one"):
        Sampling(clients_per_round=3, fraction=0.5)
    with pytest.raises(ConfigError, match="clients_per_round must be >= 1"):
        Sampling(clients_per_round=0)
    with pytest.raises(ConfigError, match="fraction must be in"):
        Sampling(fraction=1.5)


def test_poisson_sampling_against_its_definition():
    clients = list(range(100, 1100))
    chosen = PoissonSampling(0.3).sample(clients, _rng(5))
    u = _rng(5).random(len(clients))
    assert chosen == [c for c, x in zip(clients, u, strict=True) if x < 0.3]
    # the cohort size is Binomial(N, q): mean Nq, sd sqrt(N q (1 - q))
    sizes = [len(PoissonSampling(0.3).sample(clients, _rng(s))) for s in range(300)]
    assert np.mean(sizes) == pytest.approx(300, abs=5 * np.sqrt(210 / 300))
    assert np.std(sizes) == pytest.approx(np.sqrt(210), rel=0.2)


def test_accounted_sampling_follows_the_accountant_and_its_population():
    poisson = DpAccounting(noise_multiplier=1.0, population=20, sampling_rate=0.5)
    fixed = DpAccounting(
        noise_multiplier=1.0, population=20, sampling="fixed", cohort_size=6, accountant="rdp"
    )
    ids = range(20)
    assert AccountedSampling(poisson).sample(ids, _rng(1)) == PoissonSampling(0.5).sample(
        ids, _rng(1)
    )
    assert AccountedSampling(fixed).sample(ids, _rng(1)) == sample_clients(ids, 6, _rng(1))
    with pytest.raises(ConfigError, match="population of 20 clients but 21"):
        AccountedSampling(poisson).sample(range(21), _rng())


def test_plan_round_samples_first_then_stragglers():
    local = FitInstructions(epochs=4)
    plain = plan_round(Sampling(clients_per_round=5), range(30), _rng(2), local)
    late = Stragglers(fraction=1.0, drop=False)
    cut = plan_round(Sampling(clients_per_round=5), range(30), _rng(2), local, late)
    assert [c for c, _ in plain] == [c for c, _ in cut]  # the same cohort
    assert all(i == local for _, i in plain) and all(1 <= i.epochs <= 4 for _, i in cut)


def test_the_sampling_fields_are_declared_once():
    public = PaillierKeyHolder.generate(key_bits=256).public
    made = [
        FedAvg(clients_per_round=3),
        FedNova(fraction=0.5),
        QFedAvg(q=1.0, clients_per_round=4),
        Scaffold(num_clients=10, clients_per_round=2),
        SecAggFedAvg(clip_norm=1.0, fraction=0.2),
        HEFedAvg(public=public),
    ]
    for strategy in made:
        assert isinstance(strategy, Sampling)
        own = type(strategy).__annotations__  # the fields the class itself declares
        assert {"clients_per_round", "fraction"}.isdisjoint(own), type(strategy)
        # the sampling is Sampling's: same draws for the same K or C
        same = Sampling(clients_per_round=strategy.clients_per_round, fraction=strategy.fraction)
        assert strategy.sample(range(40), _rng(3)) == same.sample(range(40), _rng(3))
    assert made[-1].clients_per_round == 10
