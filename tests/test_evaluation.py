"""The federated-evaluation record the simulation and the server both write."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedfleet.client import FitInstructions, NumpyLogisticRegression
from fedfleet.data import TaskData
from fedfleet.evaluation import ClientEvaluation, evaluation_summary
from fedfleet.sim import Federation, Simulation
from fedfleet.strategies import FedAvg, Reweighted, Strategy, by_samples
from fedfleet.strategies._wrapper import Wrapper


def test_summary_of_global_model_reports():
    reports = [ClientEvaluation(10, 0.5, 0.9), ClientEvaluation(30, 1.0, 0.3)]
    out = evaluation_summary(reports)
    assert out["client_accuracy_mean"] == pytest.approx(0.6)
    assert out["client_accuracy_min"] == out["client_accuracy_worst10"] == pytest.approx(0.3)
    assert out["client_accuracy_std"] == pytest.approx(0.3)
    assert out["client_loss_mean"] == pytest.approx((10 * 0.5 + 30 * 1.0) / 40)
    assert not any(k.startswith("global_") for k in out)


def test_personalised_reports_add_the_global_models_numbers():
    reports = [ClientEvaluation(10, 0.2, 1.0, 0.8, 0.5), ClientEvaluation(10, 0.4, 0.8, 0.6, 0.7)]
    out = evaluation_summary(reports)
    assert out["client_accuracy_mean"] == pytest.approx(0.9)
    assert out["global_client_accuracy_mean"] == pytest.approx(0.6)
    assert out["global_client_loss_mean"] == pytest.approx(np.mean([0.8, 0.6]))


def test_mixed_or_empty_reports():
    assert evaluation_summary([]) == {}
    mixed = [ClientEvaluation(5, 0.1, 0.5, 0.2, 0.4), ClientEvaluation(5, 0.1, 0.5)]
    assert "global_client_accuracy_mean" not in evaluation_summary(mixed)


# -- the strategy's evaluation phase, in simulation --------------------------------------------

LOCAL = FitInstructions(epochs=1, batch_size=16, lr=0.1)


def _federation(task: TaskData) -> Federation:
    """8 clients; client 3 holds no held-out split, so it never evaluates."""
    parts = [np.arange(i, len(task.train), 8) for i in range(8)]
    train = [p[: len(p) * 3 // 4] for p in parts]
    test = [p[len(p) * 3 // 4 :] if i != 3 else p[:0] for i, p in enumerate(parts)]
    return Federation(task, train, test)


def _reports(trainer, federation, vector, clients):
    evs = [trainer.evaluate(vector, federation.test_data(c)) for c in clients]
    return [ClientEvaluation(e.num_samples, e.loss, e.accuracy) for e in evs]


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvaluateHalf(Wrapper):
    """Half of the clients offered evaluate, drawn with the evaluation stream; the record also
    counts the reports."""

    inner: Strategy
    offered: list = dataclasses.field(default_factory=list, compare=False)
    chosen: list = dataclasses.field(default_factory=list, compare=False)

    def configure_evaluate(self, rnd, vector, state, clients, rng):
        picked = sorted(int(c) for c in rng.choice(clients, len(clients) // 2, replace=False))
        self.offered.append(list(clients))
        self.chosen.append(picked)
        return picked

    def aggregate_evaluate(self, rnd, reports):
        return {**self.inner.aggregate_evaluate(rnd, reports), "evaluated": float(len(reports))}


def test_the_default_phase_is_every_client_with_a_held_out_split(blobs):
    fed, trainer = _federation(blobs), NumpyLogisticRegression((10,), 4)
    sim = Simulation(trainer, fed, FedAvg(clients_per_round=4, local=LOCAL), federated_eval_every=1)
    result = sim.run(3)
    holders = [0, 1, 2, 4, 5, 6, 7]
    expected = evaluation_summary(_reports(trainer, fed, result.vector, holders))
    assert set(expected) <= set(result.final)
    assert {k: result.final[k] for k in expected} == expected  # exactly the same numbers


def test_a_strategy_picks_who_evaluates_and_adds_a_metric(blobs):
    fed, trainer = _federation(blobs), NumpyLogisticRegression((10,), 4)
    fedavg = FedAvg(clients_per_round=4, local=LOCAL)
    half = EvaluateHalf(inner=fedavg)
    result = Simulation(trainer, fed, half, seed=5, federated_eval_every=2).run(4)
    plain = Simulation(trainer, fed, fedavg, seed=5, federated_eval_every=2).run(4)
    assert half.offered == [[0, 1, 2, 4, 5, 6, 7]] * 2  # rounds 2 and 4; never client 3
    assert all(len(c) == 3 and set(c) <= set(half.offered[0]) for c in half.chosen)
    final = result.final
    assert final["evaluated"] == 3.0
    expected = evaluation_summary(_reports(trainer, fed, result.vector, half.chosen[-1]))
    assert {k: final[k] for k in expected} == expected
    assert "evaluated" not in result.history[0] and "client_accuracy_mean" not in result.history[0]
    # evaluation draws from its own stream: training is the plain run's, bit for bit
    assert np.array_equal(result.vector, plain.vector)
    # the same seed picks the same clients, and a wrapper passes the phase through
    again = EvaluateHalf(inner=fedavg)
    wrapped = Reweighted(inner=again, weighting=by_samples)
    rerun = Simulation(trainer, fed, wrapped, seed=5, federated_eval_every=2).run(4)
    assert again.chosen == half.chosen and rerun.final["evaluated"] == 3.0
    assert np.array_equal(rerun.vector, result.vector)
