"""Compiled per-client loops for small MLPs: the lean sequential path where dispatch dominates.

For a model of a few thousand parameters, a torch SGD step is almost all operator dispatch: the
vectorised cohort pays ~80 us a step whatever the batch, so a client with 47,000 steps (a large
Synthetic(1,1) device at 20 epochs) sets the round's length. :class:`CompiledTrainer` runs each
client's whole local loop as one call of a numba-compiled function (``_mlp_kernel``): the same
batches, the same ``torch.optim.SGD`` update, float32, at the cost of the arithmetic (~7 us a
step for a 60-10 logistic regression at batch 10). Clients are independent calls that release
the GIL, so ``workers`` threads train a cohort on as many cores, longest clients first.

Results agree with :class:`~fedfleet.client.TorchTrainer` and the vectorised cohort to float32
rounding (different summation order), and are bit-identical run to run and for any number of
workers. Evaluation, initialisation and export are the sequential trainer's.

Only plain MLPs (``nn.Sequential`` of ``Flatten``, ``Linear``, ``ReLU``) with cross-entropy and
SGD (momentum, dampening, Nesterov, weight decay; FedProx's mu and SCAFFOLD's correction) fit;
the kernel is plain loops, so large layers are several times slower than torch's BLAS products
(``choose_executor`` only picks it for small steps).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from torch import nn
from torch.nn import functional as F

from fedfleet._extras import require
from fedfleet.client._cohort_base import CohortTrainer
from fedfleet.client._protocol import FitInstructions, FitResult, gradient_terms
from fedfleet.client._torch_trainer import TorchTrainer
from fedfleet.client._vmap_mlp import mlp_layers
from fedfleet.client._vmap_schedule import batch_table
from fedfleet.client._vmap_sgd import StackedSGD
from fedfleet.data import ArrayDataset
from fedfleet.errors import ConfigError, DatasetError
from fedfleet.params import Layout

__all__ = ["CompiledTrainer"]


class CompiledTrainer(CohortTrainer):
    """Trains each client of a cohort in one compiled call; a drop-in :class:`Trainer`.

    Args:
        model: an ``nn.Sequential`` MLP, or a zero-argument factory building one.
        optimizer_args: ``momentum``, ``dampening``, ``nesterov``, ``weight_decay``, with
            ``torch.optim.SGD``'s meaning.
        eval_batch_size: batch size for :meth:`evaluate` (the sequential trainer's).
        workers: threads training clients side by side (one core each).

    Raises:
        ConfigError: the model is not a plain MLP, or an optimizer argument is unknown.
        LayoutError: the model is not float32 (from the sequential trainer).

    Examples:
        >>> trainer = CompiledTrainer(lambda: nn.Sequential(nn.Linear(4, 3)))
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
        optimizer_args: Mapping[str, Any] | None = None,
        eval_batch_size: int = 1024,
        workers: int = 1,
    ) -> None:
        require("numba", feature="CompiledTrainer (executor 'compiled')")  # compiles on 1st fit
        args = dict(optimizer_args or {})
        sgd = StackedSGD.from_args(args, "CompiledTrainer")
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        self.sequential = TorchTrainer(model, F.cross_entropy, "sgd", args, "cpu", eval_batch_size)
        """The sequential trainer on the same model: evaluation, initialisation, export."""
        self.workers = workers
        self.nesterov = sgd.nesterov
        self._sgd = (sgd.weight_decay, sgd.momentum, sgd.dampening)
        self._net = _Net.of(self.sequential.model, self.layout)

    def fit_cohort(
        self,
        vector: np.ndarray,
        datasets: Sequence[ArrayDataset],
        instructions: Sequence[FitInstructions],
        seeds: Sequence[int],
    ) -> list[FitResult]:
        """Train every client from ``vector`` (not mutated); result ``i`` is client ``i``'s,
        equal to ``TorchTrainer.fit`` on it to float32 rounding.

        Raises:
            ConfigError: mismatched arguments, a bad batch size or gradient term.
            DatasetError: a client's samples do not match the model's input, or a label is out
                of range (named by the client's position in the cohort).
        """
        from fedfleet.client._mlp_kernel import train_mlp

        self._check_cohort(vector, datasets, instructions, seeds, one_shape=False)
        net = self._net
        w0 = np.ascontiguousarray(vector[net.order], dtype=np.float32)  # kernel layout
        jobs = [
            self._job(i, d, ins, s)
            for i, (d, ins, s) in enumerate(zip(datasets, instructions, seeds, strict=True))
        ]
        out = np.empty((len(jobs), self.layout.size), dtype=np.float32)
        losses = np.zeros(len(jobs))
        order = sorted(range(len(jobs)), key=lambda i: -len(jobs[i].batches))  # longest first
        queue, lock = iter(order), threading.Lock()

        def run() -> None:
            mom, grad, h, z, d = net.scratch(max((j.batches.shape[1] for j in jobs), default=1))
            while True:
                with lock:
                    i = next(queue, None)
                if i is None:
                    return
                job, row = jobs[i], w0.copy()
                if len(job.batches):
                    losses[i] = train_mlp(
                        row, w0, job.correction, mom, grad, job.x, job.y, job.batches,
                        job.sgd, self.nesterov, net.dims, net.w_at, net.b_at, net.relu, h, z, d,
                    )  # fmt: skip
                np.take(row, net.back, out=out[i])

        lanes = min(self.workers, len(jobs))
        if lanes > 1:
            with ThreadPoolExecutor(lanes) as pool:
                for f in [pool.submit(run) for _ in range(lanes)]:
                    f.result()
        elif lanes:
            run()
        results = []
        for i, job in enumerate(jobs):
            seen = int((job.batches >= 0).sum())
            metrics = {"train_loss": float(losses[i] / seen)} if seen else {}
            results.append(FitResult(out[i], len(job.y), len(job.batches), metrics))
        return results

    def _job(self, i: int, data: ArrayDataset, ins: FitInstructions, seed: int) -> _Job:
        if ins.batch_size < 1:
            raise ConfigError(f"client {i}: batch_size must be >= 1, got {ins.batch_size}")
        if not ins.lr >= 0:
            raise ConfigError(f"client {i}: lr must be >= 0, got {ins.lr}")
        mu, correction = gradient_terms(ins, self.layout)
        n, dims = len(data), self._net.dims
        features = int(np.prod(data.x.shape[1:]))
        x = np.ascontiguousarray(data.x, dtype=np.float32).reshape(n, features)
        if features != dims[0] or (data.x.ndim != 2 and not self._net.flatten):
            raise DatasetError(
                f"client {i}'s samples have {features} features ({data.x.shape[1:]}); the "
                f"model's first layer takes {dims[0]}"
            )
        if data.y.ndim != 1 or len(data.y) != n or not np.issubdtype(data.y.dtype, np.integer):
            raise DatasetError(
                f"client {i}'s labels are {data.y.dtype} of shape {data.y.shape}; cross-entropy "
                f"takes one integer class per sample ({n})"
            )
        y = np.ascontiguousarray(data.y, dtype=np.int64)
        if n and (y.min() < 0 or y.max() >= dims[-1]):
            bad = int(y[(y < 0) | (y >= dims[-1])][0])
            raise DatasetError(
                f"client {i} has label {bad}; the model has {dims[-1]} classes (0..{dims[-1] - 1})"
            )
        decay, momentum, dampening = self._sgd
        sgd = np.array([ins.lr, mu, decay, momentum, dampening], dtype=np.float32)
        empty = np.empty(0, dtype=np.float32)
        corr = empty if correction is None else correction[self._net.order]
        batches = batch_table(n, ins, seed)
        # a batch wider than the data holds n samples and padding: keep the n columns, so the
        # scratch is sized by the rows a step really has
        return _Job(x, y, batches[:, : max(n, 1)], sgd, corr)


