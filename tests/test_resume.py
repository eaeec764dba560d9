"""Resuming simulations: ``fedfleet run --resume DIR`` after a SIGKILL ends bit-identical to a
run that never stopped (through the CLI, in its own process), and the checkpoint carries what
the round loop needs (in process, for every kind of state the engine keeps)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedfleet.errors import ConfigError, FedfleetError
from fedfleet.runs import dump_config, load_config
from fedfleet.runs._build import build_run
from fedfleet.runs._checkpoint import PAUSE_ENV, load_checkpoint, save_checkpoint
from fedfleet.runs._resume import check_resumable, config_changes, load_snapshot, save_snapshot
from fedfleet.sim import TIMING_KEYS, Simulation
from fedfleet.sim._engine import Snapshot

WAIT_S = 300.0  # generous: the machine may be shared and slow


def _fedfleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedfleet", "run", "-q", *args],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )


def _start(out: Path, args: list[str], pause_round: int, log: Path) -> subprocess.Popen[bytes]:
    """``fedfleet run --out out`` in the background; saving round ``pause_round``'s checkpoint
    stops it for good between writing the temporary file and the rename (the test hook), so it
    cannot finish before the test kills it."""
    env = {**os.environ, PAUSE_ENV: str(pause_round), "COLUMNS": "200"}
    with log.open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "fedfleet", "run", "-q", "--out", str(out), *args],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )


def _wait_for(proc: subprocess.Popen[bytes], log: Path, what: str, done: Any) -> None:
    deadline = time.monotonic() + WAIT_S
    while not done():
        if proc.poll() is not None:
            pytest.fail(f"the run exited ({proc.returncode}) before {what}: {log.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {what} after {WAIT_S:.0f} s: {log.read_text()}")
        time.sleep(0.02)


def _lines(path: Path) -> int:
    try:
        return path.read_text().count("\n")
    except FileNotFoundError:
        return 0


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=WAIT_S)


def _records(run_dir: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def _assert_same_run(resumed: Path, reference: Path, rounds: int) -> None:
    assert [r["round"] for r in _records(resumed)] == list(range(1, rounds + 1))
    assert _records(resumed) == _records(reference)
    model = (resumed / "model.safetensors").read_bytes()
    assert model == (reference / "model.safetensors").read_bytes()


DEFAULT = ["--set", "rounds=8"]
SCAFFOLD = ["--set", "rounds=6", "--set", "strategy.name=scaffold"]


def test_a_default_run_killed_mid_round_and_resumed_ends_bit_identical(tmp_path):
    run, log = tmp_path / "run", tmp_path / "run.log"
    proc = _start(run, DEFAULT, pause_round=4, log=log)
    # metrics line 3 is written after round 3's checkpoint; round 4 cannot commit
    _wait_for(proc, log, "round 3's metrics", lambda: _lines(run / "metrics.jsonl") >= 3)
    _kill(proc)
    assert _lines(run / "metrics.jsonl") == 3
    assert load_checkpoint(run).round == 3
    assert not (run / "model.safetensors").exists()

    resumed = _fedfleet("--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    reference = _fedfleet("--out", str(tmp_path / "ref"), *DEFAULT)
    assert reference.returncode == 0, reference.stderr
    _assert_same_run(run, tmp_path / "ref", rounds=8)
    assert load_checkpoint(run).round == 8


def test_scaffold_killed_while_writing_a_checkpoint_resumes_with_its_control_variates(tmp_path):
    run, log = tmp_path / "run", tmp_path / "run.log"
    proc = _start(run, SCAFFOLD, pause_round=3, log=log)
    _wait_for(proc, log, "the pause before round 3's commit", lambda: "pausing" in log.read_text())
    _kill(proc)
    assert (run / "checkpoint.safetensors.tmp").exists()  # round 3's, never committed
    ckpt = load_checkpoint(run)
    assert ckpt.round == 2 and _lines(run / "metrics.jsonl") == 2
    assert ckpt.client_states  # the sampled clients' control variates ride along

    resumed = _fedfleet("--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    reference = _fedfleet("--out", str(tmp_path / "ref"), *SCAFFOLD)
    assert reference.returncode == 0, reference.stderr
    _assert_same_run(run, tmp_path / "ref", rounds=6)


def test_resume_errors_say_what_is_wrong_and_how_to_recover(tmp_path):
    run = tmp_path / "run"
    done = _fedfleet("--out", str(run), "--set", "rounds=2")
    assert done.returncode == 0, done.stderr

    # --config/--set may repeat the run's config but not change it
    same = _fedfleet("--resume", str(run), "--set", "rounds=2")
    assert same.returncode == 0, same.stderr  # a finished run resumes to its end at once
    changed = _fedfleet("--resume", str(run), "--set", "rounds=5", "--set", "client.lr=0.1")
    assert changed.returncode == 2
    assert "change client.lr, rounds" in changed.stderr and "--out" in changed.stderr

    ckpt = run / "checkpoint.safetensors"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])  # torn
    torn = _fedfleet("--resume", str(run))
    assert torn.returncode == 2
    assert len(torn.stderr.strip().splitlines()) == 1, torn.stderr
    assert "cannot read checkpoint" in torn.stderr and "without --resume" in torn.stderr

    ckpt.unlink()
    missing = _fedfleet("--resume", str(run))
    assert missing.returncode == 2
    assert len(missing.stderr.strip().splitlines()) == 1, missing.stderr
    assert "no checkpoint" in missing.stderr and "without --resume" in missing.stderr

    nowhere = _fedfleet("--resume", str(tmp_path / "nothing"))
    assert nowhere.returncode == 2 and "config.toml" in nowhere.stderr


def test_fedbuff_is_refused_by_name(tmp_path):
    cfg = load_config(None, ["strategy.name=fedbuff"])
    with pytest.raises(ConfigError, match=r"fedbuff.*asynchronous.*without --resume"):
        check_resumable(cfg)
    (tmp_path / "config.toml").write_text(dump_config(cfg))
    proc = _fedfleet("--resume", str(tmp_path))
    assert proc.returncode == 2 and "fedbuff" in proc.stderr


# ----- in process: every kind of state the round loop carries --------------------------------

CONFIGS = {
    "default": [],
    "scaffold": ["strategy.name=scaffold"],
    "fedadam": ["strategy.name=fedadam"],
    "dpfedavg-adaptive": [
        "strategy.name=dpfedavg",
        "privacy.noise_multiplier=0.5",
        "privacy.adaptive_quantile=0.5",
    ],
    "dpfedavg-target-epsilon": ["strategy.name=dpfedavg", "privacy.target_epsilon=20"],
    "fedper": [
        "strategy.name=fedper",
        "data.client_test_fraction=0.25",
        "eval.federated_every=1",
    ],
    "clock-deadline": [
        "clients.speed_spread=8",
        "clients.availability=0.7",
        "deadline.policy=partial",
        "deadline.seconds=60",
    ],
    "oort-compensation": [
        "clients.speed_spread=8",
        "selection.method=oort",
        "selection.preferred_s=60",
        "compensation.rule=scale_lr",
    ],
    "eval-every-3": ["eval.every=3"],
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_run_resumed_from_its_checkpoint_is_the_run_that_never_stopped(name, tmp_path):
    cfg = load_config(None, ["rounds=5", *CONFIGS[name]])
    at = 2
    sim = build_run(cfg).simulation
    assert isinstance(sim, Simulation)
    layout = sim.trainer.layout

    def keep(snap: Snapshot) -> None:
        if snap.round == at:
            save_snapshot(tmp_path, snap, seed=cfg.seed, layout=layout)

    full = sim.run(cfg.rounds, on_snapshot=keep)
    again = build_run(cfg).simulation
    assert isinstance(again, Simulation)
    snapshot = load_snapshot(tmp_path, seed=cfg.seed, layout=layout)
    resumed = again.run(cfg.rounds, resume=snapshot)

    np.testing.assert_array_equal(resumed.vector, full.vector)

    def plain(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rows = json.loads(json.dumps(history, default=float).replace("NaN", "null"))
        return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]

    assert plain(resumed.history) == plain(full.history)
    if name == "clock-deadline":
        assert resumed.history[-1]["sim_time_s"] == full.history[-1]["sim_time_s"] > 0
    if name in ("scaffold", "fedper"):
        assert snapshot.client_states


def test_checkpoint_round_trips_client_state_and_the_loops_scalars(tmp_path):
    rng = np.random.default_rng(0)
    vector = rng.standard_normal(7).astype(np.float32)
    state = {"server_optimizer": {"m": rng.standard_normal(7)}, "clip_norm": 0.1 + 0.2}
    clients = {
        3: {"c": rng.standard_normal(7).astype(np.float32)},
        11: {"c": np.zeros(7, np.float32), "head": rng.standard_normal(3).astype(np.float32)},
    }
    history = [{"round": 1, "train_loss": float("nan"), "sim_time_s": 1 / 3}]
    carry = {"engine": "simulation", "sim_time_s": 1 / 3}
    save_checkpoint(
        tmp_path, 1, 5, "fp", vector, state, history, client_states=clients, carry=carry
    )
    back = load_checkpoint(tmp_path)
    assert (back.round, back.seed, back.fingerprint, back.carry) == (1, 5, "fp", carry)
    np.testing.assert_array_equal(back.vector, vector)
    assert back.state["clip_norm"] == state["clip_norm"]
    assert back.state["server_optimizer"]["m"].dtype == np.float64
    np.testing.assert_array_equal(
        back.state["server_optimizer"]["m"], state["server_optimizer"]["m"]
    )
    assert back.client_states.keys() == {3, 11}
    for cid, named in clients.items():
        assert back.client_states[cid].keys() == named.keys()
        for key, value in named.items():
            assert back.client_states[cid][key].dtype == np.float32
            np.testing.assert_array_equal(back.client_states[cid][key], value)
    assert back.history == [{"round": 1, "train_loss": None, "sim_time_s": 1 / 3}]

    # a server's checkpoint (no client state, no carry) still loads, and is not a simulation's
    save_checkpoint(tmp_path, 4, 5, "fp", vector, state, history[:1] * 4)
    server = load_checkpoint(tmp_path)
    assert server.client_states == {} and server.carry == {}


def test_a_snapshot_must_match_the_runs_seed_layout_and_engine(tmp_path):
    cfg = load_config(None, ["rounds=2"])
    sim = build_run(cfg).simulation
    assert isinstance(sim, Simulation)
    layout = sim.trainer.layout
    snap = Snapshot(1, np.zeros(layout.size, np.float32), {}, {}, [{"round": 1}])
    save_snapshot(tmp_path, snap, seed=0, layout=layout)
    assert load_snapshot(tmp_path, seed=0, layout=layout).round == 1
    with pytest.raises(FedfleetError, match=r"seed 0.*gives seed 1"):
        load_snapshot(tmp_path, seed=1, layout=layout)
    save_checkpoint(tmp_path, 1, 0, layout.fingerprint, snap.vector, {}, snap.history)
    with pytest.raises(FedfleetError, match="fedfleet server --resume"):
        load_snapshot(tmp_path, seed=0, layout=layout)
    with pytest.raises(FedfleetError, match=r"no checkpoint.*without --resume"):
        load_snapshot(tmp_path / "empty", seed=0, layout=layout)


def test_the_engine_refuses_a_snapshot_that_does_not_fit(tmp_path):
    cfg = load_config(None, ["rounds=2"])
    sim = build_run(cfg).simulation
    assert isinstance(sim, Simulation)
    size = sim.trainer.layout.size
    with pytest.raises(FedfleetError, match="float32"):
        sim.run(2, resume=Snapshot(1, np.zeros(size + 1, np.float32), {}, {}, [{}]))
    with pytest.raises(FedfleetError, match="past this run's 2 rounds"):
        sim.run(2, resume=Snapshot(3, np.zeros(size, np.float32), {}, {}, [{}] * 3))


def test_config_changes_names_the_dotted_keys():
    a = load_config(None, [])
    b = load_config(None, ["rounds=3", "strategy.name=scaffold"])
    assert config_changes(a, a) == []
    assert config_changes(a, b) == ["rounds", "strategy.name"]
