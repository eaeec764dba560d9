"""Beyond one machine: a round's cohort spread over a Ray cluster, one task per chunk.

:class:`RayExecutor` splits each round's jobs into ``num_tasks`` contiguous chunks and runs one
Ray task per chunk. A task trains its chunk with the same in-process code as the local engine
(``SequentialExecutor`` or ``VectorisedExecutor``) on a trainer and strategy that the Ray worker
builds itself, once per worker process, from a setup text with the executor's ``build``
function (for a run: its configuration and :func:`fedfleet.runs._build.worker_run`, which
caches by the config's SHA-256), so results are bit-identical to the local run with the same
config and seed. This module knows nothing of configs: whoever creates the executor says how a
worker builds its run.

What crosses via Ray, and why that is acceptable:

- the setup text (for a run, its configuration as TOML; ``ray.put`` once per executor): every
  Ray worker rebuilds the task, federation, trainer and strategy from it; clients' data are
  therefore loaded or generated on the worker, never shipped (a dataset read from files must
  exist at the same path on every node; digits and the synthetic ones need nothing);
- the global vector as a frame of its own (``ray.put`` once per round);
- each chunk's jobs and each task's results as one :mod:`fedfleet._codec` frame of ``bytes``
  (the codec the process pool and the network use): JSON (client ids, seeds, instruction
  scalars, metrics) plus raw arrays (payloads, client state, trained vectors, extras);
- the task function and the ``build`` function, which Ray's cloudpickle sends by reference
  (module and name), so fedfleet must be installed on every node.

Ray wraps these ``str``/``bytes`` values in its own (pickle-based) envelope; none of our objects
is pickled, and the envelope is exchanged only inside the Ray cluster, whose nodes run each
other's code by design and must be a trusted network (Ray's own security model). Anything
crossing an untrusted boundary goes through :mod:`fedfleet.net` instead.

Ray is an optional extra (``pip install 'fedfleet[ray]'``); importing this module works without
it, and constructing the executor then raises ``MissingExtra`` (a :class:`FedfleetError`) naming
the extra.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from fedfleet._codec import (
    decode_jobs,
    decode_results,
    encode_error,
    encode_jobs,
    encode_results,
    from_frame,
    to_frame,
)
from fedfleet._extras import check, require
from fedfleet.client import Trainer
from fedfleet.errors import ConfigError, FedfleetError
from fedfleet.sim._cohort import ClientJob, CohortExecutor, Progress
from fedfleet.sim._procpool import chunk_bounds, client_jobs
from fedfleet.strategies._base import ClientResult, Strategy

__all__ = ["BuildRun", "RayExecutor", "WorkerRun"]


def _import_ray() -> Any:
    return require("ray", feature="executor 'ray'")


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``"HOST:PORT"`` (or ``"ray://HOST:PORT"``, ``"[::1]:PORT"``); None
    for what Ray resolves itself (``"auto"``) or rejects with its own message."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _check_reachable(address: str, timeout_s: float) -> None:
    """Raise :class:`FedfleetError` unless ``address`` accepts a TCP connection within
    ``timeout_s``: Ray itself would retry a closed port for minutes and then say only that it
    could not connect."""
    hp = _host_port(address)
    if hp is None:
        return
    host, port = hp
    where = f"executor = 'ray': could not join the Ray cluster at {address!r}"
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except ConnectionRefusedError:
        raise FedfleetError(
            f"{where}: nothing is listening at {host}:{port} (connection refused); is the head "
            f"running there (`ray start --head --port={port}`) and is ray_address right?"
        ) from None
    except TimeoutError:
        raise FedfleetError(
            f"{where}: no answer from {host}:{port} within {timeout_s:g} s "
            "(ray_connect_timeout_s); is the host up and the port open to this machine?"
        ) from None
    except socket.gaierror as e:
        raise FedfleetError(f"{where}: cannot resolve the host {host!r} ({e.strerror})") from None
    except OSError as e:
        raise FedfleetError(f"{where}: cannot reach {host}:{port} ({e.strerror or e})") from None


@contextlib.contextmanager
def _gcs_wait_bounded(ray: Any, timeout_s: float) -> Iterator[None]:
    """Make ``ray.init(address=...)`` give up on the GCS after about ``timeout_s``.

    Ray (2.60) tries ``RAY_gcs_server_port_wait_time_s`` times (default 20), each waiting
    ``gcs_rpc_server_connect_timeout_s`` (5) for the channel, as long again for its pubsub and
    ``py_gcs_connect_timeout_s`` (30) for the cluster id, then 1 s: 830 s in all. Here it is
    one try whose parts add up to ``timeout_s``. Ray reads the first from the environment at
    each connect, the other two when its config is (re)initialised, as Ray's own token set-up
    also does before ``ray.init``. Values the user has set in the environment are kept; the
    environment is restored afterwards.
    """
    rpc_s = max(1, min(5, int(timeout_s // 4)))
    knobs = {
        "RAY_gcs_server_port_wait_time_s": "1",
        "RAY_gcs_rpc_server_connect_timeout_s": str(rpc_s),
        "RAY_py_gcs_connect_timeout_s": str(max(1, round(timeout_s) - 2 * rpc_s - 1)),
    }
    added = {k: v for k, v in knobs.items() if k not in os.environ}
    os.environ.update(added)
    try:
        with contextlib.suppress(AttributeError):  # where a later Ray has moved it
            ray._raylet.Config.initialize("")
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _why(err: BaseException, address: str, timeout_s: float) -> str:
    """What went wrong joining the cluster, from Ray's exception chain (whose top is only
    "Failed to connect to Ray cluster"), and how to fix it."""
    chain: list[str] = []
    e: BaseException | None = err
    while e is not None and len(chain) < 10:
        chain.append(f"{type(e).__name__}: {e}")
        e = e.__cause__ or e.__context__
    text = "\n".join(chain)
    if any(s in text for s in ("AuthenticationError", "InvalidAuthToken", "Unauthenticated")):
        if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            fix = (
                "this process has token authentication off: set RAY_AUTH_MODE=token and "
                "RAY_AUTH_TOKEN=<the head's token> (`ray get-auth-token` on the head prints it; "
                "or RAY_AUTH_TOKEN_PATH=<a file holding it>, or copy it to ~/.ray/auth_token)"
            )
        else:
            fix = (
                "the token this process sent (RAY_AUTH_TOKEN, else the file at "
                "RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token) is missing or is not the head's; "
                "`ray get-auth-token` on the head prints the right one"
            )
        return (
            "the cluster requires an authentication token (Ray token authentication) and "
            f"{fix}; see the README's Ray cluster section"
        )
    if "Timed out while waiting for GCS" in text or "TimedOut" in text:
        return (
            f"{address} accepts connections but no Ray GCS answered within about {timeout_s:g} s "
            "(ray_connect_timeout_s); is it the head's GCS port (`ray start --head --port`), "
            "not its dashboard or client port, and is the head healthy?"
        )
    last = chain[-1].strip().splitlines()[-1] if chain else ""
    return f"{err}" + (f" ({last})" if last and last not in f"{err}" else "")


@dataclasses.dataclass(frozen=True)
class WorkerRun:
    """What a Ray worker trains its chunks with: built there by the executor's ``build``."""

    strategy: Strategy
    trainer: Trainer
    federation: Any
    executor: CohortExecutor


