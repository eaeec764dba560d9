"""The tracker protocol, the metrics a round record contributes, and a fan-out to several."""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping, Sequence
from types import ModuleType, TracebackType
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np

from fedfleet.errors import ConfigError
from fedfleet.evaluation import ClientEvaluation

__all__ = [
    "Closing",
    "Tracker",
    "Trackers",
    "flatten_params",
    "record_step",
    "require",
    "round_metrics",
]


@runtime_checkable
class Tracker(Protocol):
    """Where a run's numbers go besides ``metrics.jsonl``."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        """The run's configuration (nested sections allowed), once at the start."""

    def log_round(self, record: Mapping[str, Any]) -> None:
        """One round record (``Simulation.run``'s ``on_round``): every numeric metric."""

    def log_evaluation(self, rnd: int, reports: Sequence[ClientEvaluation]) -> None:
        """A federated evaluation's per-client reports (``on_evaluation``)."""

    def close(self, *, interrupted: bool = False) -> None:
        """Flush and end the run (``interrupted``: it stopped before its last round)."""


def record_step(record: Mapping[str, Any]) -> int:
    """The step a record belongs to: its ``round``, or for FedBuff (asynchronous, no rounds)
    the server model ``version`` it produced."""
    return int(record["round"] if "round" in record else record["version"])


def round_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """The record's metrics as floats: every int or float value but ``round`` (the step) and
    booleans; None (not measured this round) and non-finite values are left out."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key == "round" or isinstance(value, bool | np.bool_):
            continue
        if isinstance(value, int | float | np.integer | np.floating) and math.isfinite(value):
            out[key] = float(value)
    return out


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"client": {"lr": 0.2}}`` -> ``{"client.lr": "0.2"}``: the dotted keys ``--set``
    takes, values as text (what MLflow params and TensorBoard text hold)."""
    out: dict[str, str] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            out.update(flatten_params(value, f"{prefix}{key}."))
        elif value is not None:
            out[f"{prefix}{key}"] = str(value)
    return out


def client_values(reports: Sequence[ClientEvaluation]) -> dict[str, np.ndarray]:
    """Per-client arrays of a federated evaluation: ``client_accuracy``, ``client_loss`` and,
    when the clients evaluated personalised models, the global model's as
    ``global_client_*`` (the record's summary keys without their statistic)."""
    out = {
        "client_accuracy": np.array([r.accuracy for r in reports], dtype=np.float64),
        "client_loss": np.array([r.loss for r in reports], dtype=np.float64),
    }
    if reports and all(r.personalized for r in reports):
        out["global_client_accuracy"] = np.array(
            [r.global_accuracy for r in reports], dtype=np.float64
        )
        out["global_client_loss"] = np.array([r.global_loss for r in reports], dtype=np.float64)
    return out


def require(module: str, what: str) -> ModuleType:
    """Import ``module`` for ``what``, or a ConfigError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(
            f"{what} needs the {module.split('.')[0]} package ({e}); install the tracking "
            "extra: pip install 'fedfleet[track]'"
        ) from None


class Closing:
    """A tracker as a context manager: ``close`` on the way out, ``interrupted`` when an
    exception (a Ctrl-C) ends the block."""

    def close(self, *, interrupted: bool = False) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(interrupted=exc_type is not None)


class Trackers(Closing):
    """Several trackers as one (each call goes to each, in order); closing it closes them all."""

    def __init__(self, trackers: Sequence[Tracker] = ()) -> None:
        self.trackers = list(trackers)

    def log_params(self, params: Mapping[str, Any]) -> None:
        for t in self.trackers:
            t.log_params(params)

    def log_round(self, record: Mapping[str, Any]) -> None:
        for t in self.trackers:
            t.log_round(record)

    def log_evaluation(self, rnd: int, reports: Sequence[ClientEvaluation]) -> None:
        for t in self.trackers:
            t.log_evaluation(rnd, reports)

    def close(self, *, interrupted: bool = False) -> None:
        for t in self.trackers:
            t.close(interrupted=interrupted)
