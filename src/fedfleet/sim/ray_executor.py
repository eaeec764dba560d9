"""Beyond one machine: a round's cohort spread over a Ray cluster, one task per chunk.

:class:`RayExecutor` splits each round's jobs into ``num_tasks`` contiguous chunks and runs one
Ray task per chunk. A task trains its chunk with the same in-process code as the local engine
(``SequentialExecutor`` or ``VectorisedExecutor``) on a trainer and strategy that the Ray worker
builds itself from the run's configuration, once per worker process (cached by the config's
SHA-256), so results are bit-identical to the local run with the same config and seed.

What crosses via Ray, and why that is acceptable:

- the run configuration as TOML text (``ray.put`` once per executor): every Ray worker rebuilds
  the task, federation, trainer and strategy from it with :func:`fedfleet.runs.build.build_run`;
  clients' data are therefore loaded or generated on the worker, never shipped (a dataset read
  from files must exist at the same path on every node; digits and the synthetic ones need
  nothing);
- the global vector as raw float32 bytes (``ray.put`` once per round);
- each chunk's jobs and each task's results as one :mod:`fedfleet.sim.jobcodec` frame of
  ``bytes``: JSON (client ids, seeds, instruction scalars, metrics) plus raw arrays (payloads,
  client state, trained vectors, extras);
- the task function itself, which Ray's cloudpickle sends by reference (module and name), so
  fedfleet must be installed on every node.

Ray wraps these ``str``/``bytes`` values in its own (pickle-based) envelope; none of our objects
is pickled, and the envelope is exchanged only inside the Ray cluster, whose nodes run each
other's code by design and must be a trusted network (Ray's own security model). Anything
crossing an untrusted boundary goes through :mod:`fedfleet.net` instead.

Ray is an optional extra (``pip install -e ".[ray]"``); importing this module works without
it, and using the executor then raises a :class:`FedfleetError` naming the extra.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import traceback
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedfleet.client.protocol import Trainer
from fedfleet.errors import ConfigError, FedfleetError
from fedfleet.runs.config import RunConfig, dump_config
from fedfleet.sim.cohort import ClientJob, CohortExecutor, Progress
from fedfleet.sim.jobcodec import (
    attach_data,
    decode_jobs,
    decode_results,
    encode_error,
    encode_jobs,
    encode_results,
)
from fedfleet.sim.procpool import Inner, chunk_bounds, inner_executor
from fedfleet.strategies.base import ClientResult, Strategy

__all__ = ["RayExecutor"]


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise FedfleetError(
            "executor 'ray' needs Ray, an optional extra: pip install -e \".[ray]\" "
            "(or pip install 'fedfleet[ray]')"
        ) from None
    return ray


@dataclasses.dataclass(frozen=True)
class _WorkerRun:
    strategy: Strategy
    trainer: Trainer
    federation: Any
    executor: CohortExecutor


_RUNS: dict[str, _WorkerRun] = {}
"""The runs this Ray worker process has built, by the SHA-256 of their config text."""


def _worker_run(config_toml: str) -> _WorkerRun:
    key = hashlib.sha256(config_toml.encode()).hexdigest()
    if key not in _RUNS:
        import tomllib

        from fedfleet.runs.build import build_run
        from fedfleet.runs.config import validate_config
        from fedfleet.sim.engine import Simulation

        sim = build_run(validate_config(tomllib.loads(config_toml))).simulation
        if not isinstance(sim, Simulation):
            raise FedfleetError("the Ray executor runs the synchronous engine only (not fedbuff)")
        _RUNS[key] = _WorkerRun(sim.strategy, sim.trainer, sim.federation, sim.executor)
    return _RUNS[key]


def _train_chunk(config_toml: str, vector: bytes, request: bytes) -> bytes:
    """The Ray task: train one chunk of clients; an error comes back as an error frame."""
    try:
        run = _worker_run(config_toml)
        w = np.frombuffer(vector, dtype="<f4").astype(np.float32)
        _, heads, jobs = decode_jobs(request)
        own = attach_data(heads, jobs, run.federation)
        return encode_results(run.executor.run(run.strategy, run.trainer, w, own))
    except Exception as err:  # relayed to the driver, which names the chunk's clients
        return encode_error(f"{type(err).__name__}: {err}\n{traceback.format_exc()}")


class RayExecutor:
    """Each round's cohort over ``num_tasks`` Ray tasks, one contiguous chunk each.

    Args:
        config: the run's configuration; Ray workers rebuild trainer, strategy and data from
            it (its ``executor`` is replaced by ``inner`` there).
        address: the Ray cluster (``"HEAD:6379"``); None uses ``RAY_ADDRESS`` when set, else
            starts a local Ray instance. An already initialised Ray is used as it is.
        num_tasks: tasks (chunks) per round.
        inner: how a task trains its chunk: ``"sequential"`` or ``"vectorised"``.
        num_gpus_per_task: GPUs Ray reserves for each task (fractions share one GPU).
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        address: str | None = None,
        num_tasks: int = 2,
        inner: Inner = "sequential",
        num_gpus_per_task: float = 0.0,
    ) -> None:
        if num_tasks < 1:
            raise ConfigError(f"RayExecutor needs num_tasks >= 1, got {num_tasks}")
        inner_executor(inner)  # validates the name
        self.address = address
        self.num_tasks = num_tasks
        self.inner: Inner = inner
        self.num_gpus_per_task = num_gpus_per_task
        self.config_toml = dump_config(config.model_copy(update={"executor": inner}))
        self._config_ref: Any = None
        self._remote: Any = None
        self._started_ray = False

    def _connect(self) -> Any:
        ray = _import_ray()
        if not ray.is_initialized():
            address = self.address or os.environ.get("RAY_ADDRESS")
            try:
                if address:
                    ray.init(address=address, logging_level=logging.WARNING)
                else:
                    ray.init(include_dashboard=False, logging_level=logging.WARNING)
            except Exception as e:  # Ray raises ValueError, RuntimeError, or a bare Exception
                where = f"join the Ray cluster at {address!r}" if address else "start Ray here"
                raise FedfleetError(f"executor = 'ray': could not {where}: {e}") from e
            self._started_ray = True
        if self._remote is None:
            # Ray's default for a task asking for GPUs is max_calls=1, a fresh worker process
            # per task, which would rebuild the cached run (and a CUDA context) every round
            self._remote = ray.remote(num_cpus=1, num_gpus=self.num_gpus_per_task, max_calls=0)(
                _train_chunk
            )
            self._config_ref = ray.put(self.config_toml)
        return ray

    def close(self) -> None:
        """Drop the cached config; shut Ray down if this executor started it."""
        self._remote = self._config_ref = None
        if self._started_ray:
            _import_ray().shutdown()
            self._started_ray = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(
        self,
        strategy: Strategy,
        trainer: Trainer,
        vector: np.ndarray,
        jobs: Sequence[ClientJob],
        progress: Progress | None = None,
    ) -> list[ClientResult]:
        """Train ``jobs`` on the cluster. ``strategy`` and ``trainer`` are not sent: the workers
        build their own from the config, which must describe the same run."""
        if not jobs:
            return []
        ray = self._connect()
        vector_ref = ray.put(np.ascontiguousarray(vector, dtype="<f4").tobytes())
        bounds = chunk_bounds(len(jobs), self.num_tasks)
        refs = [
            self._remote.remote(
                self._config_ref, vector_ref, encode_jobs(None, jobs[lo:hi], with_data=False)
            )
            for lo, hi in bounds
        ]
        results: list[ClientResult] = []
        errors = []
        for ref, (lo, hi) in zip(refs, bounds, strict=True):
            ids = [j.client_id for j in jobs[lo:hi]]
            try:
                results.extend(decode_results(ray.get(ref)))
            except (FedfleetError, ray.exceptions.RayError) as err:
                errors.append(f"clients {ids}: {err}")
            if progress is not None:
                progress(hi, len(jobs))
        if errors:
            raise FedfleetError("local training failed in a Ray task for " + "; ".join(errors))
        return results
