"""Heterogeneous clients from the config: profiles, deadlines, selection, weighting,
compensation."""

import itertools
import subprocess
import sys

import numpy as np
import pytest

from fedfleet.errors import ConfigError
from fedfleet.runs._build import build_run
from fedfleet.runs._config import load_config, validate_config
from fedfleet.sim import DropLate, OverSelect, PartialWork
from fedfleet.strategies import Compensation, OortSelection, Reweighted

HETERO = [
    "rounds=4",
    "data.num_clients=20",
    "clients.speed_spread=10",
    "clients.availability=0.8",
    "clients.download_bps=1e5",
    "clients.upload_bps=5e4",
    "clients.bandwidth_spread=10",
]


def test_without_client_settings_there_is_no_clock():
    sim = build_run(load_config(None, ["rounds=2"])).simulation
    assert sim.profiles is None and sim.deadline is None
    assert "sim_time_s" not in sim.run(2).final


@pytest.mark.parametrize(
    ("overrides", "policy"),
    [
        (["deadline.policy=drop", "deadline.seconds=15"], DropLate),
        (["deadline.policy=partial", "deadline.seconds=15", "strategy.name=fednova"], PartialWork),
        (["deadline.policy=overselect", "deadline.keep=7"], OverSelect),
    ],
)
def test_deadline_policies_run_on_the_simulated_clock(overrides, policy):
    sim = build_run(load_config(None, [*HETERO, *overrides])).simulation
    assert isinstance(sim.deadline, policy)
    history = sim.run(4).history
    times = [h["sim_time_s"] for h in history]
    assert times == sorted(times) and times[0] > 0
    assert all(h["num_online"] <= 20 for h in history)
    if policy is OverSelect:
        assert all(h["num_clients"] <= 7 for h in history)


def test_selection_weighting_and_compensation_wrap_the_strategy():
    cfg = load_config(
        None,
        [
            *HETERO,
            "selection.method=oort",
            "deadline.seconds=15",
            "deadline.policy=drop",
            "compensation.rule=scale_lr",
            "strategy.weighting=steps",
        ],
    )
    sim = build_run(cfg).simulation
    assert isinstance(sim.strategy, OortSelection)
    assert isinstance(sim.strategy.inner, Compensation)
    assert isinstance(sim.strategy.inner.inner, Reweighted)
    a = sim.run(4)
    b = build_run(cfg).simulation.run(4)
    assert np.array_equal(a.vector, b.vector)  # deterministic with every piece on


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["deadline.policy=drop"], "needs deadline.seconds"),
        (["deadline.policy=overselect"], "needs deadline.keep"),
        (["selection.method=oort"], "needs selection.preferred_s or a deadline"),
        (
            ["strategy.name=fedbuff", "deadline.policy=drop", "deadline.seconds=3"],
            "fedbuff runs its own clock",
        ),
    ],
)
def test_incomplete_heterogeneity_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_each_round_has_its_simulated_duration_and_the_running_total():
    history = build_run(load_config(None, HETERO)).simulation.run(4).history
    rounds = [h["sim_round_s"] for h in history]
    totals = [h["sim_time_s"] for h in history]
    assert all(r > 0 for r in rounds)
    assert totals == list(itertools.accumulate(rounds))  # the engine's own float additions
    assert totals == sorted(totals)


def _profiles_csv(tmp_path, num_clients=20):
    path = tmp_path / "profiles.csv"
    rows = [f"{1 + k % 3},1e5,5e4,0.1,0.5" for k in range(num_clients)]
    path.write_text("speed,download_bps,upload_bps,latency_s,availability\n" + "\n".join(rows))
    return str(path)


@pytest.mark.parametrize(
    "override",
    [
        "clients.availability=0.5",
        "clients.speed_spread=10",
        "clients.download_bps=1e5",
        "clients.upload_bps=1e5",
        "clients.bandwidth_spread=4",
        "clients.latency_s=0.2",
    ],
)
def test_keys_a_profiles_csv_would_override_are_refused(tmp_path, override):
    key = override.partition("=")[0]
    with pytest.raises(ConfigError, match=rf"would override {key}: remove {key}, or put"):
        load_config(None, [f"clients.profiles_csv={_profiles_csv(tmp_path)}", override])


def test_a_profiles_csv_keeps_time_per_step_and_default_values(tmp_path):
    csv = _profiles_csv(tmp_path)
    raw = {"clients": {"profiles_csv": csv, "time_per_step": 0.5, "availability": 1.0}}
    cfg = validate_config(raw)
    profiles = build_run(cfg).simulation.profiles
    assert profiles.time_per_step == 0.5
    assert np.all(profiles.availability == 0.5)  # the CSV's column, not the key's default
    with pytest.raises(ConfigError, match=r"override clients\.latency_s, clients\.availability: "):
        validate_config({"clients": {"profiles_csv": csv, "availability": 0.5, "latency_s": 1}})


def test_the_cli_refuses_a_profiles_csv_with_a_key_it_overrides(tmp_path):
    sets = [f"clients.profiles_csv={_profiles_csv(tmp_path)}", "clients.availability=0.5"]
    args = [a for s in sets for a in ("--set", s)]
    proc = subprocess.run(
        [sys.executable, "-m", "fedfleet", "run", "-q", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    err = " ".join(proc.stderr.split())
    assert "clients.profiles_csv gives every client's speed" in err, proc.stderr
    assert "would override clients.availability: remove clients.availability" in err
    assert "Traceback" not in proc.stderr
