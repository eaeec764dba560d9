"""Vectorised cohort training: K clients trained at once as a ``[K, params]`` stack.

:class:`VmapTrainer` is a :class:`~fedfleet.client.Trainer` whose extra method
:meth:`VmapTrainer.fit_cohort` runs local SGD for a whole cohort in one loop over steps. At step
``t`` every client still training takes one step on its own mini-batch: the clients' batches
are staged 128 steps at a time as ``[steps, K, B, ...]`` (step ``t`` is one block), and the
gradients of all clients come from one call of ``vmap(grad(functional_call(model, ...)))``
(torch.func), so a linear layer becomes one batched matrix product instead of K small ones.

What makes it equal to K calls of :meth:`TorchTrainer.fit` (up to float rounding, ~1e-8):

* the same batches: per client one ``np.random.default_rng(seed)``, one ``permutation(n)`` per
  epoch, batches of ``batch_size`` with a smaller last one, stopping after ``max_steps``;
* ragged cohorts: clients are sorted by step count, so the clients still training at step ``t``
  are a prefix of the stack and finished ones cost nothing (measured 3.5x faster than padding
  every client to the longest and masking, 6% faster than one vmap per step-count group); a step
  where batches differ in size pads them with zero-weight samples and weights each real sample
  by ``1 / its batch size``, so the gradient equals the unpadded batch mean;
* the update is ``torch.optim.SGD``'s: ``d = g + mu (w - w0) + c + wd w`` (FedProx's
  ``config["prox_mu"]``, SCAFFOLD's ``payload["grad_correction"]``, weight decay), then with
  momentum ``buf = m buf + (1 - dampening) d`` (``buf = d`` at the first step; Nesterov uses
  ``d + m buf``), and ``w -= lr buf``; each client has its own lr, mu, correction and a momentum
  buffer that starts empty every fit.

Results are bit-identical however the cohort is cut into chunks or spread over worker threads
(batch widths and weighting are fixed per step for the whole cohort); like any torch code they
can differ in the last bits with the number of torch threads.

Other optimizers (Adam, ...), models with state that changes in training (BatchNorm running
statistics) and random layers (dropout) need the sequential :class:`TorchTrainer`.

Speed: every client's first step starts from the global vector, so it runs with unbatched
parameters (one large matrix product for the forward pass). An ``nn.Sequential`` of
``Flatten``/``Linear``/``ReLU`` trained with cross-entropy takes a hand-written path: the same
numbers without autograd and, for plain SGD, each weight update fused into the gradient's
batched product (``baddbmm``) instead of writing the gradient out. Cohorts are trained in
chunks that fit ``max_chunk_bytes``; large buffers are reused across calls, since fresh ones
cost page faults on every touch.
"""

from __future__ import annotations

import copy
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fedfleet.client._cohort_base import CohortTrainer
from fedfleet.client._protocol import FitInstructions, FitResult, gradient_terms
from fedfleet.client._torch_trainer import TorchTrainer
from fedfleet.client._vmap_checks import check_static_buffers, refuse_unsupported
from fedfleet.client._vmap_mlp import mlp_layers
from fedfleet.client._vmap_schedule import (
    STAGE_STEPS,
    Client,
    Hyper,
    Staged,
    Workspace,
    activation_floats,
    batch_table,
    step_widths,
    torch_threads,
)
from fedfleet.client._vmap_sgd import StackedSGD, per_client_grads
from fedfleet.data import ArrayDataset
from fedfleet.errors import ConfigError

