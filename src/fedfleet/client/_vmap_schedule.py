"""How :class:`~fedfleet.client.VmapTrainer` lays out a cohort.

Each client's batch table (the sample indices of every step, drawn as :class:`TorchTrainer`
draws them), the cohort's batch width per step, a chunk's per-client hyper-parameters, the
activation estimate that sizes chunks, the buffers a worker keeps from call to call, and the
torch thread setting while a cohort trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fedfleet._threads import torch_threads  # re-exported: the cohort trainers import it here
from fedfleet.client._protocol import FitInstructions
from fedfleet.data import ArrayDataset

__all__ = [
    "STAGE_STEPS",
    "Client",
    "Hyper",
    "Staged",
    "Workspace",
    "activation_floats",
    "batch_table",
    "step_widths",
    "torch_threads",
]

Tensors = dict[str, torch.Tensor]

STAGE_STEPS = 128
"""Steps of batches staged at a time: one client with 47,000 steps (a Synthetic(1,1) device with
23,000 samples at E=20, B=10) would otherwise stage all of them, padding every other client of its
chunk to as many, or force chunks of one client."""


@dataclass(frozen=True)
class Client:
    """One client's share of a cohort: its data, its batch table and its hyper-parameters."""

    data: ArrayDataset
    batches: np.ndarray  # [steps, batch_size] sample indices, -1 past the end of a last batch
    lr: float
    mu: float
    correction: np.ndarray | None

    @property
    def steps(self) -> int:
        return len(self.batches)


