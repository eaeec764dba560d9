"""Evaluation summaries: the per-client accuracy distribution used as a fairness measure, and the
federated-evaluation record both the simulation and the server write."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import ceil, exp, isnan

import numpy as np

__all__ = ["ClientEvaluation", "evaluation_summary", "fairness_stats", "perplexity", "test_metrics"]


def perplexity(loss: float) -> float:
    """``exp(loss)``: the perplexity of a mean token cross-entropy ``loss`` (in nats), the
    number of equally likely next tokens the model is as unsure as; inf past float range."""
    if isnan(loss):
        return loss
    return exp(loss) if loss < 709.0 else float("inf")


def test_metrics(loss: float, accuracy: float) -> dict[str, float]:
    """The round record's centralized evaluation: ``test_loss`` (mean cross-entropy),
    ``test_accuracy`` (top-1; next-token accuracy on text) and ``test_perplexity``."""
    return {
        "test_loss": loss,
        "test_accuracy": accuracy,
        "test_perplexity": perplexity(loss),
    }


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


@dataclass(frozen=True)
class ClientEvaluation:
    """One client's evaluation on its held-out split; ``global_*`` is the global model's when
    the client evaluated a personalised model of its own (FedPer, FedRep), else None."""

    num_samples: int
    loss: float
    accuracy: float
    global_loss: float | None = None
    global_accuracy: float | None = None

    @property
    def personalized(self) -> bool:
        """The client evaluated a personalised model of its own (``global_*`` are set)."""
        return self.global_loss is not None


def evaluation_summary(reports: Sequence[ClientEvaluation]) -> dict[str, float]:
    """The round's federated-evaluation metrics: ``client_accuracy_{mean,worst10,min,std}``,
    the sample-weighted ``client_loss_mean``, ``client_perplexity`` (its exp: the perplexity
    of all clients' held-out samples pooled) and ``client_perplexity_mean`` (the mean of each
    client's own); when every report is personalised, the same
    for the global model as ``global_client_*``. Empty without reports."""
    if not reports:
        return {}
    counts = [r.num_samples for r in reports]
    stats = fairness_stats([r.accuracy for r in reports])
    out = {f"client_accuracy_{k}": v for k, v in stats.items()}
    out["client_loss_mean"] = float(np.average([r.loss for r in reports], weights=counts))
    # pooled over every held-out sample (token) of the clients, and each client's own
    out["client_perplexity"] = perplexity(out["client_loss_mean"])
    out["client_perplexity_mean"] = float(np.mean([perplexity(r.loss) for r in reports]))
    global_acc = [r.global_accuracy for r in reports if r.global_accuracy is not None]
    global_loss = [r.global_loss for r in reports if r.global_loss is not None]
    if len(global_acc) == len(global_loss) == len(reports):
        stats = fairness_stats(global_acc)
        out.update({f"global_client_accuracy_{k}": v for k, v in stats.items()})
        out["global_client_loss_mean"] = float(np.average(global_loss, weights=counts))
    return out