__all__ = ["VmapTrainer"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Tensors = dict[str, torch.Tensor]


class VmapTrainer(CohortTrainer):
    """Trains many clients at once with torch.func; a drop-in :class:`Trainer`.

    Args:
        model: a module, or a zero-argument factory building one (as for :class:`TorchTrainer`).
            Its float parameters and buffers are the layout; buffers must not change in
            training and the model must not draw random numbers.
        loss_fn: ``loss_fn(outputs, targets)``, the *mean* loss of a batch (a mean of per-sample
            losses: ragged batches are weighted per sample). Default cross-entropy.
        optimizer: only ``"sgd"`` (``torch.optim.SGD``); use :class:`TorchTrainer` for others.
        optimizer_args: ``momentum``, ``dampening``, ``nesterov``, ``weight_decay``, with
            ``torch.optim.SGD``'s meaning.
        device: where training runs.
        eval_batch_size: batch size for :meth:`evaluate`.
        max_cohort_chunk: train at most this many clients at once (None: as many as fit
            ``max_chunk_bytes``).
        max_chunk_bytes: memory budget of one chunk: parameter stacks, gradients, momentum
            buffers, corrections, activations and staged batches of its clients. The default
            (32 MiB) is also the fastest measured for the MLP on 2 cores: chunks of ~25 small
            clients stay in cache; one huge chunk is ~10-20% slower.
        num_threads: torch intra-op threads while :meth:`fit_cohort` runs (restored after);
            None leaves torch's setting alone, or sets 1 when ``workers > 1``.
        workers: Python threads training separate chunks side by side, each with its own copy
            of the model and one torch thread. ``workers=2`` is as fast as 2 torch threads on
            an idle machine and degrades gracefully on a busy one, where OpenMP's barriers
            stall on the core another process holds (measured: up to 10-100x slower).
        fast_path: allow the hand-written path for ``Sequential`` MLPs with cross-entropy.

    Examples:
        >>> trainer = VmapTrainer(lambda: torch.nn.Linear(4, 3))
        >>> w0 = trainer.init_vector(seed=0)
        >>> rng = np.random.default_rng(0)
        >>> data = [ArrayDataset(rng.normal(size=(10, 4)).astype(np.float32),
        ...                      rng.integers(0, 3, 10)) for _ in range(3)]
        >>> results = trainer.fit_cohort(w0, data, [FitInstructions(lr=0.1)] * 3, [1, 2, 3])
        >>> [r.num_steps for r in results]
        [1, 1, 1]
    """

    def __init__(
        self,
        model: nn.Module | Callable[[], nn.Module],
        loss_fn: LossFn = F.cross_entropy,
        optimizer: str | type[torch.optim.Optimizer] = "sgd",
        optimizer_args: Mapping[str, Any] | None = None,
        device: str | torch.device = "cpu",
        eval_batch_size: int = 1024,
        max_cohort_chunk: int | None = None,
        max_chunk_bytes: int = 32 << 20,
        num_threads: int | None = None,
        workers: int = 1,
        fast_path: bool = True,
    ) -> None:
        if optimizer is not torch.optim.SGD and str(optimizer).lower() != "sgd":
            raise ConfigError(
                f"VmapTrainer implements SGD only, got optimizer {optimizer!r}; use TorchTrainer "
                "for other optimizers"
            )
        args = dict(optimizer_args or {})
        self._sgd = StackedSGD.from_args(args, "VmapTrainer")
        if max_cohort_chunk is not None and max_cohort_chunk < 1:
            raise ConfigError(f"max_cohort_chunk must be >= 1 or None, got {max_cohort_chunk}")
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        self.momentum = self._sgd.momentum
        self.dampening = self._sgd.dampening
        self.nesterov = self._sgd.nesterov
        self.weight_decay = self._sgd.weight_decay
        self.sequential = TorchTrainer(model, loss_fn, "sgd", args, device, eval_batch_size)
        """The sequential trainer on the same model: evaluation, and any fit this one can't do."""
        module = self.sequential.model
        refuse_unsupported(module)
        self.device = self.sequential.device
        self.loss_fn = loss_fn
        self.max_cohort_chunk = max_cohort_chunk
        self.max_chunk_bytes = max_chunk_bytes
        self.num_threads = num_threads
        self.workers = workers
        layout = self.sequential.layout
        specs = {s.name: s for s in layout.specs}
        trainable = [name for name, p in module.named_parameters() if p.requires_grad]
        for name in trainable:
            if name not in specs or specs[name].dtype != "float32":
                raise ConfigError(
                    f"parameter {name!r} is not float32; VmapTrainer trains float32 models "
                    "(convert with model.float())"
                )
        # trainable tensors are stacked per client; the rest (frozen parameters, float
        # buffers) stay the global vector's values for every client
        self._trainable = [specs[n] for n in trainable]
        self._constant = [s for s in layout.specs if s.name not in set(trainable)]
        self._modules = [module]  # one per worker: functional_call swaps module attributes
        self._workspaces = [Workspace(self.device)]  # one per worker
        self._last_results: np.ndarray | None = None
        self._mlp = mlp_layers(module, trainable) if fast_path else None
        if loss_fn is not F.cross_entropy:
            self._mlp = None
        self._activation_floats: int | None = None
        self._checked_buffers = False

    @property
    def uses_fast_path(self) -> bool:
        """Whether fits take the hand-written MLP path (else ``vmap(grad(functional_call))``)."""
        return self._mlp is not None

    def fit_cohort(
        self,
        vector: np.ndarray,
        datasets: Sequence[ArrayDataset],
        instructions: Sequence[FitInstructions],
        seeds: Sequence[int],
    ) -> list[FitResult]:
        """Train every client of a cohort from ``vector``; result ``i`` is client ``i``'s.

        Equal (up to float rounding) to ``[fit(vector, d, i, s) for d, i, s in zip(...)]``,
        which is what :class:`TorchTrainer` would return. ``vector`` is not mutated. The result
        vectors are rows of one ``[K, params]`` array (in step-count order), which the next
        call reuses once no result refers to it any more.
        """
        self._check_cohort(vector, datasets, instructions, seeds)
        clients = [
            self._client(i, d, ins, s)
            for i, (d, ins, s) in enumerate(zip(datasets, instructions, seeds, strict=True))
        ]
        steps = np.array([c.steps for c in clients], dtype=np.int64)
        order = np.argsort(-steps, kind="stable")  # clients still training form a prefix
        out = self._results(len(clients))
        out[steps[order] == 0] = vector
        chunks = self._chunks([clients[i] for i in order if steps[i] > 0])
        widths, weighted = step_widths(clients)
        w = torch.from_numpy(vector).to(self.device)
        losses = np.zeros(len(clients))
        out_t = torch.from_numpy(out)
        threads = self.num_threads or (1 if self.workers > 1 else None)
        with torch_threads(threads):
            lanes = min(self.workers, len(chunks))
            queue, lock = iter(chunks), threading.Lock()  # lanes take the next chunk when free

            def run(lane: int) -> None:
                while True:
                    with lock:
                        chunk = next(queue, None)
                    if chunk is None:
                        return
                    start, stop = chunk
                    part = [clients[i] for i in order[start:stop]]
                    losses[start:stop] = self._train_chunk(
                        lane, w, part, widths, weighted, out_t[start:stop]
                    )

            if lanes > 1:
                self._ensure_workers(lanes)
                with ThreadPoolExecutor(lanes) as pool:
                    list(pool.map(run, range(lanes)))
            elif lanes:
                run(0)
        results: list[FitResult | None] = [None] * len(clients)
        for row, i in enumerate(order):
            c = clients[i]
            seen = int((c.batches >= 0).sum())
            metrics = {"train_loss": float(losses[row] / seen)} if seen else {}
            results[i] = FitResult(out[row], len(c.data), c.steps, metrics)
        return [r for r in results if r is not None]

    # ------------------------------------------------------------------ planning

    def _client(
        self, i: int, data: ArrayDataset, instructions: FitInstructions, seed: int
    ) -> Client:
        if instructions.batch_size < 1:
            raise ConfigError(f"client {i}: batch_size must be >= 1, got {instructions.batch_size}")
        mu, correction = gradient_terms(instructions, self.layout)
        batches = batch_table(len(data), instructions, seed)
        return Client(data, batches, float(instructions.lr), mu, correction)

    def _chunks(self, clients: list[Client]) -> list[tuple[int, int]]:
        """Row ranges of the sorted cohort, each small enough for the memory budget."""
        if not clients:
            return []
        size = len(clients)
        if self.max_cohort_chunk is not None:
            size = min(size, self.max_cohort_chunk)
        size = min(size, max(1, self.max_chunk_bytes // self._bytes_per_client(clients)))
        count = -(-len(clients) // size)
        count = min(len(clients), -(-count // self.workers) * self.workers)  # balanced lanes
        bounds = np.linspace(0, len(clients), count + 1).round().astype(int)
        return [(int(a), int(b)) for a, b in pairwise(bounds)]

    def _bytes_per_client(self, clients: list[Client]) -> int:
        """Rough peak memory of one client in a chunk: parameter stacks and gradients (and
        momentum buffers, corrections), activations, and its staged batches."""
        params = sum(s.numel for s in self._trainable)
        copies = 2 + (self.momentum != 0) + any(c.correction is not None for c in clients)
        width = max(c.batches.shape[1] for c in clients)
        sample, _ = clients[0].data.rows(np.zeros(1, dtype=np.int64))
        if self._activation_floats is None:
            self._activation_floats = activation_floats(self._modules[0], sample, self.device)
        staged = min(max(c.steps for c in clients), STAGE_STEPS) * width * (sample.nbytes + 9)
        return 4 * (params * copies + 3 * width * self._activation_floats) + staged

    def _ensure_workers(self, count: int) -> None:
        while len(self._modules) < count:
            self._modules.append(copy.deepcopy(self._modules[0]))
            self._workspaces.append(Workspace(self.device))

    # ------------------------------------------------------------------ training

    def _train_chunk(
        self,
        worker: int,
        w: torch.Tensor,
        clients: list[Client],
        widths: np.ndarray,
        weighted: np.ndarray,
        out: torch.Tensor,
    ) -> np.ndarray:
        """Train one chunk (clients sorted by steps, descending) in ``out`` (``[chunk,
        params]``, the result rows) and return each client's summed batch losses.

        ``widths[t]`` is step ``t``'s batch width over the whole cohort and ``weighted[t]``
        whether some batch of the cohort is shorter (then each sample is weighted by 1 / its
        batch's size): the same for every chunk, so chunking does not change the arithmetic.
        """
        dev = self.device
        k = len(clients)
        steps = [c.steps for c in clients]
        width = max(int(widths.max()), *(c.batches.shape[1] for c in clients))
        active = k - np.cumsum(np.bincount(steps, minlength=steps[0] + 1))  # [t]: steps > t
        staged = Staged(self._workspaces[worker], clients, width, min(steps[0], STAGE_STEPS))
        if not self._checked_buffers:
            x0 = torch.from_numpy(clients[0].data.x[:2]).to(dev)
            check_static_buffers(self._modules[worker], self._globals(w), x0)
            self._checked_buffers = True
        stack = self._workspaces[worker].array("c", (k, self.layout.size), np.float32)
        hyper = Hyper.of(clients, self._trainable, stack, dev)
        glob = self._globals(w)
        # one thread: the stacks are the result rows, no copy at the end (torch multiplies
        # strided stacks one matrix at a time, which costs nothing on one thread but one
        # OpenMP barrier per matrix on more); else contiguous stacks and MKL's batched products.
        # The result rows are host memory, so on a GPU the stacks are always device buffers.
        direct = torch.get_num_threads() == 1 and dev.type == "cpu"
        if direct:
            params = {
                s.name: out[:, s.offset : s.offset + s.numel].view(k, *s.shape)
                for s in self._trainable
            }
        else:
            params = {
                s.name: self._workspaces[worker].tensor(f"p:{s.name}", (k, *s.shape))
                for s in self._trainable
            }
        loss_sum = np.zeros(k)
        losses = torch.zeros((staged.span, k), dtype=torch.float32, device=dev)
        bufs: Tensors = {}
        for start in range(0, steps[0], staged.span):
            x_all, y_all, sizes, real = staged.load(start, dev)
            stop = min(start + staged.span, steps[0])
            losses.zero_()
            for t in range(start, stop):
                a, i, b = int(active[t]), t - start, int(widths[t])
                x, y = x_all[i, :a, :b], y_all[i, :a, :b]
                weight = None
                if weighted[t]:
                    share = real[i, :a, :b] / sizes[i, :a, None]
                    weight = torch.from_numpy(share.astype(np.float32)).to(dev)
                loss = self._step(worker, t, a, glob, params, bufs, hyper, x, y, weight)
                losses[i, :a] = loss.detach()
            # each batch's mean loss times its size, summed step after step per client (NumPy's
            # column sums: the same order whatever the chunk's width)
            window = losses[: stop - start].cpu().numpy().astype(np.float64)
            loss_sum += (window * sizes[: stop - start]).sum(axis=0)
        for s in [] if direct else self._trainable:
            out[:, s.offset : s.offset + s.numel].copy_(params[s.name].view(k, -1))
        for s in self._constant:
            out[:, s.offset : s.offset + s.numel].copy_(w[s.offset : s.offset + s.numel])
        return loss_sum

    def _results(self, k: int) -> np.ndarray:
        """The ``[k, params]`` array the result vectors are rows of.

        The last call's array is reused once nothing but this trainer refers to it (every
        result vector is a view holding a reference to it): a fresh 40 MB array costs as
        much in page faults as the copy that fills it.
        """
        last = self._last_results
        if last is not None and last.shape[0] >= k and sys.getrefcount(last) <= 3:
            return last[:k]
        self._last_results = np.empty((k, self.layout.size), dtype=np.float32)
        return self._last_results

    def _globals(self, w: torch.Tensor) -> Tensors:
        return {s.name: w[s.offset : s.offset + s.numel].view(s.shape) for s in self.layout.specs}

    def _step(
        self,
        worker: int,
        t: int,
        a: int,
        glob: Tensors,
        params: Tensors,
        bufs: Tensors,
        hyper: Hyper,
        x: torch.Tensor,
        y: torch.Tensor,
        weight: torch.Tensor | None,
    ) -> torch.Tensor:
        """One SGD step of the first ``a`` clients of the chunk; returns their batch losses.

        At ``t == 0`` every client holds the global model, so the parameters enter unbatched
        and the new stacks are written into ``params``; later steps update ``params[:a]``.
        """
        first = t == 0
        rows = {name: p[:a] for name, p in params.items()}
        src = glob if first else rows
        mlp = self._mlp
        if mlp is not None and (mlp.flatten or x.dim() == 3):
            plain = (
                self.momentum == 0
                and self.weight_decay == 0
                and not hyper.any_mu
                and hyper.correction is None
            )
            if plain:  # FedAvg's local SGD: the update fused into the gradient product
                scale = -hyper.lr0 if hyper.uniform_lr else hyper.neg_lr(a, 3)
                return mlp.step(src, x, y, weight, first, scale, rows)
            # the first step's gradients become the momentum buffers: a buffer of their own
            kind = "m" if first and self.momentum else "g"
            grads = {
                s.name: self._workspaces[worker].tensor(f"{kind}:{s.name}", (a, *s.shape))
                for s in self._trainable
            }
            loss = mlp.step(src, x, y, weight, first, None, grads)
        else:
            constants = {s.name: glob[s.name] for s in self._constant}
            train = {s.name: src[s.name] for s in self._trainable}
            module = self._modules[worker]
            grads, loss = per_client_grads(
                module, self.loss_fn, first, train, constants, x, y, weight
            )
        space = self._workspaces[worker]
        for s in self._trainable:
            self._sgd.update(space, s.name, t, a, glob[s.name], params[s.name], bufs, hyper, grads)
        return loss
