"""All cores on one machine: a round's cohort trained in contiguous chunks by forked workers.

:class:`ProcessExecutor` forks its worker processes once, at the first round, so each inherits
the parent's strategy and trainer copy-on-write; nothing of them is ever serialised. Per round
each worker gets one frame over its pipe (:mod:`fedfleet._codec`, the codec the network uses
too: JSON for client ids, seeds and instruction scalars, raw float32/int64 bytes for the global
vector, broadcast payloads, client state, and the clients' data unless the workers hold the
population themselves) and answers with one frame of raw trained vectors, extras, new client
states and metrics. Only
``Connection.send_bytes``/``recv_bytes`` are used, never ``send``/``recv`` or a ``Queue``
(those pickle).

Every strategy works: its ``client_fit`` runs in the worker exactly as in-process (SCAFFOLD's
control variates and FedPer's heads cross as raw arrays), so results are bit-identical to the
same inner executor run in-process chunk by chunk (the sequential inner: bit-identical to
:class:`SequentialExecutor` outright). Two rules follow from forking:

- each worker runs torch on one thread (``threads_per_worker = 1``): the OpenMP runtime torch's
  CPU wheels use is not fork-safe, and a forked child that opens a parallel region after the
  parent has used one hangs; use more workers instead of more threads;
- CUDA cannot be used across a fork; train on a GPU in-process.

A worker that dies (killed, out of memory, ``os._exit``) surfaces as a :class:`FedfleetError`
naming the clients of its chunk; an exception inside a worker is sent back with its text.
Workers stop on :meth:`ProcessExecutor.close`, at the end of a ``with`` block, or at exit.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import signal
import traceback
import weakref
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Literal, NoReturn, Protocol

import numpy as np
import torch

from fedfleet._codec import (
    Job,
    decode_jobs,
    decode_results,
    encode_error,
    encode_jobs,
    encode_results,
    from_frame,
    to_frame,
)
from fedfleet.client import Trainer
from fedfleet.data import ArrayDataset
from fedfleet.errors import ConfigError, FedfleetError
from fedfleet.sim._cohort import (
    ClientJob,
    CohortExecutor,
    Progress,
    SequentialExecutor,
    VectorisedExecutor,
)
from fedfleet.sim._federation import ClientPopulation
from fedfleet.strategies._base import ClientResult, Strategy

__all__ = ["ProcessExecutor", "chunk_bounds", "client_jobs"]

Inner = Literal["sequential", "vectorised", "compiled"]


def chunk_bounds(count: int, parts: int) -> list[tuple[int, int]]:
    """``count`` jobs split into at most ``parts`` contiguous, near-equal ``(start, stop)``
    ranges, larger ones first (as ``numpy.array_split``); empty ranges are left out."""
    size, extra = divmod(count, parts)
    bounds, start = [], 0
    for i in range(parts):
        stop = start + size + (1 if i < extra else 0)
        if stop > start:
            bounds.append((start, stop))
        start = stop
    return bounds


class _HasData(Protocol):
    def train_data(self, cid: int) -> ArrayDataset: ...


def client_jobs(jobs: Sequence[Job], population: _HasData | None) -> list[ClientJob]:
    """Decoded jobs as the in-process executors take them: each with the data sent along, or
    (``population`` given) the client's data from the receiver's own copy of the population,
    refused by name when its size differs from the sender's."""
    out = []
    for job in jobs:
        data = job.data
        if population is not None:
            data = population.train_data(job.client_id)
            if len(data) != job.num_samples:
                raise FedfleetError(
                    f"client {job.client_id} has {len(data)} samples here but "
                    f"{job.num_samples} where the round was planned; both sides must hold the "
                    "same dataset"
                )
        if data is None:
            raise FedfleetError(f"client {job.client_id}'s job came without its data")
        out.append(ClientJob(job.client_id, data, job.instructions, job.seed, job.state))
    return out


def inner_executor(inner: Inner) -> CohortExecutor:
    """The in-process executor a worker (process or Ray task) runs its chunk with."""
    if inner in ("vectorised", "compiled"):  # a compiled trainer has fit_cohort too
        return VectorisedExecutor()
    if inner == "sequential":
        return SequentialExecutor()
    raise ConfigError(
        f"inner executor must be 'sequential', 'vectorised' or 'compiled', got {inner!r}"
    )


