"""The federated-evaluation record the simulation and the server both write."""

from __future__ import annotations

import numpy as np
import pytest

from fedfleet.evaluation import ClientEvaluation, evaluation_summary


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
