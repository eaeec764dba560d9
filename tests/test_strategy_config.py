"""Every strategy is reachable from the config, and the README's commands run as written."""

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedfleet.cli import app
from fedfleet.errors import ConfigError
from fedfleet.privacy.secagg._strategy import SecAggFedAvg
from fedfleet.runs import load_config
from fedfleet.runs._build import build_run
from fedfleet.runs.algorithms import ALGORITHMS
from fedfleet.scaffold import new_project
from fedfleet.sim import FedBuffSimulation, Simulation
from fedfleet.strategies import (
    DPFedAvg,
    FedAvg,
    FedNova,
    FedPer,
    FedRep,
    QFedAvg,
    RobustFedAvg,
    Scaffold,
)

README = Path(__file__).resolve().parents[1] / "README.md"

EXPECTED = {
    "fedavg": FedAvg,
    "fedavgm": FedAvg,
    "fedprox": FedAvg,
    "fedadam": FedAvg,
    "fedyogi": FedAvg,
    "fedadagrad": FedAvg,
    "scaffold": Scaffold,
    "fednova": FedNova,
    "qfedavg": QFedAvg,
    "fedper": FedPer,
    "fedrep": FedRep,
    "dpfedavg": DPFedAvg,
    "secagg": SecAggFedAvg,
    "median": RobustFedAvg,
    "trimmed-mean": RobustFedAvg,
    "krum": RobustFedAvg,
}


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_each_strategy_builds_and_trains(name):
    # fedbuff keeps `concurrency` clients busy instead of sampling a cohort each round
    cohort = [] if ALGORITHMS[name].asynchronous else ["strategy.clients_per_round=5"]
    cfg = load_config(
        None,
        [
            f"strategy.name={name}",
            "rounds=3",
            "data.num_clients=10",
            *cohort,
            "data.client_test_fraction=0.2",
            "eval.federated_every=3",
            "privacy.noise_multiplier=0.5",
        ],
    )
    sim = build_run(cfg).simulation
    if ALGORITHMS[name].asynchronous:
        assert isinstance(sim, FedBuffSimulation)
    else:
        assert isinstance(sim, Simulation) and isinstance(sim.strategy, EXPECTED[name])
    result = sim.run(cfg.rounds)
    assert len(result.history) == 3 and np.isfinite(result.vector).all()
    assert 0.0 <= result.final["test_accuracy"] <= 1.0
    assert not result.rejected


def test_strategy_parameters_reach_the_strategy():
    sim = build_run(load_config(None, ["strategy.name=fedprox", "strategy.mu=0.5"])).simulation
    assert sim.strategy.local.config["prox_mu"] == 0.5
    sim = build_run(load_config(None, ["strategy.name=qfedavg", "strategy.q=2.0"])).simulation
    assert sim.strategy.q == 2.0
    sim = build_run(
        load_config(
            None,
            [
                "strategy.name=fedavg",
                "strategy.straggler_fraction=0.5",
                "strategy.straggler_policy=drop",
            ],
        )
    ).simulation
    assert sim.strategy.stragglers.fraction == 0.5 and sim.strategy.stragglers.drop
    result = sim.run(2)
    assert all(h["num_clients"] == 5 for h in result.history)  # half of 10 dropped


def test_scaffold_refuses_momentum_clients():
    with pytest.raises(ConfigError, match="plain SGD"):
        build_run(load_config(None, ["strategy.name=scaffold", "client.momentum=0.9"]))


def _readme_commands():
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].strip()
            # --resume needs a killed run's directory: tests/test_resume.py runs it
            # datasets read from files (data.path, Shakespeare): their own tests run them
            reads_files = "data.path=" in line or "data.name=shakespeare" in line
            if line.startswith("fedfleet run") and not reads_files:
                if "--resume" not in line:
                    yield line


@pytest.mark.parametrize("command", list(_readme_commands()))
def test_readme_run_commands_work(command, tmp_path):
    if "my_project/" in command:  # the project the README's `fedfleet new my_project` makes
        new_project(tmp_path / "my_project")
        command = command.replace("my_project/", f"{tmp_path}/my_project/")
    out = tmp_path / "out"
    args = [*shlex.split(command)[1:], "--set", "rounds=2", "-q", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "metrics.jsonl").read_text().count("\n") == 2


def test_dpfedavg_calibrates_noise_for_a_target_epsilon_and_reports_it():
    cfg = load_config(
        None,
        [
            "strategy.name=dpfedavg",
            "privacy.target_epsilon=5",
            "rounds=4",
            "data.num_clients=10",
            "strategy.clients_per_round=5",
        ],
    )
    sim = build_run(cfg).simulation
    acc = sim.strategy.accounting
    assert acc.sampling_rate == 0.5 and acc.epsilon(4) <= 5.0 < acc.epsilon(5) + 5.0
    history = sim.run(cfg.rounds).history
    assert [h["dp_epsilon"] for h in history] == sorted(h["dp_epsilon"] for h in history)
    assert history[-1]["dp_epsilon"] == pytest.approx(acc.epsilon(4))
    with pytest.raises(ConfigError, match=r"needs privacy\.noise_multiplier"):
        load_config(None, ["strategy.name=dpfedavg"])


def test_local_dp_and_dp_sgd_from_the_config():
    from fedfleet.privacy import DPSGDTrainer, LocalDP
    from fedfleet.sim import SequentialExecutor

    local = build_run(load_config(None, ["privacy.local_noise_multiplier=0.1", "rounds=2"]))
    assert isinstance(local.simulation.strategy, LocalDP)
    history = local.simulation.run(2).history
    assert history[-1]["ldp_epsilon"] > 0
    dpsgd = build_run(load_config(None, ["privacy.sgd_noise_multiplier=0.5", "rounds=2"]))
    assert isinstance(dpsgd.simulation.trainer, DPSGDTrainer)  # never swapped for vmap
    assert isinstance(dpsgd.simulation.executor, SequentialExecutor)
    with pytest.raises(ConfigError, match="local DP"):
        load_config(None, ["privacy.local_noise_multiplier=0.1", "strategy.name=scaffold"])
