"""How a run's cohorts train: the executor and trainer ``build_run`` picks once per run.

In-process (sequential, or vectorised with torch.func on lanes of worker threads), across forked
processes, or on a Ray cluster; see :func:`choose_executor`.
"""

from __future__ import annotations

import os

from fedfleet._threads import cores
from fedfleet.client.compiled_trainer import CompiledTrainer
from fedfleet.client.protocol import Trainer
from fedfleet.client.threaded_trainer import ThreadedTrainer
from fedfleet.client.vmap_trainer import VmapTrainer
from fedfleet.data.base import TaskData
from fedfleet.errors import ConfigError, MissingExtra
from fedfleet.runs.config import RunConfig, dump_config
from fedfleet.runs.models import model_factory
from fedfleet.sim.cohort import CohortExecutor, SequentialExecutor, VectorisedExecutor
from fedfleet.sim.federation import ClientPopulation
from fedfleet.sim.procpool import Inner, ProcessExecutor
from fedfleet.sim.ray_executor import BuildRun, RayExecutor
from fedfleet.strategies.base import Strategy, plain_client_fit

__all__ = ["choose_executor"]


def choose_executor(
    config: RunConfig,
    task: TaskData,
    trainer: Trainer,
    strategy: Strategy,
    population: ClientPopulation | None = None,
    *,
    lanes: int | None = None,
    ray_worker: BuildRun | None = None,
) -> tuple[Trainer, CohortExecutor, str]:
    """Pick how each round's cohort trains, before round 1 and for the whole run (the two paths
    agree to float32 rounding, not bit for bit, so a run never switches).

    ``auto`` vectorises when the strategy's client side is plain local training and the client
    optimizer is SGD: MLP-like models (stacks of Linear/ReLU) take the hand-fused path, 2-6x
    faster than the sequential loop per round on CPU, except small ones (parameters x batch
    <= 2^16 on the CPU), where a torch step is mostly dispatch: those train each client as
    one numba-compiled loop (:class:`CompiledTrainer`), one client per core; other models
    (convolutions, which lose under vmap on CPU) run the sequential loop on every core, one
    client per lane (:class:`ThreadedTrainer`, channels-last convolutions; see
    bench/README.md); with ``device = 'cuda'`` every such model takes the vmap path on the
    GPU.

    On the CPU, vectorised training uses every core as ``lanes`` worker threads of one torch
    thread each, each lane training its own chunks of the cohort (``VmapTrainer(workers=...)``,
    bit-identical to one lane); ``lanes`` defaults to the cores this process may run on under
    ``auto`` with ``threads = 1`` (the defaults), else to one lane of ``threads`` torch threads
    (also inside process and Ray workers, which are one core each).
    Lanes beat intra-op threads here: OpenMP's barriers stall when another process holds a
    core (``../shared/peers/README.md``). ``process`` and
    ``ray`` split the cohort into ``workers`` chunks, each trained by the in-process executor
    ``worker_executor`` names (see :func:`_chunked_executor`); ``population`` is handed to
    process workers so they read clients' data themselves, and ``ray_worker`` (for ``ray``:
    :func:`fedfleet.runs.build.worker_run`, which builds this module's caller) to the
    :class:`RayExecutor`, whose workers rebuild the run with it.
    """
    if config.executor in ("process", "ray"):
        return _chunked_executor(config, task, trainer, strategy, population, ray_worker)
    if config.privacy.sgd_noise_multiplier is not None:
        if config.executor in ("vectorised", "threaded"):
            raise ConfigError("DP-SGD trains client by client; set executor = 'sequential'")
        return trainer, SequentialExecutor(), "sequential (DP-SGD per-sample clipping)"
    if config.executor == "sequential" or config.model.backend != "torch":
        return trainer, SequentialExecutor(), "sequential"
    if config.executor == "compiled":
        # asked for by name (as inside process and Ray workers): `threads` clients at a time
        compiled = _compiled(config, task, lanes or config.threads)
        return compiled, VectorisedExecutor(), _compiled_why(compiled)
    if config.executor == "threaded":
        return _threaded(config, task, lanes or _default_lanes(config))
    plain = getattr(strategy, "client_fit", None) is plain_client_fit
    if config.executor == "auto" and not plain:
        return trainer, SequentialExecutor(), "sequential (the strategy trains each client itself)"
    c, m = config.client, config.model
    compiled_lanes = _default_lanes(config) if lanes is None else lanes
    if lanes is None:
        auto = config.executor == "auto" and config.threads == 1 and config.device == "cpu"
        # a client step must be big enough to pay for the lanes' hand-offs: on 2 cores the
        # digits MLP (9,610 params x batch 16) ran 2x slower on 2 lanes, the peers' MLP
        # (101,770 x 32) 1.5x faster
        big = trainer.layout.size * c.batch_size >= _LANE_MIN_STEP
        lanes = cores() if auto and big else 1
    try:
        vmap = VmapTrainer(
            model_factory(m, task),
            optimizer=c.optimizer,
            optimizer_args={"momentum": c.momentum, "weight_decay": c.weight_decay},
            num_threads=config.threads,
            device=config.device,
            workers=lanes,
            # the CPU's default budget keeps chunks in cache; a GPU wants whole cohorts
            max_chunk_bytes=_CUDA_CHUNK_BYTES if config.device == "cuda" else 32 << 20,
        )
    except ConfigError as err:
        if config.executor == "vectorised":
            raise
        return trainer, SequentialExecutor(), f"sequential ({err})"
    small = trainer.layout.size * c.batch_size <= _COMPILED_MAX_STEP
    if vmap.uses_fast_path and small and config.executor == "auto" and config.device == "cpu":
        try:
            compiled = _compiled(config, task, compiled_lanes)
        except (ConfigError, MissingExtra):
            pass  # not SGD, or numba missing: the vectorised cohort below
        else:
            return compiled, VectorisedExecutor(), _compiled_why(compiled)
    if vmap.uses_fast_path or config.executor == "vectorised" or config.device == "cuda":
        how = f", {lanes} lanes x 1 torch thread" if lanes > 1 else ""
        return vmap, VectorisedExecutor(), f"vectorised (torch.func cohort training{how})"
    # Convolutions under vmap lose to the sequential loop on CPU; what wins there is that
    # loop on every core, one client per lane (bench/README.md, workload c).
    if lanes < 2:
        return trainer, SequentialExecutor(), "sequential (one core)"
    return _threaded(config, task, lanes)


