"""Experiment tracking read back from the real artefacts: TensorBoard event files through
TensorBoard's own ``EventAccumulator``, MLflow through ``MlflowClient`` on the run's SQLite
store. Every per-round metric the record holds arrives with its value, and each federated
evaluation's per-client accuracies arrive as a distribution (a histogram; a JSON artifact)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedfleet.runs import load_config
from fedfleet.runs._build import build_run
from fedfleet.runs._interrupt import WAIT_ENV
from fedfleet.sim import TIMING_KEYS
from fedfleet.tracking import MLflowTracker, TensorBoardTracker, Trackers

pytest.importorskip("tensorboard", reason="the track extra (tensorboard) is not installed")
pytest.importorskip("mlflow", reason="the track extra (mlflow) is not installed")
pytest.importorskip("sqlalchemy", reason="the track extra (MLflow's SQLite store) is not installed")

from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

WAIT_S = 300.0
SRC = str(Path(__file__).resolve().parents[1] / "src")
# DP-FedAvg with system profiles and federated evaluation: epsilon, simulated time and the
# per-client accuracy distribution are all in the records
SETS = [
    "rounds=4",
    "executor=sequential",
    "data.num_clients=8",
    "strategy.name=dpfedavg",
    "strategy.clients_per_round=4",
    "privacy.noise_multiplier=0.5",
    "clients.speed_spread=4",
    "data.client_test_fraction=0.25",
    "eval.federated_every=2",
]


def _events(log_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def _metric_keys(record: dict[str, Any]) -> list[str]:
    return [
        k
        for k, v in record.items()
        if k != "round" and isinstance(v, int | float) and math.isfinite(v)
    ]


def _assert_tensorboard_has(log_dir: Path, records: list[dict[str, Any]]) -> None:
    acc = _events(log_dir)
    tags = set(acc.Tags()["scalars"])
    for key in ("test_accuracy", "train_loss", "dp_epsilon", "sim_time_s", "client_accuracy_mean"):
        assert key in tags
    for key in {k for r in records for k in _metric_keys(r)}:
        logged = {e.step: e.value for e in acc.Scalars(key)}
        expected = {r["round"]: r[key] for r in records if key in r}
        assert len(acc.Scalars(key)) == len(expected), key  # each round once
        assert logged.keys() == expected.keys(), key
        for rnd, value in expected.items():
            assert logged[rnd] == np.float32(value), (key, rnd)  # TensorBoard keeps float32
    evaluated = [r for r in records if "client_accuracy_mean" in r]
    assert [r["round"] for r in evaluated] == [2, 4]
    hist = {e.step: e.histogram_value for e in acc.Histograms("client_accuracy")}
    assert sorted(hist) == [2, 4]
    for r in evaluated:
        h = hist[r["round"]]
        assert h.num == 8  # every client has a held-out split
        assert h.min == pytest.approx(r["client_accuracy_min"])
        assert h.sum / h.num == pytest.approx(r["client_accuracy_mean"])
        var = h.sum_squares / h.num - (h.sum / h.num) ** 2
        assert math.sqrt(max(var, 0.0)) == pytest.approx(r["client_accuracy_std"], abs=1e-9)
    assert "client_loss" in acc.Tags()["histograms"]


def _assert_mlflow_has(uri: str, run_id: str, records: list[dict[str, Any]]) -> None:
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["strategy.name"] == "dpfedavg"
    assert run.data.params["privacy.noise_multiplier"] == "0.5"
    for key in ("test_accuracy", "train_loss", "dp_epsilon", "sim_time_s", "client_accuracy_std"):
        history = client.get_metric_history(run_id, key)
        logged = sorted((m.step, m.value) for m in history)
        assert logged == [(r["round"], r[key]) for r in records if key in r], key
    paths = [a.path for a in client.list_artifacts(run_id, "client_evaluation")]
    assert paths == ["client_evaluation/round-00002.json", "client_evaluation/round-00004.json"]
    for r in records[1::2]:
        local = client.download_artifacts(run_id, f"client_evaluation/round-{r['round']:05d}.json")
        accuracies = json.loads(Path(local).read_text())["client_accuracy"]
        assert len(accuracies) == 8
        assert np.mean(accuracies) == pytest.approx(r["client_accuracy_mean"])
        assert min(accuracies) == r["client_accuracy_min"]


def test_python_api_trackers_log_every_round_metric_and_the_client_distribution(tmp_path):
    sim = build_run(load_config(None, SETS)).simulation
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tb = TensorBoardTracker(tmp_path / "tb")
    ml = MLflowTracker(
        uri, run_name="api", artifact_location=(tmp_path / "artifacts").resolve().as_uri()
    )
    with Trackers([tb, ml]) as trackers:
        trackers.log_params(load_config(None, SETS).model_dump(mode="json"))
        result = sim.run(4, on_round=trackers.log_round, on_evaluation=trackers.log_evaluation)
    records = [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in result.history]
    assert all("dp_epsilon" in r and "sim_time_s" in r for r in records)
    _assert_tensorboard_has(tmp_path / "tb", records)
    _assert_mlflow_has(uri, ml.run_id, records)


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "COLUMNS": "200", **extra}


def _cli(*args: str, cwd: Path, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "fedfleet", "run", "-q", *args],
        stdout=subprocess.DEVNULL,
        stderr=(cwd / "run.log").open("wb"),
        cwd=cwd,
        env=_env(**env),
    )


def test_the_cli_tracks_a_run_interrupted_and_resumed_as_one_run(tmp_path):
    """[track] from the command line; a run stopped by Ctrl-C in round 3 and resumed logs each
    round once, to the same MLflow run and TensorBoard directory."""
    run, log = tmp_path / "run", tmp_path / "run.log"
    sets = [a for s in SETS for a in ("--set", s)]
    proc = _cli(
        "--out", str(run), *sets, "--tensorboard", "--mlflow", cwd=tmp_path, **{WAIT_ENV: "3"}
    )
    deadline = time.monotonic() + WAIT_S
    while "waiting for Ctrl-C" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the run never reached round 3 ({proc.returncode}): {log.read_text()}")
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=WAIT_S) == 130, log.read_text()
    saved = json.loads((run / "mlflow_run.json").read_text())
    status = MlflowClient(tracking_uri=saved["uri"]).get_run(saved["run_id"]).info.status
    assert status == "KILLED"

    resumed = _cli("--resume", str(run), cwd=tmp_path)
    assert resumed.wait(timeout=WAIT_S) == 0, log.read_text()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    records = [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]
    assert [r["round"] for r in records] == [1, 2, 3, 4]
    assert saved["uri"] == f"sqlite:///{(run / 'mlflow.db').resolve()}"
    assert json.loads((run / "mlflow_run.json").read_text()) == saved  # the same MLflow run
    _assert_tensorboard_has(run / "tensorboard", records)
    _assert_mlflow_has(saved["uri"], saved["run_id"], records)


def test_a_tracker_without_its_package_is_one_clear_error_before_the_run(tmp_path):
    code = (
        "import sys; sys.modules['tensorboard'] = None\n"
        "from fedfleet.cli import main\n"
        "sys.argv = ['fedfleet', 'run', '-q', '--set', 'track.tensorboard=true']\n"
        "main()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(),
        timeout=WAIT_S,
    )
    assert proc.returncode == 2
    err = " ".join(proc.stderr.split())
    assert "track.tensorboard needs the tensorboard package" in err, proc.stderr
    assert "pip install 'fedfleet[track]'" in err
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()  # refused before a run directory was made
