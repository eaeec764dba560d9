"""The cumulative DP-SGD ledger: composition against dp-accounting, and a real run's numbers."""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from fedfleet.client import FitInstructions
from fedfleet.errors import ConfigError
from fedfleet.privacy import DPSGDTrainer, dpsgd_epsilon
from fedfleet.privacy._dpsgd_ledger import DPSGDLedger, composed_dpsgd_epsilon
from fedfleet.sim import Federation, Simulation
from fedfleet.strategies import ClientUpdate, FedAvg


def test_rows_at_one_rate_compose_like_their_total_steps():
    rows = ((0.1, 30, 100), (0.1, 70, 100))
    assert composed_dpsgd_epsilon(rows, 1.0, 1e-5) == pytest.approx(
        dpsgd_epsilon(1.0, 0.1, 100, 1e-5), rel=1e-6
    )
    rdp = composed_dpsgd_epsilon(rows, 1.0, 1e-5, accountant="rdp")
    assert rdp == pytest.approx(dpsgd_epsilon(1.0, 0.1, 100, 1e-5, accountant="rdp"), rel=1e-6)


def test_mixed_rates_cost_more_than_either_part_alone():
    a, b = (0.05, 50, 200), (0.2, 50, 50)
    both = composed_dpsgd_epsilon((a, b), 1.0, 1e-5)
    assert both > composed_dpsgd_epsilon((a,), 1.0, 1e-5)
    assert both > composed_dpsgd_epsilon((b,), 1.0, 1e-5)
    assert composed_dpsgd_epsilon((), 1.0, 1e-5) == 0.0


def test_fixed_size_batches_compose_like_the_trainers_accountant():
    rows = ((0.1, 40, 100),)
    got = composed_dpsgd_epsilon(rows, 1.0, 1e-5, accountant="rdp", sampling="fixed")
    want = dpsgd_epsilon(1.0, 0.1, 40, 1e-5, sampling="fixed", dataset_size=100)
    assert got == pytest.approx(want, rel=1e-6)


def test_a_run_reports_the_worst_clients_cumulative_epsilon(blobs):
    """Every client trains every round, so client k has spent R * T_k steps at rate B / n_k."""
    parts = [np.arange(0, 150), np.arange(150, 250), np.arange(250, 400)]  # 150, 100, 150
    fed = Federation(blobs, parts)
    trainer = DPSGDTrainer(lambda: nn.Linear(10, 4), clip_norm=1.0, noise_multiplier=1.0)
    local = FitInstructions(epochs=1, batch_size=10, lr=0.5)
    ledger = DPSGDLedger(inner=FedAvg(clients_per_round=3, local=local), noise_multiplier=1.0)
    result = Simulation(trainer, fed, ledger, seed=0).run(3)
    per_round = [r["dpsgd_epsilon_max"] for r in result.history]
    for rnd, eps in enumerate(per_round, start=1):
        want = max(dpsgd_epsilon(1.0, 10 / len(p), rnd * len(p) // 10, 1e-5) for p in parts)
        assert eps == pytest.approx(want, rel=1e-6)
    assert per_round[0] < per_round[1] < per_round[2]
    book = result.strategy_state["dpsgd"]
    assert sorted(book["client"].tolist()) == [0, 1, 2]
    assert book["steps"].tolist() == [45, 30, 45]


def test_only_updates_that_report_a_rate_count():
    ledger = DPSGDLedger(inner=FedAvg(clients_per_round=2), noise_multiplier=1.0)
    w = np.zeros(3, np.float32)
    state = ledger.init(w)
    ups = [
        ClientUpdate(0, np.ones(3, np.float32), 50, 5, {"dpsgd_sample_rate": 0.2}),
        ClientUpdate(1, np.ones(3, np.float32), 50, 5, {}),  # not a DP-SGD fit: not in the book
    ]
    _, state, metrics = ledger.aggregate_fit(1, w, state, ups)
    assert state["dpsgd"]["client"].tolist() == [0]
    assert metrics["dpsgd_epsilon_max"] == pytest.approx(dpsgd_epsilon(1.0, 0.2, 5, 1e-5))
    _, state, metrics = ledger.aggregate_fit(2, w, state, [])
    assert metrics["dpsgd_epsilon_round_max"] == 0.0
    assert metrics["dpsgd_epsilon_max"] == pytest.approx(dpsgd_epsilon(1.0, 0.2, 5, 1e-5))


def test_needs_noise():
    with pytest.raises(ConfigError, match="noise_multiplier"):
        DPSGDLedger(inner=FedAvg(clients_per_round=2), noise_multiplier=0.0)
