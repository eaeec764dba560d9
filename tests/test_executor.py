"""The cohort executors: the automatic choice, and that both paths train the same model."""

import os

import numpy as np
import pytest

from fedfleet.client import ThreadedTrainer, TorchTrainer, VmapTrainer
from fedfleet.client._compiled_trainer import CompiledTrainer
from fedfleet.errors import ConfigError
from fedfleet.runs import load_config
from fedfleet.runs._build import build_run
from fedfleet.runs.algorithms import ALGORITHMS
from fedfleet.sim import SequentialExecutor, VectorisedExecutor

SMALL = ["rounds=3", "data.num_clients=10", "strategy.clients_per_round=5"]


@pytest.mark.parametrize(
    ("overrides", "executor", "trainer"),
    [
        ([], VectorisedExecutor, VmapTrainer),
        (["strategy.name=fedprox"], VectorisedExecutor, VmapTrainer),
        (["model.name=cnn"], VectorisedExecutor, ThreadedTrainer),  # a client per core
        (["strategy.name=scaffold"], SequentialExecutor, TorchTrainer),
        (["client.optimizer=adam"], SequentialExecutor, TorchTrainer),
        (["executor=sequential"], SequentialExecutor, TorchTrainer),
        (["executor=vectorised", "strategy.name=scaffold"], VectorisedExecutor, VmapTrainer),
        # 650 params x batch 16 <= 2^16: a torch step would be all dispatch
        (["model.name=logreg"], VectorisedExecutor, CompiledTrainer),
        (["model.name=logreg", "executor=vectorised"], VectorisedExecutor, VmapTrainer),
        (["model.name=logreg", "client.optimizer=adam"], SequentialExecutor, TorchTrainer),
        (["model.name=logreg", "strategy.name=scaffold"], SequentialExecutor, TorchTrainer),
        (["executor=compiled", "strategy.name=scaffold"], VectorisedExecutor, CompiledTrainer),
    ],
)
def test_auto_choice(overrides, executor, trainer):
    pieces = build_run(load_config(None, [*SMALL, *overrides]))
    assert isinstance(pieces.simulation.executor, executor)
    assert isinstance(pieces.simulation.trainer, trainer)
    assert pieces.executor.split()[0] in ("vectorised", "sequential", "compiled", "threaded")


def test_auto_compiles_small_mlps_one_client_per_core():
    cores = len(os.sched_getaffinity(0))
    pieces = build_run(load_config(None, [*SMALL, "model.name=logreg"]))
    assert pieces.simulation.trainer.workers == cores
    assert pieces.executor.startswith("compiled (each client's SGD loop one numba call")
    threads = build_run(load_config(None, [*SMALL, "model.name=logreg", "threads=3"]))
    assert threads.simulation.trainer.workers == 3
    # by name (as inside Ray and process workers, one CPU each): `threads` clients at a time
    named = build_run(load_config(None, [*SMALL, "model.name=logreg", "executor=compiled"]))
    assert named.simulation.trainer.workers == 1


def test_vectorised_is_refused_where_it_cannot_run():
    with pytest.raises(ConfigError, match="SGD only"):
        build_run(load_config(None, [*SMALL, "executor=vectorised", "client.optimizer=adam"]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["client.optimizer=adam"], "trains with SGD, not 'adam'"),
        (["model.name=cnn"], r"nn\.Sequential of Flatten, Linear and ReLU"),
    ],
)
def test_compiled_is_refused_where_it_cannot_run(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_run(load_config(None, [*SMALL, "executor=compiled", *overrides]))


def _mu(strategy: str) -> list[str]:
    """A proximal term for the strategies that take one (the others refuse the key)."""
    return ["strategy.mu=0.1"] if "mu" in ALGORITHMS[strategy].keys() else []


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "scaffold", "fednova"])
def test_compiled_and_sequential_runs_agree_to_float32_rounding(strategy):
    # scaffold and fednova train through the strategy's client_fit, i.e. CompiledTrainer.fit
    momentum = 0.0 if strategy == "scaffold" else 0.5  # scaffold assumes plain SGD
    common = [*SMALL, f"strategy.name={strategy}", *_mu(strategy), f"client.momentum={momentum}"]
    got = build_run(load_config(None, [*common, "executor=compiled"])).simulation.run(3)
    ref = build_run(load_config(None, [*common, "executor=sequential"])).simulation.run(3)
    assert np.max(np.abs(got.vector - ref.vector)) < 1e-5
    assert np.max(np.abs(got.vector - ref.vector)) < np.max(np.abs(ref.vector)) * 1e-4
    assert [h["num_clients"] for h in got.history] == [h["num_clients"] for h in ref.history]


