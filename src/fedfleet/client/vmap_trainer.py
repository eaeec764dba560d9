"""Vectorised cohort training: K clients trained at once as a ``[K, params]`` stack.

:class:`VmapTrainer` is a :class:`~fedfleet.client.Trainer` whose extra method
:meth:`VmapTrainer.fit_cohort` runs local SGD for a whole cohort in one loop over steps. At step
``t`` every client still training takes one step on its own mini-batch: the clients' batches
are staged once per cohort as ``[steps, K, B, ...]`` (step ``t`` is one block), and the
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
from torch.func import functional_call, grad_and_value, vmap
from torch.nn import functional as F

from fedfleet.client._vmap_checks import check_static_buffers, refuse_unsupported
from fedfleet.client._vmap_mlp import mlp_layers
from fedfleet.client._vmap_schedule import (
    Client,
    Hyper,
    Workspace,
    activation_floats,
    batch_table,
    step_widths,
    torch_threads,
)
from fedfleet.client.protocol import EvalResult, FitInstructions, FitResult, gradient_terms
from fedfleet.client.torch_trainer import TorchTrainer
from fedfleet.data.base import ArrayDataset
from fedfleet.errors import ConfigError, DatasetError
from fedfleet.params import Layout

__all__ = ["VmapTrainer"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Tensors = dict[str, torch.Tensor]

_SGD_ARGS = ("dampening", "momentum", "nesterov", "weight_decay")


class VmapTrainer:
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

    Example:
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
        unknown = sorted(set(args) - set(_SGD_ARGS))
        if unknown:
            raise ConfigError(
                f"VmapTrainer's SGD does not take {', '.join(unknown)}; valid optimizer_args: "
                f"{', '.join(_SGD_ARGS)}; use TorchTrainer for other SGD options"
            )
        if max_cohort_chunk is not None and max_cohort_chunk < 1:
            raise ConfigError(f"max_cohort_chunk must be >= 1 or None, got {max_cohort_chunk}")
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        self.momentum = float(args.get("momentum", 0.0))
        self.dampening = float(args.get("dampening", 0.0))
        self.nesterov = bool(args.get("nesterov", False))
        self.weight_decay = float(args.get("weight_decay", 0.0))
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ConfigError(
                f"nesterov momentum requires momentum > 0 and dampening = 0 (as in "
                f"torch.optim.SGD); got momentum={self.momentum}, dampening={self.dampening}"
            )
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
    def layout(self) -> Layout:
        return self.sequential.layout

    @property
    def uses_fast_path(self) -> bool:
        """Whether fits take the hand-written MLP path (else ``vmap(grad(functional_call))``)."""
        return self._mlp is not None

    def init_vector(self, seed: int) -> np.ndarray:
        return self.sequential.init_vector(seed)

    def export(self, vector: np.ndarray) -> nn.Module:
        """A standalone copy of the model holding ``vector``'s weights."""
        return self.sequential.export(vector)

    def evaluate(self, vector: np.ndarray, data: ArrayDataset) -> EvalResult:
        """Mean loss and top-1 accuracy of ``vector`` on ``data`` (the sequential trainer's)."""
        return self.sequential.evaluate(vector, data)

    def fit(
        self, vector: np.ndarray, data: ArrayDataset, instructions: FitInstructions, seed: int
    ) -> FitResult:
        """One client: :meth:`fit_cohort` of a cohort of one."""
        return self.fit_cohort(vector, [data], [instructions], [seed])[0]

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
        layout = self.layout
        layout.check(vector, who="the global vector")
        if not len(datasets) == len(instructions) == len(seeds):
            raise ConfigError(
                f"fit_cohort got {len(datasets)} datasets, {len(instructions)} instructions and "
                f"{len(seeds)} seeds; pass one of each per client"
            )
        shapes = {d.x.shape[1:] for d in datasets}
        if len(shapes) > 1:
            first = datasets[0].x.shape[1:]
            i = next(i for i, d in enumerate(datasets) if d.x.shape[1:] != first)
            raise DatasetError(
                f"client {i}'s samples have shape {datasets[i].x.shape[1:]}, client 0's "
                f"{first}; a cohort trains one model on samples of one shape"
            )
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
        sample = clients[0].data.x[:1]
        if self._activation_floats is None:
            self._activation_floats = activation_floats(self._modules[0], sample, self.device)
        staged = max(c.steps for c in clients) * width * (sample.nbytes + 8)
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
        # every client's batches in step order, [steps, clients, width, ...]: one copy of the
        # data, and each step's batches are one block; padding is zeros weighted 0
        first = clients[0].data
        xs = self._workspaces[worker].array(
            "x", (steps[0], k, width, *first.x.shape[1:]), first.x.dtype
        )
        ys = np.zeros((steps[0], k, width), dtype=first.y.dtype)
        real = np.zeros((steps[0], k, width), dtype=bool)
        for row, c in enumerate(clients):
            size = c.batches.shape[1]
            xs[: c.steps, row, :size] = c.data.x[c.batches]  # -1 (padding) reads a real sample
            xs[: c.steps, row, size:] = 0
            ys[: c.steps, row, :size] = c.data.y[c.batches]
            real[: c.steps, row, :size] = c.batches >= 0
        sizes = real.sum(axis=2)  # [T, k] true batch sizes
        x_all, y_all = torch.from_numpy(xs).to(dev), torch.from_numpy(ys).to(dev)
        if not self._checked_buffers:
            check_static_buffers(self._modules[worker], self._globals(w), x_all[0, 0, :2])
            self._checked_buffers = True
        stack = self._workspaces[worker].array("c", (k, self.layout.size), np.float32)
        hyper = Hyper.of(clients, self._trainable, stack, dev)
        glob = self._globals(w)
        # one thread: the stacks are the result rows, no copy at the end (torch multiplies
        # strided stacks one matrix at a time, which costs nothing on one thread but one
        # OpenMP barrier per matrix on more); else contiguous stacks and MKL's batched products
        direct = torch.get_num_threads() == 1
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
        loss_sum = torch.zeros(k, dtype=torch.float32, device=dev)
        bufs: Tensors = {}
        for t in range(steps[0]):
            a = sum(1 for s in steps if s > t)
            size_t = sizes[t, :a]
            b = int(widths[t])
            x, y = x_all[t, :a, :b], y_all[t, :a, :b]
            weight = None
            if weighted[t]:
                weight = torch.from_numpy((real[t, :a, :b] / size_t[:, None]).astype(np.float32))
                weight = weight.to(dev)
            loss = self._step(worker, t, a, glob, params, bufs, hyper, x, y, weight)
            loss_sum[:a] += loss.detach() * torch.from_numpy(size_t.astype(np.float32)).to(dev)
        for s in [] if direct else self._trainable:
            out[:, s.offset : s.offset + s.numel].copy_(params[s.name].view(k, -1))
        for s in self._constant:
            out[:, s.offset : s.offset + s.numel].copy_(w[s.offset : s.offset + s.numel])
        return loss_sum.cpu().numpy().astype(np.float64)

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
            grads, loss = self._autograd(worker, first, src, glob, x, y, weight)
        for s in self._trainable:
            self._update(worker, s.name, t, a, glob[s.name], params[s.name], bufs, hyper, grads)
        return loss

    def _autograd(
        self,
        worker: int,
        first: bool,
        src: Tensors,
        glob: Tensors,
        x: torch.Tensor,
        y: torch.Tensor,
        weight: torch.Tensor | None,
    ) -> tuple[Tensors, torch.Tensor]:
        """Per-client gradients from ``vmap(grad(functional_call(model, ...)))``."""
        module = self._modules[worker]
        module.train()
        constants = {s.name: glob[s.name] for s in self._constant}
        loss_fn = self.loss_fn

        def loss(train: Tensors, xb: torch.Tensor, yb: torch.Tensor, wb: Any) -> torch.Tensor:
            out = functional_call(module, {**train, **constants}, (xb,))
            if wb is None:
                return loss_fn(out, yb)
            return (_per_sample_loss(loss_fn, out, yb) * wb).sum()

        train = {s.name: src[s.name] for s in self._trainable}
        dims = (None if first else 0, 0, 0, None if weight is None else 0)
        grads, value = vmap(grad_and_value(loss), in_dims=dims)(train, x, y, weight)
        return grads, value

    def _update(
        self,
        worker: int,
        name: str,
        t: int,
        a: int,
        w0: torch.Tensor,
        param: torch.Tensor,
        bufs: Tensors,
        hyper: Hyper,
        grads: Tensors,
    ) -> None:
        """``torch.optim.SGD``'s step for the first ``a`` rows of ``param``, in place (at
        ``t == 0`` the rows start from the global tensor ``w0``); ``grads[name]`` is
        overwritten, and kept as the momentum buffer after the first step."""
        g = grads[name]
        p = w0 if t == 0 else param[:a]
        if hyper.any_mu and t > 0:  # at t == 0, w - w0 is zero
            diff = torch.sub(
                p, w0, out=self._workspaces[worker].tensor(f"d:{name}", tuple(p.shape))
            )
            if hyper.uniform_mu:
                g.add_(diff, alpha=hyper.mu0)
            else:
                g.addcmul_(diff, hyper.mu(a, g.dim()))
        if hyper.correction is not None:
            g.add_(hyper.correction[name][:a])
        if self.weight_decay:
            g.add_(p, alpha=self.weight_decay)
        d = g
        if self.momentum:
            if t == 0:
                buf = bufs[name] = g
                d = g.add(buf, alpha=self.momentum) if self.nesterov else buf
            else:
                buf = bufs[name][:a]
                buf.mul_(self.momentum).add_(g, alpha=1 - self.dampening)
                d = g.add_(buf, alpha=self.momentum) if self.nesterov else buf
        if hyper.uniform_lr:
            torch.add(p, d, alpha=-hyper.lr0, out=param[:a])
        else:
            torch.addcmul(p, d, hyper.neg_lr(a, d.dim()), out=param[:a])


def _per_sample_loss(loss_fn: LossFn, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if loss_fn is F.cross_entropy:
        return F.cross_entropy(out, y, reduction="none")
    return vmap(lambda o, t: loss_fn(o.unsqueeze(0), t.unsqueeze(0)))(out, y)
