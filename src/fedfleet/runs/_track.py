"""The config's ``[track]`` section made into trackers for one run directory
(:mod:`fedfleet.tracking`): TensorBoard under ``RUN_DIR/tensorboard``, MLflow at
``track.mlflow_uri`` or a SQLite store ``RUN_DIR/mlflow.db`` (artifacts beside it).

A resumed run continues its MLflow run (its id is kept in ``RUN_DIR/mlflow_run.json``) and
TensorBoard's event stream from the checkpoint's round on."""

from __future__ import annotations

import json
from pathlib import Path

from fedfleet._atomic import atomic_write_bytes
from fedfleet.runs._config import RunConfig
from fedfleet.runs._sections import TrackConfig
from fedfleet.tracking import MLflowTracker, TensorBoardTracker, Trackers
from fedfleet.tracking._base import Tracker, require

__all__ = ["check_tracking", "open_trackers"]

MLFLOW_RUN = "mlflow_run.json"
"""Which MLflow run (tracking URI and run id) a run directory logs to."""


def check_tracking(track: TrackConfig) -> None:
    """ConfigError naming the ``fedfleet[track]`` extra when a tracker ``track`` asks for is
    not installed (checked before the run starts, not after its first round)."""
    if track.tensorboard:
        require("tensorboard", "track.tensorboard")
    if track.mlflow_on:
        require("mlflow", "track.mlflow")


def open_trackers(config: RunConfig, run_dir: Path, *, resume_round: int | None) -> Trackers:
    """The trackers ``config.track`` asks for, logging into ``run_dir``'s run; the config goes
    in as params unless the run is resumed (``resume_round``: the checkpoint's round)."""
    track = config.track
    trackers: list[Tracker] = []
    if track.tensorboard:
        purge = None if resume_round is None else resume_round + 1
        trackers.append(TensorBoardTracker(run_dir / "tensorboard", purge_step=purge))
    if track.mlflow_on:
        trackers.append(_mlflow(track, run_dir, resume=resume_round is not None))
    out = Trackers(trackers)
    if resume_round is None:
        out.log_params(config.model_dump(mode="json"))
    return out


def _mlflow(track: TrackConfig, run_dir: Path, *, resume: bool) -> MLflowTracker:
    uri = track.mlflow_uri or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
    saved = run_dir / MLFLOW_RUN
    if resume and saved.is_file():
        kept = json.loads(saved.read_text())
        if kept.get("uri") == uri:
            return MLflowTracker(uri, run_id=kept["run_id"])
    tracker = MLflowTracker(
        uri,
        experiment=track.mlflow_experiment,
        run_name=run_dir.resolve().name,
        artifact_location=(run_dir / "mlflow-artifacts").resolve().as_uri(),
    )
    atomic_write_bytes(saved, json.dumps({"uri": uri, "run_id": tracker.run_id}).encode())
    return tracker
