"""The sequential loop on every core: a cohort's clients trained by :class:`TorchTrainer` copies
on worker threads, one client per lane at a time, longest first.

This is what wins for convolutional models on CPU, where ``vmap`` loses (``bench/README.md``,
workload c): each lane is a plain :meth:`TorchTrainer.fit` with one torch thread, so it keeps
the sequential path's speed (its channels-last convolutions included) and its bits: a client's
result is exactly what :meth:`TorchTrainer.fit` gives it with one torch thread, however many
lanes there are. torch releases the GIL inside its kernels, so the lanes run side by side;
threads beat torch's intra-op threads here because OpenMP's barriers stall when another process
holds a core (``../shared/peers/README.md``), and beat processes because nothing is copied.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fedfleet.client._cohort_base import CohortTrainer
from fedfleet.client._vmap_schedule import torch_threads
from fedfleet.client.protocol import FitInstructions, FitResult
from fedfleet.client.torch_trainer import OptimizerFactory, TorchTrainer
from fedfleet.data.base import ArrayDataset
from fedfleet.errors import ConfigError

__all__ = ["ThreadedTrainer"]

_RANDOM_LAYERS = (nn.modules.dropout._DropoutNd, nn.RReLU)


class ThreadedTrainer(CohortTrainer):
    """:class:`TorchTrainer` fits of a cohort, ``workers`` at a time on worker threads.

    Args:
        model, loss_fn, optimizer, optimizer_args, device, eval_batch_size, memory_format: as
            for :class:`TorchTrainer` (any optimizer; BatchNorm statistics are trained as there).
        workers: lanes, each with its own copy of the model and one torch thread.

    Models with random layers (dropout) are refused: torch has one global generator, which the
    lanes would share, so their draws would depend on timing.

    Example:
        >>> trainer = ThreadedTrainer(lambda: nn.Sequential(nn.Linear(4, 3)), workers=2)
        >>> w0 = trainer.init_vector(seed=0)
        >>> rng = np.random.default_rng(0)
        >>> data = [ArrayDataset(rng.normal(size=(10, 4)).astype(np.float32),
        ...                      rng.integers(0, 3, 10)) for _ in range(3)]
        >>> [r.num_steps for r in trainer.fit_cohort(w0, data, [FitInstructions()] * 3, [1, 2, 3])]
        [1, 1, 1]
    """

    def __init__(
        self,
        model: nn.Module | Callable[[], nn.Module],
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
        optimizer: str | OptimizerFactory = "sgd",
        optimizer_args: Mapping[str, Any] | None = None,
        device: str | torch.device = "cpu",
        eval_batch_size: int = 1024,
        workers: int = 2,
        memory_format: str = "auto",
    ) -> None:
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        self.sequential = TorchTrainer(
            model, loss_fn, optimizer, optimizer_args, device, eval_batch_size, memory_format
        )
        """The sequential trainer on the same model: lane 0, evaluation, initialisation, export."""
        random = [type(m).__name__ for m in self.sequential.model.modules()
                  if isinstance(m, _RANDOM_LAYERS)]  # fmt: skip
        if random and workers > 1:
            raise ConfigError(
                f"ThreadedTrainer refuses random layers ({', '.join(sorted(set(random)))}): its "
                "lanes would share torch's global generator; use workers=1 or the sequential or "
                "process executor"
            )
        self.workers = workers
        self._lanes = [self.sequential]
        self._args = (loss_fn, optimizer, optimizer_args, device, eval_batch_size, memory_format)

    def _lane(self, i: int) -> TorchTrainer:
        while len(self._lanes) <= i:
            module = copy.deepcopy(self.sequential.model)
            self._lanes.append(TorchTrainer(module, *self._args))
        return self._lanes[i]

    def fit_cohort(
        self,
        vector: np.ndarray,
        datasets: Sequence[ArrayDataset],
        instructions: Sequence[FitInstructions],
        seeds: Sequence[int],
    ) -> list[FitResult]:
        """Train every client from ``vector`` (not mutated); result ``i`` is client ``i``'s,
        bit for bit ``TorchTrainer.fit`` with one torch thread (``workers > 1``)."""
        self.layout.check(vector, who="the global vector")
        if not len(datasets) == len(instructions) == len(seeds):
            raise ConfigError(
                f"fit_cohort got {len(datasets)} datasets, {len(instructions)} instructions and "
                f"{len(seeds)} seeds; pass one of each per client"
            )
        work = [len(d) * max(ins.epochs, 0) for d, ins in zip(datasets, instructions, strict=True)]
        order = sorted(range(len(work)), key=lambda i: -work[i])  # longest first
        results: list[FitResult | None] = [None] * len(order)
        queue, lock = iter(order), threading.Lock()
        lanes = min(self.workers, len(order))
        trainers = [self._lane(i) for i in range(lanes)]

        def run(lane: int) -> None:
            trainer = trainers[lane]
            while True:
                with lock:
                    i = next(queue, None)
                if i is None:
                    return
                results[i] = trainer.fit(vector, datasets[i], instructions[i], seeds[i])

        devices = self.sequential._rng_devices
        # the lanes' fits seed torch's global generator; the caller gets its state back
        with torch.random.fork_rng(devices=devices), torch_threads(1 if lanes > 1 else None):
            if lanes > 1:
                with ThreadPoolExecutor(lanes) as pool:
                    for f in [pool.submit(run, lane) for lane in range(lanes)]:
                        f.result()
            elif lanes:
                run(0)
        return [r for r in results if r is not None]
