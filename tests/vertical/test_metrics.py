"""The guest's metrics: fedfleet's own ROC AUC equals scikit-learn's, ties included."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fedfleet.vertical._holdout import classification_metrics, roc_auc


@pytest.mark.parametrize("tied", [False, True], ids=["distinct", "tied"])
def test_roc_auc_equals_scikit_learns(tied: bool) -> None:
    rng = np.random.default_rng(4)
    for _ in range(50):
        n = int(rng.integers(2, 400))
        y = rng.integers(0, 2, n)
        if len(np.unique(y)) < 2:
            continue
        score = rng.integers(0, 4, n).astype(float) if tied else rng.random(n)
        assert roc_auc(y == 1, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)


def test_perfect_reversed_and_constant_scores() -> None:
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y == 1, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(y == 1, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert roc_auc(y == 1, np.full(4, 0.5)) == 0.5
    assert classification_metrics(np.array([1, 1, 1]), np.array([0.2, 0.7, 0.9])) == {
        "accuracy": 2 / 3
    }  # one class: no AUC
