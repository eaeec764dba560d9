"""Run directories, through the command line in its own process: every run gets a directory of
its own, a run is never overwritten without being asked, and Ctrl-C stops after the round in
progress with its checkpoint on disk and the command that resumes it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedfleet.errors import ConfigError
from fedfleet.runs._checkpoint import load_checkpoint
from fedfleet.runs._interrupt import WAIT_ENV, GracefulInterrupt
from fedfleet.runs._rundir import check_new_run, new_run_dir
from fedfleet.sim import TIMING_KEYS

WAIT_S = 300.0  # generous: the machine may be shared and slow
SRC = str(Path(__file__).resolve().parents[1] / "src")
SHORT = [
    "--set",
    "rounds=2",
    "--set",
    "data.num_clients=8",
    "--set",
    "strategy.clients_per_round=4",
]


def _env(**extra: str) -> dict[str, str]:
    # the subprocess runs in tmp_path: the package must come from this checkout, not the cwd
    path = os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "COLUMNS": "200", **extra}


def _fedfleet(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedfleet", "run", "-q", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_env(),
        timeout=WAIT_S,
    )


def _records(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def test_runs_without_out_each_get_a_new_directory_under_runs(tmp_path):
    first = _fedfleet(*SHORT, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    second = _fedfleet(*SHORT, cwd=tmp_path)
    assert second.returncode == 0, second.stderr

    dirs = sorted((tmp_path / "runs").iterdir())
    assert len(dirs) == 2
    for d in dirs:
        assert d.name.startswith("digits-fedavg-")
        assert [r["round"] for r in _records(d)] == [1, 2]
        assert (d / "config.toml").is_file() and (d / "model.safetensors").is_file()
        assert load_checkpoint(d).round == 2
    # the summary says where each run is (rich may wrap the table, not the path's name)
    assert dirs[0].name in first.stdout and dirs[1].name in second.stdout
    assert _records(dirs[0]) == _records(dirs[1])  # the same seed: the same run, twice


def test_run_directories_made_in_the_same_second_differ(tmp_path):
    now = time.time()
    made = [new_run_dir(tmp_path / "runs", "digits-fedavg", now) for _ in range(3)]
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    names = [p.name for p in made]
    assert names == [
        f"digits-fedavg-{stamp}",
        f"digits-fedavg-{stamp}-2",
        f"digits-fedavg-{stamp}-3",
    ]
    assert all(p.is_dir() and not any(p.iterdir()) for p in made)


def test_out_into_a_directory_holding_a_run_is_refused_unless_overwrite(tmp_path):
    run = tmp_path / "run"
    done = _fedfleet("--out", str(run), *SHORT, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    metrics = (run / "metrics.jsonl").read_bytes()

    again = _fedfleet("--out", str(run), *SHORT, "--set", "seed=1", cwd=tmp_path)
    assert again.returncode == 2
    err = " ".join(again.stderr.split())
    assert f"--out {run} already holds a run (config.toml, metrics.jsonl)" in err, err
    assert f"fedfleet run --resume {run}" in err and "--overwrite" in err
    assert (run / "metrics.jsonl").read_bytes() == metrics  # untouched
    assert not (tmp_path / "runs").exists()

    replaced = _fedfleet("--out", str(run), *SHORT, "--set", "seed=1", "--overwrite", cwd=tmp_path)
    assert replaced.returncode == 0, replaced.stderr
    assert "seed = 1" in (run / "config.toml").read_text()
    assert load_checkpoint(run).seed == 1 and len(_records(run)) == 2


def test_check_new_run_accepts_an_empty_or_foreign_directory(tmp_path):
    check_new_run(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("mine")
    check_new_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(ConfigError, match="already holds a run"):
        check_new_run(tmp_path)
    check_new_run(tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"  # only a run's own files go
    assert not (tmp_path / "metrics.jsonl").exists()


INTERRUPTED = ["--set", "rounds=5", "--set", "executor=sequential"]


def test_ctrl_c_finishes_the_round_keeps_its_checkpoint_and_resumes_bit_identical(tmp_path):
    run, log = tmp_path / "run", tmp_path / "run.log"
    with log.open("wb") as err:
        # the hook holds round 2 after its first client until SIGINT arrives: no race
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedfleet", "run", "-q", "--out", str(run), *INTERRUPTED],
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=tmp_path,
            env=_env(**{WAIT_ENV: "2"}),
        )
    deadline = time.monotonic() + WAIT_S
    while "waiting for Ctrl-C" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the run never reached round 2 ({proc.returncode}): {log.read_text()}")
        time.sleep(0.02)
    assert [r["round"] for r in _records(run)] == [1]  # round 2 is in progress
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=WAIT_S) == 130, log.read_text()
    proc.stdout.close()

    stderr = " ".join(log.read_text().split())
    assert "finishing round 2" in stderr
    assert f"interrupted after round 2; its checkpoint is in {run}" in stderr
    assert f"fedfleet run --resume {run}" in stderr
    assert [r["round"] for r in _records(run)] == [1, 2]  # the round finished, then it stopped
    assert load_checkpoint(run).round == 2
    assert not (run / "model.safetensors").exists()  # no final model of an unfinished run

    resumed = _fedfleet("--resume", str(run), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    reference = _fedfleet("--out", str(tmp_path / "ref"), *INTERRUPTED, cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr
    assert [r["round"] for r in _records(run)] == [1, 2, 3, 4, 5]
    assert _records(run) == _records(tmp_path / "ref")
    model = (run / "model.safetensors").read_bytes()
    assert model == (tmp_path / "ref" / "model.safetensors").read_bytes()


def test_the_first_sigint_asks_to_stop_the_second_interrupts_and_the_handler_is_restored():
    before = signal.getsignal(signal.SIGINT)
    told: list[bool] = []
    with GracefulInterrupt(lambda: told.append(True)) as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGINT)  # handlers run in the main thread, right away
        assert stop.requested and told == [True]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # not reached: the signal interrupts before
    assert signal.getsignal(signal.SIGINT) is before
