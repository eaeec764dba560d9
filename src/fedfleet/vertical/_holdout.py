"""Held-out rows and the guest's metrics on them, for the protocols that train on aligned rows.

Every party derives the same train/test split from the protocol's ``seed`` alone (nothing is
exchanged), trains on the training rows and scores the test rows with the protocol's prediction
exchange; the guest, the only party with labels, turns the scores into metrics.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedfleet.vertical._party import PartyData

__all__ = [
    "HOLDOUT_ENTROPY",
    "classification_metrics",
    "regression_metrics",
    "standardized",
    "train_test",
]

HOLDOUT_ENTROPY = 0x484F4C
"""'HOL': the test split's root is ``[HOLDOUT_ENTROPY, seed]``, apart from the protocol's own
streams (so a protocol trained on all rows keeps its batches)."""


def train_test(seed: int, rows: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the training and test rows among ``rows`` aligned rows (both sorted):
    ``round(fraction * rows)`` test rows drawn from ``seed``; all rows train when 0."""
    if fraction <= 0.0:
        return np.arange(rows), np.arange(0)
    order = np.random.default_rng([HOLDOUT_ENTROPY, seed]).permutation(rows)
    n_test = round(fraction * rows)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def standardized(train: PartyData, test: PartyData) -> tuple[PartyData, PartyData]:
    """Both tables with each column scaled to zero mean, unit variance on the training rows
    (each party its own columns: nothing is exchanged)."""
    if not train.x.shape[1] or not len(train.ids):
        return train, test
    mean, std = train.x.mean(axis=0), train.x.std(axis=0)
    scale = np.where(std > 0, std, 1.0)

    def apply(d: PartyData) -> PartyData:
        return PartyData(d.name, d.ids, (d.x - mean) / scale, d.y, d.feature_names)

    return apply(train), apply(test)


def classification_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    """Accuracy of ``p >= 1/2`` against labels ``y`` in {0, 1}, and ROC AUC of ``p`` (when both
    classes occur)."""
    y = np.asarray(y)
    out: dict[str, Any] = {"accuracy": float(np.mean((p >= 0.5) == (y == 1)))}
    if len(np.unique(y)) == 2:
        out["auc"] = roc_auc(y == y.max(), p)
    return out


def roc_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of ``score`` for the rows where ``positive`` is true: the Mann-Whitney statistic
    (the chance a positive outscores a negative, ties counting half), from average ranks.

    Written here rather than taken from ``sklearn.metrics.roc_auc_score`` (which gives the same
    value) because importing scikit-learn's metrics costs each party's process ~1.5 s."""
    positive = np.asarray(positive, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    order = np.argsort(score, kind="stable")
    _, first, counts = np.unique(score[order], return_index=True, return_counts=True)
    ranks = np.empty(len(score))
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)  # 1-based, ties averaged
    n_pos = int(positive.sum())
    n_neg = len(score) - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """Root mean squared error and the coefficient of determination R^2."""
    y = np.asarray(y, dtype=np.float64)
    residual = float(np.sum((y - pred) ** 2))
    total = float(np.sum((y - y.mean()) ** 2))
    return {
        "rmse": float(np.sqrt(residual / len(y))),
        "r2": 1.0 - residual / total if total > 0 else float("nan"),
    }