def _threaded(config: RunConfig, task: TaskData, lanes: int) -> tuple[Trainer, CohortExecutor, str]:
    c, m = config.client, config.model
    threaded = ThreadedTrainer(
        model_factory(m, task),
        optimizer=c.optimizer,
        optimizer_args=c.optimizer_args(),
        device=config.device,
        workers=lanes,
    )
    why = f"threaded (the sequential loop, {lanes} clients at a time, one per core"
    if threaded.sequential.memory_format == "channels_last":
        why += ", channels-last convolutions"
    return threaded, VectorisedExecutor(), why + ")"


_LANE_MIN_STEP = 1 << 20  # parameters x batch size of one client step
_CUDA_CHUNK_BYTES = 2 << 30  # a chunk's memory budget on a GPU
_COMPILED_MAX_STEP = 1 << 16  # parameters x batch size up to which compiled loops win


def _default_lanes(config: RunConfig) -> int:
    """Under ``auto``: compiled loops hand off whole clients, so they use every core when
    ``threads`` is left at 1."""
    return cores() if config.threads == 1 else config.threads


def _compiled(config: RunConfig, task: TaskData, lanes: int) -> CompiledTrainer:
    """The compiled per-client trainer; ConfigError where it does not apply."""
    c, m = config.client, config.model
    if config.device != "cpu":
        raise ConfigError("executor = 'compiled' runs on the CPU; use 'vectorised' on CUDA")
    if c.optimizer.lower() != "sgd":
        raise ConfigError(
            f"executor = 'compiled' trains with SGD, not {c.optimizer!r}; use 'sequential'"
        )
    return CompiledTrainer(
        model_factory(m, task),
        optimizer_args=c.optimizer_args(),
        workers=lanes,
    )


def _compiled_why(trainer: CompiledTrainer) -> str:
    lanes = f", {trainer.workers} clients at a time" if trainer.workers > 1 else ""
    return f"compiled (each client's SGD loop one numba call{lanes})"


def _chunked_executor(
    config: RunConfig,
    task: TaskData,
    trainer: Trainer,
    strategy: Strategy,
    population: ClientPopulation | None,
    ray_worker: BuildRun | None,
) -> tuple[Trainer, CohortExecutor, str]:
    """``process`` / ``ray``: the inner executor is ``worker_executor``, where ``auto`` means
    vectorised only on the fused MLP path (the two-clients-at-a-time thread path would fight
    the worker processes for the same cores), else sequential. The driver's trainer is built
    exactly as a Ray worker builds its own (``executor = inner``), so both train alike."""
    mode = config.worker_executor
    if mode == "auto":
        local, _, _ = choose_executor(
            config.model_copy(update={"executor": "auto"}), task, trainer, strategy
        )
        fast = isinstance(local, VmapTrainer) and local.uses_fast_path
        mode = "compiled" if isinstance(local, CompiledTrainer) else "sequential"
        mode = "vectorised" if fast else mode
    inner: Inner = mode
    n = config.workers
    if config.executor == "process":
        # forked workers must train on one torch thread (see fedfleet.sim.procpool); `threads`
        # still applies to the driver's evaluation
        one = config.model_copy(update={"executor": inner, "threads": 1})
        trainer, _, _ = choose_executor(one, task, trainer, strategy, lanes=1)
        executor: CohortExecutor = ProcessExecutor(workers=n, inner=inner, population=population)
        return trainer, executor, f"process ({n} workers x 1 torch thread, {inner} in each)"
    if ray_worker is None:
        raise ConfigError(
            "executor = 'ray' needs choose_executor(..., ray_worker=...), the function Ray "
            "workers rebuild the run with: pass fedfleet.runs.build.worker_run (build_run does)"
        )
    inner_config = config.model_copy(update={"executor": inner})
    trainer, _, _ = choose_executor(inner_config, task, trainer, strategy, lanes=1)
    executor = RayExecutor(
        dump_config(inner_config),
        ray_worker,
        address=config.ray_address,
        num_tasks=n,
        num_gpus_per_task=1.0 / n if config.device == "cuda" else 0.0,
        connect_timeout_s=config.ray_connect_timeout_s,
    )
    where = config.ray_address or os.environ.get("RAY_ADDRESS") or "a local Ray instance"
    return trainer, executor, f"ray ({n} tasks a round on {where}, {inner} in each)"
