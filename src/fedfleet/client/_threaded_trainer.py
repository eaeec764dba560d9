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
from fedfleet.client._protocol import FitInstructions, FitResult
from fedfleet.client._torch_trainer import OptimizerFactory, TorchTrainer
from fedfleet.client._vmap_schedule import torch_threads
from fedfleet.data import ArrayDataset
from fedfleet.errors import ConfigError

__all__ = ["ThreadedTrainer"]

_RANDOM_LAYERS = (nn.modules.dropout._DropoutNd, nn.RReLU)


class ThreadedTrainer(CohortTrainer):
    """:class:`TorchTrainer` fits of a cohort, ``workers`` at a time on worker threads.

    Args:
        model: a module or a zero-argument factory, as for :class:`TorchTrainer`.
        loss_fn: as for :class:`TorchTrainer`.
        optimizer: any ``torch.optim`` optimizer, as for :class:`TorchTrainer`.
        optimizer_args: as for :class:`TorchTrainer`.
        device: as for :class:`TorchTrainer`.
        eval_batch_size: as for :class:`TorchTrainer`.
        workers: lanes, each with its own copy of the model and one torch thread.
        memory_format: as for :class:`TorchTrainer` (BatchNorm statistics are trained as there).

    Models with random layers (dropout) are refused: torch has one global generator, which the
    lanes would share, so their draws would depend on timing.

    Examples:
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
        self.device = self.sequential.device
        self._checked_random = False
        self._lanes = [self.sequential]
        self._args = (loss_fn, optimizer, optimizer_args, device, eval_batch_size, memory_format)

    def _lane(self, i: int) -> TorchTrainer:
        while len(self._lanes) <= i:
            module = copy.deepcopy(self.sequential.model)
            self._lanes.append(TorchTrainer(module, *self._args))
        return self._lanes[i]

    @property
    def model(self) -> nn.Module:
        """Lane 0's module (the sequential trainer's), which trains single-client fits."""
        return self.sequential.model

    def fit_cohort(
        self,
        vector: np.ndarray,
        datasets: Sequence[ArrayDataset],
        instructions: Sequence[FitInstructions],
        seeds: Sequence[int],
    ) -> list[FitResult]:
        """Train every client from ``vector`` (not mutated); result ``i`` is client ``i``'s,
        bit for bit ``TorchTrainer.fit`` with one torch thread (``workers > 1``).

        Raises:
            ConfigError: mismatched arguments, a bad batch size, or a model that draws random
                numbers in training (found on the first call) when there are several lanes.
            DatasetError: clients' samples of different shapes (named by position). Any other
                error of a client's fit is raised with a note naming the client; no lane
                starts another client after it.
        """
        self._check_cohort(vector, datasets, instructions, seeds)
        for i, ins in enumerate(instructions):
            if ins.batch_size < 1:
                raise ConfigError(f"client {i}: batch_size must be >= 1, got {ins.batch_size}")
        if self.workers > 1 and not self._checked_random:
            self._refuse_random_draws(next((d for d in datasets if len(d)), None))
        work = [len(d) * max(ins.epochs, 0) for d, ins in zip(datasets, instructions, strict=True)]
        order = sorted(range(len(work)), key=lambda i: -work[i])  # longest first
        results: list[FitResult | None] = [None] * len(order)
        queue, lock = iter(order), threading.Lock()
        failed = threading.Event()
        lanes = min(self.workers, len(order))
        trainers = [self._lane(i) for i in range(lanes)]

        def run(lane: int) -> None:
            trainer = trainers[lane]
            while not failed.is_set():
                with lock:
                    i = next(queue, None)
                if i is None:
                    return
                try:
                    results[i] = trainer.fit(vector, datasets[i], instructions[i], seeds[i])
                except Exception as err:
                    failed.set()
                    err.add_note(f"while training client {i} of the cohort (ThreadedTrainer)")
                    raise

        devices = self.sequential._rng_devices
        # the lanes' fits seed torch's global generator; the caller gets its state back. One
        # torch thread whenever there can be lanes, so a client's bits never depend on how
        # many clients its cohort has.
        threads = 1 if self.workers > 1 else None
        with torch.random.fork_rng(devices=devices), torch_threads(threads):
            if lanes > 1:
                with ThreadPoolExecutor(lanes) as pool:
                    for f in [pool.submit(run, lane) for lane in range(lanes)]:
                        f.result()
            elif lanes:
                run(0)
        return [r for r in results if r is not None]

    def _refuse_random_draws(self, data: ArrayDataset | None) -> None:
        """One training-mode forward pass on a copy of the model: if it moved torch's
        generator (``F.dropout`` in a ``forward``, ``torch.randn`` in a layer), the lanes
        would share the draws, so the model is refused."""
        if data is None:
            return
        probe = copy.deepcopy(self.sequential.model).train()
        x = torch.as_tensor(data.rows(np.arange(min(2, len(data))))[0], device=self.device)
        devices = self.sequential._rng_devices
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            before = [torch.get_rng_state(), *(torch.cuda.get_rng_state(d) for d in devices)]
            probe(x)
            after = [torch.get_rng_state(), *(torch.cuda.get_rng_state(d) for d in devices)]
        if any(not torch.equal(a, b) for a, b in zip(before, after, strict=True)):
            raise ConfigError(
                f"ThreadedTrainer refuses models that draw random numbers in training "
                f"({type(self.sequential.model).__name__}'s forward pass moved torch's "
                "generator): its lanes would share it; use workers=1 or the sequential or "
                "process executor"
            )
        self._checked_random = True