def batch_table(n: int, instructions: FitInstructions, seed: int) -> np.ndarray:
    """The sample indices of every step, exactly as :meth:`TorchTrainer.fit` draws them."""
    size = instructions.batch_size
    per_epoch = -(-n // size)
    steps = instructions.epochs * per_epoch
    if instructions.max_steps is not None:
        steps = min(steps, instructions.max_steps)
    if steps <= 0:
        return np.empty((0, size), dtype=np.int64)
    rng = np.random.default_rng(seed)
    pad = np.full(per_epoch * size - n, -1, dtype=np.int64)
    epochs = [np.concatenate([rng.permutation(n), pad]) for _ in range(-(-steps // per_epoch))]
    return np.concatenate(epochs).reshape(-1, size)[:steps]


def step_widths(clients: list[Client]) -> tuple[np.ndarray, np.ndarray]:
    """Per step of the cohort: the widest batch, and whether any batch is narrower."""
    longest = max((c.steps for c in clients), default=0)
    widest = np.zeros(longest, dtype=np.int64)
    narrowest = np.full(longest, np.iinfo(np.int64).max)
    for c in clients:
        sizes = (c.batches >= 0).sum(axis=1)
        np.maximum(widest[: c.steps], sizes, out=widest[: c.steps])
        np.minimum(narrowest[: c.steps], sizes, out=narrowest[: c.steps])
    return widest, narrowest < widest


@dataclass(frozen=True)
class Hyper:
    """A chunk's per-client learning rates, proximal mu and gradient corrections."""

    lrs: torch.Tensor
    lr0: float
    uniform_lr: bool
    mus: torch.Tensor
    mu0: float
    uniform_mu: bool
    any_mu: bool
    correction: Tensors | None  # per trainable tensor, [chunk, *shape] views

    @classmethod
    def of(
        cls, clients: list[Client], specs: list[Any], stack: np.ndarray, device: torch.device
    ) -> Hyper:
        """``stack``: a ``[chunk, params]`` buffer for the corrections (used if any)."""
        lrs = [c.lr for c in clients]
        mus = [c.mu for c in clients]
        correction = None
        if any(c.correction is not None for c in clients):
            for row, c in enumerate(clients):
                stack[row] = 0 if c.correction is None else c.correction
            flat = torch.from_numpy(stack).to(device)
            correction = {
                s.name: flat[:, s.offset : s.offset + s.numel].view(len(clients), *s.shape)
                for s in specs
            }
        return cls(
            lrs=torch.tensor(lrs, dtype=torch.float32, device=device),
            lr0=lrs[0],
            uniform_lr=len(set(lrs)) == 1,
            mus=torch.tensor(mus, dtype=torch.float32, device=device),
            mu0=mus[0],
            uniform_mu=len(set(mus)) == 1,
            any_mu=any(mus),
            correction=correction,
        )

    def neg_lr(self, a: int, dim: int) -> torch.Tensor:
        return (-self.lrs[:a]).view(a, *([1] * (dim - 1)))

    def mu(self, a: int, dim: int) -> torch.Tensor:
        return self.mus[:a].view(a, *([1] * (dim - 1)))


def activation_floats(module: nn.Module, sample: np.ndarray, device: torch.device) -> int:
    """Floats of every leaf module's output for one sample (the activations autograd keeps)."""
    total = 0

    def count(_m: nn.Module, _i: Any, out: Any) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel()

    hooks = [m.register_forward_hook(count) for m in module.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            module(torch.from_numpy(sample).to(device))
    finally:
        for h in hooks:
            h.remove()
    return max(total, 1)


class Workspace:
    """One worker's buffers, kept for the next call: fresh ones cost page faults on every touch."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._arrays: dict[str, np.ndarray] = {}
        self._tensors: Tensors = {}

    def array(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A reusable NumPy buffer of ``shape`` (contents undefined)."""
        spaces = self._arrays
        need = int(np.prod(shape)) * np.dtype(dtype).itemsize
        buf = spaces.get(name)
        if buf is None or buf.nbytes < need:
            buf = spaces[name] = np.empty(need, dtype=np.uint8)
        return buf[:need].view(dtype).reshape(shape)

    def tensor(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """The first ``shape[0]`` rows of a buffer kept for the next call."""
        spaces = self._tensors
        buf = spaces.get(name)
        if buf is None or buf.shape[0] < shape[0]:
            buf = spaces[name] = torch.empty(shape, device=self.device)
        return buf[: shape[0]]


class Staged:
    """A chunk's batches, ``STAGE_STEPS`` steps at a time, as ``[steps, clients, width, ...]``
    blocks: step ``t`` of the window is one contiguous block, the clients sorted by step count
    (descending) so the ones still training are a prefix. Padding samples read a real sample
    and get weight 0 (``real`` False)."""

    def __init__(
        self, workspace: Workspace, clients: list[Client], width: int, window: int
    ) -> None:
        first = clients[0].data
        k = len(clients)
        self.clients = clients
        self.span = window
        x0, y0 = first.rows(np.zeros(1, dtype=np.int64))
        self.xs = workspace.array("x", (window, k, width, *first.sample_shape), x0.dtype)
        self.ys = workspace.array("y", (window, k, width), y0.dtype)
        self.real = workspace.array("r", (window, k, width), np.bool_)
        self.sizes = np.zeros((window, k), dtype=np.int64)

    def load(
        self, t0: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
        """Stage steps ``t0 .. t0 + span - 1``: ``(x, y, sizes, real)``, indexed by ``t - t0``;
        ``sizes[i, row]`` is the true batch size, ``real`` marks the samples that are not
        padding. Rows of clients that finished before a step hold stale values there."""
        for row, c in enumerate(self.clients):
            n = min(c.steps - t0, self.span)
            if n <= 0:
                break  # sorted by steps: the rest are done too
            batches = c.batches[t0 : t0 + n]
            size = batches.shape[1]
            # one gather per client (from the federation's pool for a Subset); -1 (padding)
            # reads a real sample
            xb, yb = c.data.rows(batches)
            self.xs[:n, row, :size] = xb
            self.xs[:n, row, size:] = 0
            self.ys[:n, row, :size] = yb
            self.ys[:n, row, size:] = 0
            self.real[:n, row, :size] = batches >= 0
            self.real[:n, row, size:] = False
            self.sizes[:n, row] = self.real[:n, row].sum(axis=1)
        xs = torch.from_numpy(self.xs).to(device)
        return xs, torch.from_numpy(self.ys).to(device), self.sizes, self.real
