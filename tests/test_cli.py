"""The command line, run as a user runs it: a real process writing real files."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib

import numpy as np
import pytest

from fedfleet.runs import load_config, load_model_vector
from fedfleet.runs._build import build_run
from fedfleet.sim import TIMING_KEYS


def _fedfleet(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedfleet", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def _metrics(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_default_run_reaches_the_promised_accuracy_and_writes_its_outputs(tmp_path):
    out = tmp_path / "run"
    proc = _fedfleet("run", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "fedfleet run summary" in proc.stdout
    assert "test accuracy" in proc.stdout
    rows = _metrics(out)
    assert [r["round"] for r in rows] == list(range(1, 51))
    assert all(r["num_clients"] == 10 for r in rows)
    assert {"train_loss", "test_accuracy", "test_loss", "wall_time_s"} <= set(rows[-1])
    assert rows[-1]["test_accuracy"] >= 0.93

    # the resolved config loads back and is the default
    cfg = load_config(out / "config.toml")
    assert cfg == load_config()
    assert tomllib.loads((out / "config.toml").read_text())["data"]["name"] == "digits"

    # the saved model is the final model: evaluating it gives the last round's accuracy
    pieces = build_run(cfg)
    vec = load_model_vector(out / "model.safetensors", pieces.simulation.trainer.layout)
    ev = pieces.simulation.trainer.evaluate(vec, pieces.task.test)
    assert ev.accuracy == rows[-1]["test_accuracy"]


def test_same_config_and_seed_give_bit_identical_outputs(tmp_path):
    args = [
        "run",
        "-q",
        "--set",
        "rounds=4",
        "--set",
        "data.num_clients=8",
        "--set",
        "strategy.clients_per_round=3",
    ]
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert _fedfleet(*args, "--out", str(a)).returncode == 0
    assert _fedfleet(*args, "--out", str(b)).returncode == 0
    assert _fedfleet(*args, "--set", "seed=1", "--out", str(c)).returncode == 0
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()

    def strip(rows):
        return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]

    assert strip(_metrics(a)) == strip(_metrics(b))


def test_bad_config_exits_with_a_message_listing_valid_keys(tmp_path):
    proc = _fedfleet("run", "--set", "client.lrr=0.1", "--out", str(tmp_path / "x"))
    assert proc.returncode == 2
    assert "unknown key 'client.lrr'" in proc.stderr
    assert "valid keys in [client]" in proc.stderr
    assert not (tmp_path / "x").exists()  # nothing was started


def test_missing_dataset_directory_is_a_clear_error(tmp_path):
    proc = _fedfleet("run", "--set", "data.name=mnist", "--set", f"data.path={tmp_path / 'nope'}")
    assert proc.returncode == 2
    assert "nope" in proc.stderr


def test_numpy_backend_and_federated_eval_from_the_cli(tmp_path):
    out = tmp_path / "np"
    proc = _fedfleet(
        "run",
        "-q",
        "--out",
        str(out),
        "--set",
        "model.name=logreg",
        "--set",
        "model.backend=numpy",
        "--set",
        "rounds=5",
        "--set",
        "data.client_test_fraction=0.25",
        "--set",
        "eval.federated_every=5",
        "--set",
        "client.lr=0.5",
    )
    assert proc.returncode == 0, proc.stderr
    last = _metrics(out)[-1]
    assert 0.0 <= last["client_accuracy_worst10"] <= last["client_accuracy_mean"] <= 1.0
    assert last["test_accuracy"] > 0.8


def test_algorithms_command_lists_the_registry_and_one_algorithms_keys():
    proc = _fedfleet("algorithms")
    assert proc.returncode == 0, proc.stderr
    for name in ("fedavg", "scaffold", "fedbuff", "dpfedavg", "median", "trimmed-mean", "krum"):
        assert name in proc.stdout
    proc = _fedfleet("algorithms", "trimmed-mean")
    assert proc.returncode == 0, proc.stderr
    for key in ("clients_per_round", "server_lr", "beta", "0.1"):
        assert key in proc.stdout
    proc = _fedfleet("algorithms", "fedsgd")
    assert proc.returncode == 2
    assert "unknown strategy 'fedsgd'; registered: fedavg" in proc.stderr


def test_datasets_command_lists_sources():
    proc = _fedfleet("datasets")
    assert proc.returncode == 0, proc.stderr
    for name in (
        "digits",
        "mnist",
        "fashion-mnist",
        "femnist",
        "synthetic",
        "synthetic-population",
    ):
        assert name in proc.stdout
    assert "scikit-learn" in proc.stdout


def test_saved_model_matches_the_layout_fingerprint(tmp_path):
    from fedfleet.errors import LayoutError
    from fedfleet.models import mlp
    from fedfleet.params import Layout
    from fedfleet.runs import save_model

    layout = Layout.from_module(mlp((1, 8, 8), 10))
    vec = np.arange(layout.size, dtype=np.float32)
    path = save_model(tmp_path / "m.safetensors", vec, layout)
    assert np.array_equal(load_model_vector(path, layout), vec)
    other = Layout.from_module(mlp((1, 8, 8), 10, hidden=(64,)))
    with pytest.raises(LayoutError, match="written for layout"):
        load_model_vector(path, other)
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(LayoutError, match="cannot read model file"):
        load_model_vector(truncated, layout)
