"""Evaluation summaries: the per-client accuracy distribution used as a fairness measure."""

from __future__ import annotations

from collections.abc import Sequence
from math import ceil

import numpy as np

__all__ = ["fairness_stats"]


def fairness_stats(accuracies: Sequence[float]) -> dict[str, float]:
    """Mean, worst-10% and standard deviation of per-client accuracies.

    ``worst10`` is the mean accuracy of the worst ceil(10%) of clients (at least one), the
    measure used by q-FFL (Li et al. 2020); ``min`` is the single worst client.
    """
    acc = np.sort(np.asarray(accuracies, dtype=np.float64))
    if acc.size == 0:
        return {}
    k = max(1, ceil(0.1 * acc.size))
    return {
        "mean": float(acc.mean()),
        "worst10": float(acc[:k].mean()),
        "min": float(acc[0]),
        "std": float(acc.std()),
    }