BuildRun = Callable[[str], WorkerRun]
"""A module-level function (Ray sends it by reference) from the setup text to the worker's run;
it is called for every chunk, so it caches what it builds."""


def _train_chunk(build: BuildRun, setup: str, vector: bytes, request: bytes) -> bytes:
    """The Ray task: train one chunk of clients; an error comes back as an error frame."""
    try:
        run = build(setup)
        w, _ = decode_jobs(from_frame(vector, "the driver's vector"))
        if w is None:
            raise FedfleetError("the driver's vector frame holds no vector")
        _, jobs = decode_jobs(from_frame(request, "the driver"))
        own = client_jobs(jobs, run.federation)
        return to_frame(encode_results(run.executor.run(run.strategy, run.trainer, w, own)))
    except Exception as err:  # relayed to the driver, which names the chunk's clients
        return to_frame(encode_error(f"{type(err).__name__}: {err}\n{traceback.format_exc()}"))


class RayExecutor:
    """Each round's cohort over ``num_tasks`` Ray tasks, one contiguous chunk each.

    For a run, :func:`fedfleet.runs._executors.choose_executor` makes one from its configuration.

    Args:
        setup: the text each Ray worker builds its run from (a run's configuration as TOML).
        build: the worker's side, ``build(setup) -> WorkerRun``: a module-level function,
            cached there (it is called for every chunk).
        address: the Ray cluster (``"HEAD:6379"``); None uses ``RAY_ADDRESS`` when set, else
            starts a local Ray instance. An already initialised Ray is used as it is.
        num_tasks: tasks (chunks) per round.
        num_gpus_per_task: GPUs Ray reserves for each task (fractions share one GPU).
        connect_timeout_s: joining the cluster at ``address`` fails after about this long
            (an unreachable address at once), with the cause in the message.
    """

    def __init__(
        self,
        setup: str,
        build: BuildRun,
        *,
        address: str | None = None,
        num_tasks: int = 2,
        num_gpus_per_task: float = 0.0,
        connect_timeout_s: float = 30.0,
    ) -> None:
        if num_tasks < 1:
            raise ConfigError(f"RayExecutor needs num_tasks >= 1, got {num_tasks}")
        if not connect_timeout_s > 0:
            raise ConfigError(f"RayExecutor needs connect_timeout_s > 0, got {connect_timeout_s}")
        check("ray", feature="executor 'ray'")
        self.address = address
        self.num_tasks = num_tasks
        self.num_gpus_per_task = num_gpus_per_task
        self.connect_timeout_s = connect_timeout_s
        self.setup = setup
        self.build = build
        self._setup_ref: Any = None
        self._remote: Any = None
        self._started_ray = False

    def _connect(self) -> Any:
        ray = _import_ray()
        if not ray.is_initialized():
            address = self.address or os.environ.get("RAY_ADDRESS")
            try:
                if address:
                    _check_reachable(address, self.connect_timeout_s)
                    with _gcs_wait_bounded(ray, self.connect_timeout_s):
                        ray.init(address=address, logging_level=logging.WARNING)
                else:
                    ray.init(include_dashboard=False, logging_level=logging.WARNING)
            except FedfleetError:
                raise
            except Exception as e:  # Ray raises ValueError, RuntimeError, or a bare Exception
                if address:
                    why = _why(e, address, self.connect_timeout_s)
                    where = f"join the Ray cluster at {address!r}"
                else:
                    why, where = str(e), "start Ray here"
                raise FedfleetError(f"executor = 'ray': could not {where}: {why}") from e
            self._started_ray = True
        if self._remote is None:
            # Ray's default for a task asking for GPUs is max_calls=1, a fresh worker process
            # per task, which would rebuild the cached run (and a CUDA context) every round
            self._remote = ray.remote(num_cpus=1, num_gpus=self.num_gpus_per_task, max_calls=0)(
                _train_chunk
            )
            self._setup_ref = ray.put(self.setup)
        return ray

    def close(self) -> None:
        """Drop the cached setup; shut Ray down if this executor started it."""
        self._remote = self._setup_ref = None
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
        build their own from the setup, which must describe the same run."""
        if not jobs:
            return []
        ray = self._connect()
        vector_ref = ray.put(to_frame(encode_jobs(np.asarray(vector, np.float32), [])))
        bounds = chunk_bounds(len(jobs), self.num_tasks)
        refs = [
            self._remote.remote(
                self.build,
                self._setup_ref,
                vector_ref,
                to_frame(encode_jobs(None, jobs[lo:hi], with_data=False)),
            )
            for lo, hi in bounds
        ]
        results: list[ClientResult] = []
        errors = []
        for ref, (lo, hi) in zip(refs, bounds, strict=True):
            ids = [j.client_id for j in jobs[lo:hi]]
            try:
                results.extend(decode_results(from_frame(ray.get(ref), "Ray task")))
            except (FedfleetError, ray.exceptions.RayError) as err:
                errors.append(f"clients {ids}: {err}")
            if progress is not None:
                progress(hi, len(jobs))
        if errors:
            raise FedfleetError("local training failed in a Ray task for " + "; ".join(errors))
        return results
