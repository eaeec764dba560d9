"""MLflow: the config as params, every round metric at step = round, each federated
evaluation's per-client numbers as a JSON artifact. Through ``MlflowClient`` on an explicit
tracking URI (no global active run), so several runs in one process do not mix."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from fedfleet.evaluation import ClientEvaluation
from fedfleet.tracking._base import (
    Closing,
    client_values,
    flatten_params,
    record_step,
    require,
    round_metrics,
)

__all__ = ["MLflowTracker"]

_PARAMS_PER_BATCH = 100  # MLflow's log_batch limits
_METRICS_PER_BATCH = 1000
_PARAM_CHARS = 6000


class MLflowTracker(Closing):
    """One MLflow run in experiment ``experiment`` at ``uri`` (e.g. ``sqlite:///runs/mlflow.db``
    or an ``http://`` server). ``run_id`` continues an existing run (a resumed fedfleet run);
    ``artifact_location`` is where a newly created experiment keeps artifacts.

    Per-client evaluations go to ``client_evaluation/round-NNNNN.json`` (``{"client_accuracy":
    [...], "client_loss": [...]}``): MLflow has no histograms."""

    def __init__(
        self,
        uri: str,
        *,
        experiment: str = "fedfleet",
        run_name: str | None = None,
        run_id: str | None = None,
        artifact_location: str | None = None,
    ) -> None:
        require("mlflow", "track.mlflow")
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self._client = MlflowClient(tracking_uri=uri)
        if run_id is None:
            found = self._client.get_experiment_by_name(experiment)
            experiment_id = (
                found.experiment_id
                if found is not None
                else self._client.create_experiment(experiment, artifact_location=artifact_location)
            )
            run_id = self._client.create_run(experiment_id, run_name=run_name).info.run_id
        else:
            self._client.update_run(run_id, status="RUNNING")
        self.run_id: str = run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:_PARAM_CHARS]) for k, v in flatten_params(params).items()]
        for i in range(0, len(items), _PARAMS_PER_BATCH):
            self._client.log_batch(self.run_id, params=items[i : i + _PARAMS_PER_BATCH])

    def log_round(self, record: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric

        rnd, now = record_step(record), int(time.time() * 1000)
        items = [Metric(k, v, now, rnd) for k, v in round_metrics(record).items()]
        for i in range(0, len(items), _METRICS_PER_BATCH):
            self._client.log_batch(self.run_id, metrics=items[i : i + _METRICS_PER_BATCH])

    def log_evaluation(self, rnd: int, reports: Sequence[ClientEvaluation]) -> None:
        if not reports:
            return
        values = {k: v.tolist() for k, v in client_values(reports).items()}
        self._client.log_dict(self.run_id, values, f"client_evaluation/round-{rnd:05d}.json")

    def close(self, *, interrupted: bool = False) -> None:
        self._client.set_terminated(self.run_id, "KILLED" if interrupted else "FINISHED")