def kernel_order(dims: np.ndarray, w_at: np.ndarray, size: int) -> np.ndarray:
    """Indices ``perm`` with ``vector[perm]`` in kernel layout (each ``nn.Linear`` weight
    ``[out, in]`` at ``w_at[l]`` transposed in place); ``argsort(perm)`` maps back."""
    perm = np.arange(size, dtype=np.int64)
    for layer, at in enumerate(w_at):
        d_in, d_out = int(dims[layer]), int(dims[layer + 1])
        block = np.arange(at, at + d_in * d_out, dtype=np.int64).reshape(d_out, d_in)
        perm[at : at + d_in * d_out] = block.T.reshape(-1)
    return perm


class _Job:
    """One client's arrays, as the kernel takes them."""

    __slots__ = ("batches", "correction", "sgd", "x", "y")

    def __init__(
        self, x: np.ndarray, y: np.ndarray, batches: np.ndarray, sgd: np.ndarray, corr: np.ndarray
    ) -> None:
        self.x, self.y, self.batches, self.sgd, self.correction = x, y, batches, sgd, corr


class _Net:
    """The MLP's shape as the kernel reads it: widths, offsets of weights and biases, ReLUs."""

    def __init__(
        self,
        dims: np.ndarray,
        w_at: np.ndarray,
        b_at: np.ndarray,
        relu: np.ndarray,
        size: int,
        flatten: bool,
    ) -> None:
        self.dims, self.w_at, self.b_at, self.relu = dims, w_at, b_at, relu
        self.size, self.flatten = size, flatten
        self.order = kernel_order(dims, w_at, size)  # vector[order]: the kernel's layout
        self.back = np.argsort(self.order)  # kernel_vector[back]: the model's layout

    @classmethod
    def of(cls, module: nn.Module, layout: Layout) -> _Net:
        specs = {s.name: s for s in layout.specs}
        trainable = [n for n, p in module.named_parameters() if p.requires_grad]
        mlp = mlp_layers(module, trainable)
        if mlp is None or sorted(specs) != sorted(trainable):
            raise ConfigError(
                f"CompiledTrainer trains an nn.Sequential of Flatten, Linear and ReLU layers "
                f"with every parameter trainable and no buffers; got {type(module).__name__}"
            )
        dims = [specs[mlp.layers[0][0]].shape[1]]
        w_at, b_at, relu = [], [], []
        for wname, bname, after in mlp.layers:
            out, inp = specs[wname].shape
            if inp != dims[-1]:
                raise ConfigError(f"layer {wname!r} takes {inp} inputs after {dims[-1]} outputs")
            dims.append(out)
            w_at.append(specs[wname].offset)
            b_at.append(specs[bname].offset if bname else -1)
            relu.append(after)
        return cls(
            np.array(dims, dtype=np.int64),
            np.array(w_at, dtype=np.int64),
            np.array(b_at, dtype=np.int64),
            np.array(relu, dtype=np.bool_),
            layout.size,
            mlp.flatten,
        )

    def scratch(self, width: int) -> tuple[np.ndarray, ...]:
        """One lane's buffers: momentum, gradient, activations, pre-activations, errors."""
        cells = width * int(self.dims.max())
        layers = len(self.dims) - 1
        return (
            np.zeros(self.size, dtype=np.float32),
            np.zeros(self.size, dtype=np.float32),
            np.zeros((layers + 1, cells), dtype=np.float32),
            np.zeros((layers, cells), dtype=np.float32),
            np.zeros((layers, cells), dtype=np.float32),
        )
