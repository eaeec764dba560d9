"""The process executor: forked workers, raw bytes on pipes, results equal to in-process ones."""

from __future__ import annotations

import gc
import multiprocessing.reduction
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from fedfleet.errors import FedfleetError
from fedfleet.runs import load_config
from fedfleet.runs._build import build_run
from fedfleet.sim import TIMING_KEYS, VectorisedExecutor, client_seed
from fedfleet.sim._procpool import ProcessExecutor, chunk_bounds

SMALL = ["rounds=3", "data.num_clients=10", "strategy.clients_per_round=5"]


def _records(result):
    return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in result.history]


@pytest.mark.parametrize("strategy", ["fedavg", "scaffold", "fedper"])
def test_process_workers_are_bit_identical_to_the_sequential_loop(strategy):
    # scaffold: payload, extras and client state cross as raw arrays; fedper: client state
    common = [*SMALL, f"strategy.name={strategy}"]
    ref = build_run(load_config(None, [*common, "executor=sequential"])).simulation.run(3)
    pieces = build_run(
        load_config(None, [*common, "executor=process", "worker_executor=sequential"])
    )
    assert pieces.executor.startswith("process (2 workers")
    executor = pieces.simulation.executor
    assert isinstance(executor, ProcessExecutor)
    with executor:
        got = pieces.simulation.run(3)
    assert np.array_equal(got.vector, ref.vector)
    assert _records(got) == _records(ref)


class _Chunked:
    """The reference for a vectorised inner: the in-process executor, chunk by chunk."""

    def __init__(self, workers):
        self.workers, self.inner = workers, VectorisedExecutor()

    def run(self, strategy, trainer, vector, jobs, progress=None):
        out = []
        for lo, hi in chunk_bounds(len(jobs), self.workers):
            out += self.inner.run(strategy, trainer, vector, jobs[lo:hi])
        return out


def test_vectorised_inner_matches_the_same_chunking_in_process():
    overrides = [*SMALL, "strategy.clients_per_round=7", "executor=vectorised"]
    ref = build_run(load_config(None, overrides)).simulation
    ref.executor = _Chunked(3)
    expected = ref.run(3)
    sim = build_run(load_config(None, overrides)).simulation
    with ProcessExecutor(workers=3, inner="vectorised") as ex:
        sim.executor = ex
        got = sim.run(3)
    assert np.array_equal(got.vector, expected.vector)
    assert _records(got) == _records(expected)


def test_compiled_inner_is_bit_identical_to_compiled_in_process():
    # clients are independent compiled calls: no chunking changes a bit
    common = [*SMALL, "model.name=logreg", "strategy.clients_per_round=7"]
    ref = build_run(load_config(None, [*common, "executor=compiled"])).simulation.run(3)
    pieces = build_run(load_config(None, [*common, "executor=process"]))
    assert "compiled in each" in pieces.executor  # worker_executor=auto
    with pieces.simulation.executor:
        got = pieces.simulation.run(3)
    assert np.array_equal(got.vector, ref.vector)
    assert _records(got) == _records(ref)


def test_driver_threads_do_not_reach_the_forked_workers():
    # the driver evaluates on 2 threads, the workers' VmapTrainer must stay on 1 (a forked child
    # opening an OpenMP parallel region after its parent did hangs)
    common = [*SMALL, "executor=process", "worker_executor=vectorised", "rounds=2"]
    runs = []
    for threads in (1, 2):
        pieces = build_run(load_config(None, [*common, f"threads={threads}"]))
        assert pieces.simulation.trainer.num_threads == 1
        a = torch.ones(512, 512)
        assert float((a @ a).sum()) == 512.0**3  # the driver's OpenMP pool is up before the fork
        with pieces.simulation.executor:
            runs.append(pieces.simulation.run(2))
    assert np.array_equal(runs[0].vector, runs[1].vector)
    sim = build_run(load_config(None, [*SMALL, "executor=vectorised", "threads=2"])).simulation
    with ProcessExecutor(workers=2, inner="vectorised") as ex:
        sim.executor = ex
        with pytest.raises(FedfleetError, match="build it with num_threads=1"):
            sim.run(1)


def _refuse_pickle(*args, **kwargs):
    raise AssertionError("pickle was used")


def test_no_pickle_crosses_the_process_boundary(monkeypatch):
    # patched before the fork, so parent and workers both lose pickle and the
    # multiprocessing pickler behind Connection.send / Queue
    common = [*SMALL, "strategy.name=scaffold", "rounds=2"]
    ref = build_run(load_config(None, [*common, "executor=sequential"])).simulation.run(2)
    sim = build_run(load_config(None, [*common, "executor=sequential"])).simulation
    for target, name in [
        (pickle, "dumps"),
        (pickle, "dump"),
        (multiprocessing.reduction.ForkingPickler, "dumps"),
        (multiprocessing.reduction, "dump"),
    ]:
        monkeypatch.setattr(target, name, _refuse_pickle)
    with pytest.raises(AssertionError, match="pickle was used"):
        pickle.dumps(1)  # the patch is live
    with ProcessExecutor(workers=2) as ex:
        sim.executor = ex
        got = sim.run(2)
    assert np.array_equal(got.vector, ref.vector)


