"""``Simulation(...)`` from Python trains as ``fedfleet run`` does: the same executor choice, the
same bits, and a progress bar only where someone watches (a terminal), checked in real
processes."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

import fedfleet as ff
from fedfleet.runs import load_config, load_model_vector
from fedfleet.runs._build import build_run
from fedfleet.sim import TIMING_KEYS, SequentialExecutor

ROUNDS = 3


def _strip(history):
    return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in history]


def _readme_simulation(model: str, **kw) -> ff.Simulation:
    """The README's Python example (``model`` 'mlp' as written, or logistic regression)."""
    task = ff.data.load_digits()
    parts = ff.data.partition.dirichlet(task.train.y, num_clients=20, alpha=0.5, seed=0)
    build = ff.models.mlp if model == "mlp" else ff.models.logistic_regression
    trainer = ff.TorchTrainer(lambda: build(task.input_shape, task.num_classes))
    strategy = ff.FedAvg(
        clients_per_round=10, local=ff.FitInstructions(epochs=2, batch_size=16, lr=0.2)
    )
    return ff.Simulation(trainer, ff.Federation(task, parts), strategy, seed=0, **kw)


@pytest.mark.parametrize(
    ("model", "path"), [("mlp", "vectorised"), ("logreg", "compiled")], ids=["mlp", "logreg"]
)
def test_the_python_api_trains_as_fedfleet_run_does_bit_for_bit(tmp_path, model, path):
    out = tmp_path / "run"
    overrides = ["--set", f"rounds={ROUNDS}", "--set", f"model.name={model}"]
    proc = subprocess.run(
        [sys.executable, "-m", "fedfleet", "run", "--quiet", "--out", str(out), *overrides],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr

    sim = _readme_simulation(model)
    cli = build_run(load_config(out / "config.toml"))
    assert sim.executor_choice == cli.executor  # one choice, made by one function
    assert sim.executor_choice.startswith(path)
    assert type(sim.trainer) is type(cli.simulation.trainer)

    torch.set_num_threads(2)  # a user's process: the run trains and evaluates on 1, as the CLI
    result = sim.run(rounds=ROUNDS)
    assert torch.get_num_threads() == 2  # and gives the setting back
    cli_vector = load_model_vector(out / "model.safetensors", result.layout)
    assert np.array_equal(result.vector, cli_vector)
    cli_records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert _strip(result.history) == _strip(cli_records)
    assert result.model is not None  # the README's promise: the final model as an nn.Module

    # the sequential reference is still one keyword away, and agrees to float32 rounding
    ref = _readme_simulation(model, executor=SequentialExecutor())
    assert ref.executor_choice == "given" and type(ref.trainer) is ff.TorchTrainer
    ref_vector = ref.run(rounds=ROUNDS).vector
    np.testing.assert_allclose(ref_vector, result.vector, atol=1e-4)


def test_a_trainer_built_from_a_module_or_a_custom_strategy_keeps_the_sequential_loop():
    task = ff.data.load_digits()
    parts = ff.data.partition.iid(len(task.train), num_clients=4, seed=0)
    fed = ff.Federation(task, parts)
    from_module = ff.TorchTrainer(ff.models.mlp(task.input_shape, task.num_classes))
    sim = ff.Simulation(from_module, fed, ff.FedAvg(clients_per_round=2), seed=0)
    assert isinstance(sim.executor, SequentialExecutor) and sim.trainer is from_module
    assert "module" in sim.executor_choice
    factory = lambda: ff.models.mlp(task.input_shape, task.num_classes)  # noqa: E731
    adam = ff.TorchTrainer(factory, optimizer="adam")
    sim = ff.Simulation(adam, fed, ff.FedAvg(clients_per_round=2), seed=0)
    assert isinstance(sim.executor, SequentialExecutor) and "SGD only" in sim.executor_choice
    sgd = ff.TorchTrainer(factory)
    scaffold = ff.strategies.Scaffold(num_clients=4, clients_per_round=2)
    sim = ff.Simulation(sgd, fed, scaffold, seed=0)
    assert isinstance(sim.executor, SequentialExecutor) and sim.trainer is sgd
    assert "the strategy trains each client itself" in sim.executor_choice


_CHILD = textwrap.dedent(
    """
    import sys
    import fedfleet as ff
    task = ff.data.load_digits()
    parts = ff.data.partition.iid(len(task.train), num_clients=4, seed=0)
    trainer = ff.TorchTrainer(lambda: ff.models.logistic_regression(task.input_shape, 10))
    progress = {"default": None, "off": False}[sys.argv[1]]
    sim = ff.Simulation(trainer, ff.Federation(task, parts), ff.FedAvg(clients_per_round=2),
                        seed=0, progress=progress)
    sim.run(rounds=3)
    print("done", flush=True)
    """
)


def _in_a_terminal(mode: str) -> str:
    """Run the child with a pseudo-terminal as stdout and stderr; what it wrote."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once
        os.execv(sys.executable, [sys.executable, "-c", _CHILD, mode])
    chunks, deadline = [], time.monotonic() + 600
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            continue
        try:
            data = os.read(fd, 65536)
        except OSError:  # the child closed the terminal: it has exited
            break
        if not data:
            break
        chunks.append(data)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    text = b"".join(chunks).decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    return text


def test_a_progress_bar_in_a_terminal_and_none_in_a_pipe_or_when_turned_off():
    shown = _in_a_terminal("default")
    assert "rounds" in shown and "3/3" in shown and "clients" in shown
    assert "train loss" in shown and "done" in shown

    off = _in_a_terminal("off")
    assert "done" in off and "rounds" not in off

    piped = subprocess.run(
        [sys.executable, "-c", _CHILD, "default"], capture_output=True, text=True, timeout=600
    )
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == "done\n"
    assert "rounds" not in piped.stderr