def test_compiled_runs_are_bit_identical_across_runs_and_lanes():
    cfg = [*SMALL, "model.name=logreg", "executor=compiled"]
    a = build_run(load_config(None, cfg)).simulation.run(3)
    b = build_run(load_config(None, cfg)).simulation.run(3)
    c = build_run(load_config(None, [*cfg, "threads=3"])).simulation.run(3)
    assert np.array_equal(a.vector, b.vector) and np.array_equal(a.vector, c.vector)


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "fednova", "fedadam"])
def test_vectorised_and_sequential_runs_agree_to_float32_rounding(strategy):
    common = [*SMALL, f"strategy.name={strategy}", *_mu(strategy), "client.momentum=0.5"]
    vec = build_run(load_config(None, [*common, "executor=vectorised"])).simulation.run(3)
    seq = build_run(load_config(None, [*common, "executor=sequential"])).simulation.run(3)
    assert np.max(np.abs(vec.vector - seq.vector)) < 1e-5
    assert [h["num_clients"] for h in vec.history] == [h["num_clients"] for h in seq.history]


def test_cnn_on_worker_threads_is_the_sequential_loop_bit_for_bit():
    cores = len(os.sched_getaffinity(0))
    common = [*SMALL, "model.name=cnn", "client.lr=0.02"]
    threaded = build_run(load_config(None, common))
    if cores > 1:
        assert threaded.executor.startswith(f"threaded (the sequential loop, {cores} clients")
        assert "channels-last convolutions" in threaded.executor
    a = threaded.simulation.run(2)
    b = build_run(load_config(None, [*common, "executor=sequential"])).simulation.run(2)
    assert np.array_equal(a.vector, b.vector)
    # lr 0.02: at lr 0.2 two epochs of a CNN amplify float32 rounding to ~1e-3 in any
    # reordering of the arithmetic, so the comparison would test chaos, not the code
    vec = build_run(load_config(None, [*common, "executor=vectorised"])).simulation.run(2)
    assert np.max(np.abs(a.vector - vec.vector)) < 1e-5


def test_vectorised_runs_are_bit_identical_across_runs():
    cfg = load_config(None, [*SMALL, "executor=vectorised"])
    a = build_run(cfg).simulation.run(3)
    b = build_run(cfg).simulation.run(3)
    assert np.array_equal(a.vector, b.vector)


def test_auto_trains_large_mlp_steps_on_one_lane_per_core_with_the_same_bits():
    cores = len(os.sched_getaffinity(0))
    small = build_run(load_config(None, SMALL))  # digits MLP: 9,610 params x batch 16
    assert small.simulation.trainer.workers == 1
    big = [*SMALL, "model.hidden=[1024]"]  # 76,810 params x batch 16 >= 2^20
    lanes = build_run(load_config(None, big))
    assert lanes.simulation.trainer.workers == cores
    if cores > 1:
        assert f"{cores} lanes x 1 torch thread" in lanes.executor
    one = build_run(load_config(None, [*big, "executor=vectorised"]))
    assert one.simulation.trainer.workers == 1
    two_threads = build_run(load_config(None, [*big, "threads=2"]))
    assert two_threads.simulation.trainer.workers == 1  # threads asked for: one lane of them
    a, b = lanes.simulation.run(2), one.simulation.run(2)
    assert np.array_equal(a.vector, b.vector)