class _Sabotaged:
    """Delegates to a trainer, but in a worker process it breaks on one client's seed."""

    def __init__(self, trainer, seed, how):
        self.trainer, self.seed, self.how, self.parent = trainer, seed, how, os.getpid()

    def __getattr__(self, name):
        return getattr(self.trainer, name)

    def fit(self, vector, data, instructions, seed):
        if seed == self.seed and os.getpid() != self.parent:
            if self.how == "exit":
                os._exit(3)
            raise ValueError("a bad batch")
        return self.trainer.fit(vector, data, instructions, seed)


def _all_clients_run():
    """Four clients, all sampled every round: round 1's chunks are [0, 1] and [2, 3]."""
    cfg = ["rounds=2", "data.num_clients=4", "strategy.clients_per_round=4", "executor=sequential"]
    return build_run(load_config(None, cfg)).simulation


def test_a_worker_that_dies_names_its_clients_and_the_next_run_recovers():
    sim = _all_clients_run()
    trainer = sim.trainer
    sim.trainer = _Sabotaged(trainer, client_seed(0, 1, 3), "exit")
    with ProcessExecutor(workers=2) as ex:
        sim.executor = ex
        with pytest.raises(
            FedfleetError, match=r"worker process 1 .*died \(exit code 3\).*\[2, 3\]"
        ):
            sim.run(2)
        assert ex.pids == []  # the broken pool was shut down
        sim.trainer = trainer
        got = sim.run(2)  # fresh workers
    ref = _all_clients_run().run(2)
    assert np.array_equal(got.vector, ref.vector)


def test_an_exception_in_a_worker_names_its_clients():
    sim = _all_clients_run()
    sim.trainer = _Sabotaged(sim.trainer, client_seed(0, 1, 1), "raise")
    with ProcessExecutor(workers=2) as ex:
        sim.executor = ex
        with pytest.raises(FedfleetError, match=r"clients \[0, 1\] \(worker 0\).*ValueError"):
            sim.run(2)


def test_workers_stop_on_close():
    sim = _all_clients_run()
    ex = ProcessExecutor(workers=2)
    sim.executor = ex
    sim.run(1)
    pids = ex.pids
    assert len(pids) == 2 and os.getpid() not in pids
    ex.close()
    assert ex.pids == []
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)


def test_process_executor_on_a_lazily_generated_population():
    common = [
        "data.name=synthetic-population",
        "data.num_clients=100000",
        "data.max_samples=100",
        "rounds=2",
        "strategy.clients_per_round=6",
    ]
    ref = build_run(load_config(None, [*common, "executor=sequential"])).simulation.run(2)
    pieces = build_run(load_config(None, [*common, "executor=process"]))
    with pieces.simulation.executor:  # type: ignore[attr-defined]
        got = pieces.simulation.run(2)
    # worker_executor=auto picks vectorised for the MLP: float32 rounding, not bits
    assert "vectorised in each" in pieces.executor
    assert np.max(np.abs(got.vector - ref.vector)) < 1e-5
    assert [h["num_clients"] for h in got.history] == [6, 6]


def test_chunks():
    assert chunk_bounds(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert chunk_bounds(1, 4) == [(0, 1)]


def test_refused_settings():
    with pytest.raises(FedfleetError, match="one thread"):
        ProcessExecutor(workers=2, threads_per_worker=2)
    with pytest.raises(FedfleetError, match="workers >= 1"):
        ProcessExecutor(workers=0)


class _Shift:
    """A strategy whose client side adds ``mu`` to the global vector (no training)."""

    def __init__(self, mu: float) -> None:
        self.mu = mu

    def client_fit(self, trainer, vector, data, instructions, seed, state):
        from fedfleet.client import FitResult
        from fedfleet.strategies import ClientResult

        return ClientResult(FitResult(vector + self.mu, 1, 1, {}), {}, None)


def _shift_jobs(k: int):
    from fedfleet.client import FitInstructions
    from fedfleet.data import ArrayDataset
    from fedfleet.sim._cohort import ClientJob

    data = ArrayDataset(np.zeros((1, 2), np.float32), np.zeros(1, np.int64))
    return [ClientJob(c, data, FitInstructions(), c, None) for c in range(k)]


def test_an_interrupted_round_never_leaks_its_results_into_the_next():
    trainer, v = object(), np.zeros(3, np.float32)
    strategy = _Shift(100.0)
    with ProcessExecutor(workers=2) as ex:

        def interrupt(done, total):
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            ex.run(strategy, trainer, v + 5, _shift_jobs(2), interrupt)
        results = ex.run(strategy, trainer, v + 7, _shift_jobs(2))
    assert [float(r.fit.vector[0]) for r in results] == [107.0, 107.0]


def test_a_new_strategy_gets_new_workers_even_at_a_reused_address():
    trainer, v = object(), np.zeros(3, np.float32)
    jobs = _shift_jobs(2)
    with ProcessExecutor(workers=2) as ex:
        first = _Shift(1.0)
        ex.run(first, trainer, v, jobs)
        for mu in range(2, 12):
            del first
            gc.collect()
            # freed, CPython usually puts the next one at the same address (the old executor
            # then took it for the strategy its workers were forked with)
            first = _Shift(float(mu))
            got = ex.run(first, trainer, v, jobs)
            assert [float(r.fit.vector[0]) for r in got] == [mu, mu]
