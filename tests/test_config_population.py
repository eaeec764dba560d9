"""From the command line: a million lazily generated clients, and the device setting."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fedfleet.errors import ConfigError
from fedfleet.runs import load_config
from fedfleet.runs._build import build_population, build_run
from fedfleet.sim import SyntheticPopulation


def _fedfleet(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedfleet", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def test_a_million_clients_with_100_a_round_from_the_command_line(tmp_path):
    out = tmp_path / "run"
    sets = [
        "data.name=synthetic-population",
        "data.num_clients=1000000",
        "data.max_samples=200",
        "strategy.clients_per_round=100",
        "rounds=2",
    ]
    proc = _fedfleet("run", "-q", "--out", str(out), *[a for s in sets for a in ("--set", s)])
    assert proc.returncode == 0, proc.stderr
    assert "over 1000000 clients" in proc.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["num_clients"] for r in rows] == [100, 100]
    assert 0.0 < rows[-1]["test_accuracy"] <= 1.0


def test_population_settings_reach_the_population():
    cfg = load_config(
        None,
        [
            "data.name=synthetic-population",
            "data.num_clients=1000000",
            "data.synthetic_alpha=0.5",
            "data.synthetic_beta=0.25",
            "data.max_samples=64",
            "seed=7",
        ],
    )
    pop = build_population(cfg)
    assert isinstance(pop, SyntheticPopulation)
    assert (pop.num_clients, pop.alpha, pop.beta, pop.seed) == (1_000_000, 0.5, 0.25, 7)
    assert len(pop.train_data(999_999)) <= 64
    sim = build_run(cfg).simulation
    assert sim.federation is not None and sim.federation.num_clients == 1_000_000


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["strategy.name=fedbuff"], "use another strategy than fedbuff"),
        (
            ["data.client_test_fraction=0.2"],
            "unknown key 'data.client_test_fraction' for dataset 'synthetic-population'",
        ),
        (["data.max_samples=0"], "data.max_samples: Input should be greater than or equal to 1"),
    ],
)
def test_population_refuses_what_it_cannot_do(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(None, ["data.name=synthetic-population", *overrides])


def test_cuda_without_a_visible_device_is_a_clear_error():
    proc = _fedfleet("run", "-q", "--set", "device=cuda", env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2
    assert "no CUDA device is visible" in proc.stderr
    assert "use device = 'cpu'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_iid_population_learns_where_every_device_has_its_own_model_it_cannot():
    """The server tests on devices it never trained on: only a shared model is learnable."""
    sets = [
        "data.num_clients=1000",
        "data.max_samples=200",
        "model.name=logreg",
        "strategy.clients_per_round=20",
        "rounds=5",
    ]
    iid = build_run(load_config(None, ["data.name=synthetic-iid-population", *sets]))
    assert iid.simulation.federation.iid
    own = build_run(load_config(None, ["data.name=synthetic-population", *sets]))
    learned = iid.simulation.run(5).final["test_accuracy"]
    chance = own.simulation.run(5).final["test_accuracy"]
    assert learned > 0.35 > 0.2 > chance