def _worker_main(
    conn: Connection,
    strategy: Strategy,
    trainer: Trainer,
    inner: Inner,
    threads: int,
    population: ClientPopulation | None,
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and closes us
    torch.set_num_threads(threads)
    executor = inner_executor(inner)
    while True:
        try:
            frame = conn.recv_bytes()
        except EOFError:
            return
        if not frame:  # the stop signal
            return
        try:
            vector, decoded = decode_jobs(from_frame(frame, "the parent process"))
            if vector is None:
                raise FedfleetError("the parent process sent jobs without the global vector")
            jobs = client_jobs(decoded, population)
            reply = to_frame(encode_results(executor.run(strategy, trainer, vector, jobs)))
        except Exception as err:  # relayed to the parent, which names the chunk's clients
            reply = to_frame(encode_error(f"{type(err).__name__}: {err}\n{traceback.format_exc()}"))
        conn.send_bytes(reply)


class ProcessExecutor:
    """Trains each round's cohort over ``workers`` forked processes, one contiguous chunk each.

    Args:
        workers: worker processes (at most this many chunks a round).
        inner: how a worker trains its chunk: ``"sequential"`` (each ``client_fit``) or
            ``"vectorised"`` (one ``trainer.fit_cohort``, e.g. a ``VmapTrainer``).
        threads_per_worker: torch threads in each worker; must be 1 (see the module docstring).
        population: the run's clients (e.g. its ``Federation``), inherited by the workers, which
            then read each client's data from their own copy instead of receiving it every
            round (checked by sample count); None sends the data with the jobs.

    Examples:
        >>> with ProcessExecutor(workers=2) as ex:                          # doctest: +SKIP
        ...     Simulation(trainer, federation, strategy, executor=ex).run(10)
    """

    def __init__(
        self,
        workers: int = 2,
        inner: Inner = "sequential",
        threads_per_worker: int = 1,
        population: ClientPopulation | None = None,
    ):
        if workers < 1:
            raise ConfigError(f"ProcessExecutor needs workers >= 1, got {workers}")
        if threads_per_worker != 1:
            raise ConfigError(
                f"threads_per_worker = {threads_per_worker}: forked workers must run torch on one "
                "thread (its OpenMP runtime hangs in a forked child that opens a parallel "
                "region); use more workers instead"
            )
        inner_executor(inner)  # validates the name
        self.workers = workers
        self.inner: Inner = inner
        self.threads_per_worker = threads_per_worker
        self.population = population
        self._procs: list[BaseProcess] = []
        self._conns: list[Connection] = []
        self._forked_with: tuple[Strategy, Trainer] | None = None
        atexit.register(_close_at_exit, weakref.ref(self))

    @property
    def pids(self) -> list[int]:
        """Process ids of the running workers (empty before the first round)."""
        return [p.pid for p in self._procs if p.pid is not None]

    def __enter__(self) -> ProcessExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, wait_s: float = 5.0) -> None:
        """Stop the workers (idempotent): each finishes its chunk, or is killed after
        ``wait_s``; a later round forks fresh ones."""
        for conn in self._conns:
            try:
                conn.send_bytes(b"")
            except OSError:
                pass
        for proc in self._procs:
            proc.join(timeout=wait_s)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self._conns:
            conn.close()
        self._procs, self._conns, self._forked_with = [], [], None

    def _start(self, strategy: Strategy, trainer: Trainer) -> None:
        forked = self._forked_with
        # the objects themselves, not their ids: a new strategy may be allocated at a freed
        # one's address, and workers forked with the old one must not train for it
        same = forked is not None and forked[0] is strategy and forked[1] is trainer
        if same and all(p.is_alive() for p in self._procs):
            return
        self.close()
        threads = getattr(trainer, "num_threads", None)
        if threads is not None and threads != 1:
            raise ConfigError(
                f"the trainer sets {threads} torch threads for its cohort training; in a forked "
                "worker that can hang (see fedfleet.sim._procpool): build it with num_threads=1"
            )
        if torch.cuda.is_initialized():
            raise FedfleetError(
                "ProcessExecutor cannot fork workers after CUDA is initialised; train on the GPU "
                "in-process (executor 'sequential' or 'vectorised')"
            )
        ctx = mp.get_context("fork")
        for _ in range(self.workers):
            parent, child = ctx.Pipe(duplex=True)
            proc = ctx.Process(
                target=_worker_main,
                args=(
                    child,
                    strategy,
                    trainer,
                    self.inner,
                    self.threads_per_worker,
                    self.population,
                ),
                daemon=True,
            )
            proc.start()
            child.close()  # so the parent sees EOF when the worker dies
            self._procs.append(proc)
            self._conns.append(parent)
        self._forked_with = (strategy, trainer)

    def run(
        self,
        strategy: Strategy,
        trainer: Trainer,
        vector: np.ndarray,
        jobs: Sequence[ClientJob],
        progress: Progress | None = None,
    ) -> list[ClientResult]:
        if not jobs:
            return []
        self._start(strategy, trainer)
        try:
            return self._exchange(vector, jobs, progress)
        except BaseException:
            # replies not read now would be read as the next round's: never reuse these workers
            self.close(wait_s=0.0)
            raise

    def _exchange(
        self, vector: np.ndarray, jobs: Sequence[ClientJob], progress: Progress | None
    ) -> list[ClientResult]:
        bounds = chunk_bounds(len(jobs), self.workers)
        sent = []
        for w, (lo, hi) in enumerate(bounds):
            try:
                message = encode_jobs(vector, jobs[lo:hi], with_data=self.population is None)
                self._conns[w].send_bytes(to_frame(message))
            except OSError:
                self._fail(w, jobs[lo:hi], "could not be sent its jobs")
            sent.append((w, lo, hi))
        results: list[ClientResult] = []
        errors: list[str] = []
        for w, lo, hi in sent:
            try:
                frame = self._conns[w].recv_bytes()
            except (EOFError, OSError):
                self._fail(w, jobs[lo:hi], "died")
            try:
                results.extend(decode_results(from_frame(frame, f"worker {w}")))
            except FedfleetError as err:
                errors.append(f"clients {_ids(jobs[lo:hi])} (worker {w}): {err}")
            if progress is not None:
                progress(hi, len(jobs))
        if errors:
            raise FedfleetError(
                "local training failed in a worker process for " + "; ".join(errors)
            )
        return results

    def _fail(self, w: int, chunk: Sequence[ClientJob], what: str) -> NoReturn:
        proc = self._procs[w]
        proc.join(timeout=5)
        code = proc.exitcode
        self.close(wait_s=0.0)
        raise FedfleetError(
            f"worker process {w} (pid {proc.pid}) {what} (exit code {code}) while training "
            f"clients {_ids(chunk)}; no result was received for them. A worker dies from a "
            "signal (e.g. the OOM killer: try fewer workers or a smaller cohort) or from code "
            "that exits the process; the next round forks fresh workers"
        )


def _close_at_exit(ref: weakref.ref[ProcessExecutor]) -> None:
    executor = ref()
    if executor is not None:
        executor.close()


def _ids(jobs: Sequence[ClientJob]) -> list[int]:
    return [j.client_id for j in jobs]
