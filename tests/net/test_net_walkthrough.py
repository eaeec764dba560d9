"""The README's three-terminal walk-through, run as written (with a free port instead of 50051)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fedfleet.data import load_arrays, save_arrays
from fedfleet.errors import DatasetError
from fedfleet.net._cli import read_config
from fedfleet.runs import load_model_vector
from fedfleet.runs._build import build_federation, build_strategy, build_trainer, load_task_for
from fedfleet.sim import SequentialExecutor, Simulation

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "deploy"


def _fedfleet(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedfleet", *args]


def _walkthrough(tmp_path, client_args=None):
    """certs, a server and two clients as in examples/deploy/README.md; the server's output."""
    client_args = client_args or {}
    for name in ("server.toml", "client.toml"):
        shutil.copy(EXAMPLE / name, tmp_path / name)
    certs = subprocess.run(
        _fedfleet("certs", "--out-dir", "certs", "--num-clients", "2"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert certs.returncode == 0, certs.stderr
    port_file = tmp_path / "port"
    procs = []
    try:
        server = subprocess.Popen(
            _fedfleet(
                "server", "--config", "server.toml", "--port", "0", "--port-file", str(port_file)
            ),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        procs.append(server)
        deadline = time.monotonic() + 300
        while not (port_file.exists() and port_file.read_text().strip()):
            assert server.poll() is None, server.stdout.read()
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        address = f"127.0.0.1:{port_file.read_text().strip()}"
        for cid in ("0", "1"):
            procs.append(
                subprocess.Popen(
                    _fedfleet(
                        "client", "--config", "client.toml", "--client-id", cid, "--server", address
                    ),
                    cwd=tmp_path,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        out, _ = server.communicate(timeout=180)
        assert server.returncode == 0, out
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return tmp_path / "runs" / "deploy"


def test_three_terminal_walkthrough(tmp_path):
    run_dir = _walkthrough(tmp_path)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[-1]["test_accuracy"] > 0.5
    assert (run_dir / "model.safetensors").exists()
    assert (run_dir / "checkpoint.safetensors").exists()


def test_a_client_with_its_own_data_file_trains_the_same_model(tmp_path):
    """Client 1 brings its data as a file (exactly its partition): the result is the
    simulation's model, bit for bit."""
    cfg, _ = read_config(EXAMPLE / "server.toml")
    task = load_task_for(cfg)
    fed = build_federation(cfg, task)
    save_arrays(tmp_path / "mine.npz", fed.train_data(1))
    run_dir = _walkthrough(tmp_path, {"1": ["--data", str(tmp_path / "mine.npz")]})
    trainer = build_trainer(cfg, task)
    got = load_model_vector(run_dir / "model.safetensors", trainer.layout)
    strategy = build_strategy(cfg, trainer, fed.num_clients)
    sim = Simulation(trainer, fed, strategy, seed=cfg.seed, executor=SequentialExecutor())
    assert np.array_equal(got, sim.run(cfg.rounds).vector)


def test_bad_client_data_files_are_refused_with_the_reason(tmp_path):
    cfg, _ = read_config(EXAMPLE / "client.toml")
    task = load_task_for(cfg)
    np.savez(tmp_path / "wrong.npz", x=np.zeros((3, 5), np.float32), y=np.zeros(3, np.int64))
    with pytest.raises(DatasetError, match=r"samples of shape \(5,\).*takes \(1, 8, 8\)"):
        load_arrays(tmp_path / "wrong.npz", task)
    np.savez(tmp_path / "nolabels.npz", x=np.zeros((3, 1, 8, 8), np.float32))
    with pytest.raises(DatasetError, match="lacks y"):
        load_arrays(tmp_path / "nolabels.npz", task)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="cannot read client data file"):
        load_arrays(tmp_path / "junk.npz", task)
    proc = subprocess.run(
        _fedfleet(
            "client",
            "--config",
            str(EXAMPLE / "client.toml"),
            "--client-id",
            "0",
            "--server",
            "127.0.0.1:1",
            "--insecure",
            "--data",
            str(tmp_path / "wrong.npz"),
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "samples of shape (5,)" in proc.stderr
