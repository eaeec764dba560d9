"""Process fixtures for the network tests: real subprocesses on 127.0.0.1, always cleaned up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from fedfleet._proto import fedfleet_pb2 as pb
from fedfleet.net import create_test_federation
from fedfleet.net._cli import read_config
from fedfleet.net._wire import instructions_from_header, receiver
from fedfleet.runs import load_model_vector
from fedfleet.runs._build import build_federation, build_strategy, build_trainer, load_task_for
from fedfleet.sim import SequentialExecutor, Simulation, SimulationResult
from fedfleet.strategies import Strategy

HERE = Path(__file__).resolve().parent
WORKER = HERE / "net_worker.py"

RUN_TOML = """\
seed = 3
rounds = {rounds}
[data]
num_clients = 3
[model]
hidden = [{hidden}]
[strategy]
clients_per_round = 2
[client]
epochs = 1
batch_size = 32
lr = 0.1
"""


def write_config(path: Path, rounds: int = 3, hidden: int = 32) -> Path:
    path.write_text(RUN_TOML.format(rounds=rounds, hidden=hidden))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def simulate(config_path: Path) -> np.ndarray:
    """The reference: the in-memory engine (sequential executor) on the same config."""
    return simulate_run(config_path).vector


def simulate_run(
    config_path: Path, adjust: Callable[[Strategy], Strategy] | None = None
) -> SimulationResult:
    """The reference run; ``adjust`` may change the config's strategy first (e.g. give
    SecAggFedAvg simulated dropouts, which the config cannot express)."""
    cfg, _ = read_config(config_path)
    # the thread count the deployed processes train with (float sums differ across counts);
    # a module-scoped fixture runs before the autouse one-thread fixture
    torch.set_num_threads(cfg.threads)
    task = load_task_for(cfg)
    fed = build_federation(cfg, task)
    trainer = build_trainer(cfg, task)
    strategy = build_strategy(cfg, trainer, fed.num_clients)
    sim = Simulation(
        trainer,
        fed,
        strategy if adjust is None else adjust(strategy),
        seed=cfg.seed,
        eval_every=cfg.eval.every,
        federated_eval_every=cfg.eval.federated_every,
        executor=SequentialExecutor(),  # deployed clients train one by one, as this does
    )
    return sim.run(cfg.rounds)


def final_vector(run_dir: Path, config: Path) -> np.ndarray:
    """The model a server run wrote to ``run_dir/model.safetensors``, as a flat float32 vector."""
    cfg, _ = read_config(config)
    layout = build_trainer(cfg, load_task_for(cfg)).layout
    return load_model_vector(run_dir / "model.safetensors", layout)


def read_task(stub, cid: int, size: int, timeout: float = 60.0):
    """One GetTask call made as a client makes it: the header, then exactly the arrays its job
    declares (of ``size`` floats each). The server keeps a task's stream open until the client
    answers the task, so the stream is returned open: ``(header, arrays, stream)``, ``arrays``
    the global ``"vector"`` and the job's payload by name."""
    stream = stub.GetTask(pb.TaskRequest(client_id=cid), timeout=timeout)
    header = next(stream).header
    if header.kind not in (pb.TaskHeader.TRAIN, pb.TaskHeader.EVALUATE):
        return header, {}, stream
    rx = receiver(header.job, "the task", kind="jobs", size=size)
    while not rx.complete:
        chunk = next(stream).chunk
        rx.add(chunk.tensor, chunk.offset, chunk.data)
    vector, job = instructions_from_header(rx.head, rx.finish().arrays)
    payload = {} if job is None else dict(job.instructions.payload)
    return header, {"vector": vector, **payload}, stream


def wait_for(pred, timeout: float, what: str, alive: tuple = ()) -> None:
    """Poll ``pred`` until true; fail after ``timeout`` s or as soon as a process in ``alive``
    has exited."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        for p in alive:
            if p.poll() is not None:
                raise AssertionError(
                    f"{p.name} exited with {p.returncode} while waiting for {what}"
                )
        time.sleep(0.05)
    logs = "".join(_log_tail(p) for p in alive)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}{logs}")


def _log_tail(p: subprocess.Popen, chars: int = 3000) -> str:
    """The end of a process's log (started by :class:`Procs`), for a failure message."""
    path = getattr(p, "log_path", None)
    if path is None:
        return ""
    return f"\n--- {p.name} (last {chars} chars) ---\n{path.read_text(errors='replace')[-chars:]}"  # type: ignore[attr-defined]


class Procs:
    """Starts processes with logs in ``tmp``; kills every one of them at teardown."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log = (self.tmp / f"{name}.log").open("wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **(env or {}))
        p = subprocess.Popen(
            [sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp, env=env
        )
        p.name = name  # type: ignore[attr-defined]
        p.log_path = self.tmp / f"{name}.log"  # type: ignore[attr-defined]
        self.procs.append(p)
        return p

    def cli(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        return self.start(name, "-m", "fedfleet.net", *args, env=env)

    def worker(self, name: str, *args: str) -> subprocess.Popen:
        return self.start(name, str(WORKER), *args)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def wait(self, p: subprocess.Popen, timeout: float) -> int:
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{p.name} still running after {timeout} s; log:\n{self.log(p.name)[-3000:]}"  # type: ignore[attr-defined]
            ) from None

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.kill_all()


@pytest.fixture(scope="session")
def certs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_test_federation(tmp_path_factory.mktemp("certs"), 4)


def start_server(procs: Procs, config: Path, *extra: str, name: str = "server") -> int:
    """Start ``fedfleet.net server`` on a free port; returns the port once it listens."""
    port_file = procs.tmp / f"{name}.port"
    port_file.unlink(missing_ok=True)
    p = procs.cli(name, "server", "--config", str(config), "--port-file", str(port_file), *extra)
    wait_for(lambda: port_file.exists() or p.poll() is not None, 300, f"{name} to listen")
    if not port_file.exists():
        raise AssertionError(f"{name} exited early:\n{procs.log(name)}")
    return int(port_file.read_text())
