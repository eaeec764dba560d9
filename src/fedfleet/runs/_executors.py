"""How a run's cohorts train: the executor and trainer ``build_run`` picks once per run.

In-process (sequential, or vectorised with torch.func on lanes of worker threads: the choice
``Simulation`` makes too, :mod:`fedfleet.sim._executor_choice`), across forked processes, or on
a Ray cluster; see :func:`choose_executor`.
"""

from __future__ import annotations

import os
from typing import cast

from fedfleet.client import Trainer, VmapTrainer
from fedfleet.client._compiled_trainer import CompiledTrainer
from fedfleet.errors import ConfigError
from fedfleet.runs._config import RunConfig, dump_config
from fedfleet.sim._cohort import CohortExecutor, SequentialExecutor
from fedfleet.sim._executor_choice import InProcess, choose_in_process
from fedfleet.sim._federation import ClientPopulation
from fedfleet.sim._procpool import Inner, ProcessExecutor
from fedfleet.sim._ray_executor import BuildRun, RayExecutor
from fedfleet.strategies import Strategy

__all__ = ["choose_executor"]


def choose_executor(
    config: RunConfig,
    trainer: Trainer,
    strategy: Strategy,
    population: ClientPopulation | None = None,
    *,
    lanes: int | None = None,
    ray_worker: BuildRun | None = None,
) -> tuple[Trainer, CohortExecutor, str]:
    """Pick how each round's cohort trains, before round 1 and for the whole run.

    In process (``auto``, ``sequential``, ``vectorised``, ``compiled``, ``threaded``), the
    choice is :func:`fedfleet.sim._executor_choice.choose_in_process`'s, with the config's
    ``threads`` and ``client.batch_size``: the same one ``Simulation(...)`` makes by default,
    so a run from Python trains as ``fedfleet run`` does. DP-SGD trains client by client.
    ``process`` and ``ray`` split the cohort into ``workers`` chunks, each trained by the
    in-process executor ``worker_executor`` names (see :func:`_chunked_executor`);
    ``population`` is handed to process workers so they read clients' data themselves, and
    ``ray_worker`` (for ``ray``: :func:`fedfleet.runs._build.worker_run`, which builds this
    module's caller) to the :class:`RayExecutor`, whose workers rebuild the run with it.
    Inside process and Ray workers (``lanes = 1``), training is one lane of ``threads`` torch
    threads, one core each.
    """
    if config.executor in ("process", "ray"):
        return _chunked_executor(config, trainer, strategy, population, ray_worker)
    if config.privacy.sgd_noise_multiplier is not None:
        if config.executor in ("vectorised", "threaded"):
            raise ConfigError("DP-SGD trains client by client; set executor = 'sequential'")
        return trainer, SequentialExecutor(), "sequential (DP-SGD per-sample clipping)"
    if config.executor == "sequential" or config.model.backend != "torch":
        return trainer, SequentialExecutor(), "sequential"
    if config.model.fine_tunes and config.executor != "threaded":
        # the vectorised and compiled cohorts rebuild the network themselves, without the base
        # file or the adapters
        if config.executor != "auto":
            raise ConfigError(
                f"executor = {config.executor!r} cannot train from model.base or LoRA "
                "adapters; use 'auto', 'sequential' or 'threaded'"
            )
        return trainer, SequentialExecutor(), "sequential (fine-tuning a base model)"
    return choose_in_process(
        trainer,
        strategy,
        executor=cast(InProcess, config.executor),  # process and ray returned above
        threads=config.threads,
        lanes=lanes,
        batch_size=config.client.batch_size,
    )


def _chunked_executor(
    config: RunConfig,
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
        local, _, _ = choose_in_process(
            trainer,
            strategy,
            threads=config.threads,
            batch_size=config.client.batch_size,
        )
        fast = isinstance(local, VmapTrainer) and local.uses_fast_path
        mode = "compiled" if isinstance(local, CompiledTrainer) else "sequential"
        mode = "vectorised" if fast else mode
    inner: Inner = mode
    n = config.workers
    if config.executor == "process":
        # forked workers must train on one torch thread (see fedfleet.sim._procpool); `threads`
        # still applies to the driver's evaluation
        one = config.model_copy(update={"executor": inner, "threads": 1})
        trainer, _, _ = choose_executor(one, trainer, strategy, lanes=1)
        executor: CohortExecutor = ProcessExecutor(workers=n, inner=inner, population=population)
        return trainer, executor, f"process ({n} workers x 1 torch thread, {inner} in each)"
    if ray_worker is None:
        raise ConfigError(
            "executor = 'ray' needs choose_executor(..., ray_worker=...), the function Ray "
            "workers rebuild the run with: pass fedfleet.runs._build.worker_run (build_run does)"
        )
    inner_config = config.model_copy(update={"executor": inner})
    trainer, _, _ = choose_executor(inner_config, trainer, strategy, lanes=1)
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
