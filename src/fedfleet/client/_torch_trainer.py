"""Local training for any PyTorch ``nn.Module``.

The lean sequential path: one model object whose federated tensors are views into a single flat
buffer (see :meth:`Layout.bind`), so loading the global model is one copy and reading the result is
one clone; data stay as tensors, batches are gathered by index, and the loss is summed on-device so
the loop never waits on a host sync. A fresh optimizer is built for every fit, so client-side
optimizer state (momentum, Adam moments) never leaks from one round or client to the next.

Strategies that change the local objective do it through two instructions (see
:func:`fedfleet.client.gradient_terms`): FedProx's ``config["prox_mu"]`` adds
``mu * (w - w0)`` to every gradient and SCAFFOLD's ``payload["grad_correction"]`` adds a fixed
vector. Both are applied to the parameters' gradients with ``torch._foreach`` ops over views of
flat buffers, between ``backward`` and the optimizer step; plain FedAvg skips them entirely.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fedfleet.client._flat_buffer import FlatBuffer, conv2d_weights
from fedfleet.client._protocol import EvalResult, FitInstructions, FitResult, gradient_terms
from fedfleet.data import ArrayDataset
from fedfleet.errors import ConfigError
from fedfleet.params import Layout

__all__ = ["OptimizerFactory", "TorchTrainer", "optimizer_names", "resolve_optimizer"]

OptimizerFactory = Callable[..., torch.optim.Optimizer]
"""Called as ``factory(params, lr=lr, **optimizer_args)``; a ``torch.optim`` class fits."""

MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
"""How :class:`TorchTrainer` may store Conv2d weights in its working copy."""

PRECISIONS = ("fp32", "bf16")
"""What :class:`TorchTrainer`'s local steps compute in (weights and updates stay float32)."""


def optimizer_names() -> list[str]:
    """Every optimizer class in ``torch.optim``, lower-cased (``sgd``, ``adam``, ``adamw``, ...)."""
    return sorted(
        name.lower()
        for name, obj in vars(torch.optim).items()
        if isinstance(obj, type)
        and issubclass(obj, torch.optim.Optimizer)
        and obj is not torch.optim.Optimizer
    )


def resolve_optimizer(spec: str | OptimizerFactory) -> OptimizerFactory:
    """A ``torch.optim`` class from its case-insensitive name, or ``spec`` itself if callable."""
    if callable(spec):
        return spec
    for name, obj in vars(torch.optim).items():
        if name.lower() == spec.lower() and isinstance(obj, type):
            return obj
    raise ConfigError(f"unknown optimizer {spec!r}; valid: {', '.join(optimizer_names())}")


class TorchTrainer:
    """Trains and evaluates an ``nn.Module`` from flat vectors.

    Args:
        model: a module, or a zero-argument factory building one. With a factory,
            :meth:`init_vector` draws the initial weights from its seed; with a module, its
            current weights are the initial model.
        loss_fn: ``loss_fn(outputs, targets)`` returning the mean loss of a batch.
        optimizer: a ``torch.optim`` name (``"sgd"``, ``"adam"``...) or a factory called as
            ``factory(params, lr=..., **optimizer_args)``.
        optimizer_args: extra keyword arguments for the optimizer (momentum, weight_decay, ...).
        device: where training runs (``"cpu"`` or ``"cuda"``).
        eval_batch_size: batch size for :meth:`evaluate`.
        memory_format: how the working copy stores ``nn.Conv2d`` weights: ``"channels_last"``
            (oneDNN's faster convolutions on CPU), ``"contiguous"`` (NCHW), or ``"auto"``:
            channels-last on CPU when the model has a Conv2d, contiguous otherwise. Vectors in
            and out are in the layout's order either way; results agree to float32 rounding.
        precision: ``"fp32"`` (the default: exact, bit-identical for a seed on any machine) or
            ``"bf16"``: the forward and backward passes of :meth:`fit` run under
            ``torch.autocast(dtype=torch.bfloat16)`` (matrix products in bfloat16, weights,
            gradients and optimizer in float32: mixed precision). Deterministic for a seed on
            one machine; faster where the CPU has bfloat16 units (AMX, AVX-512 BF16) and
            measured in ``bench/lm_cpu_speed.py``. Evaluation stays float32.

    Examples:
        >>> trainer = TorchTrainer(lambda: torch.nn.Linear(4, 3), optimizer="sgd")
        >>> w0 = trainer.init_vector(seed=0)
    """

    def __init__(
        self,
        model: nn.Module | Callable[[], nn.Module],
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
        optimizer: str | OptimizerFactory = "sgd",
        optimizer_args: Mapping[str, Any] | None = None,
        device: str | torch.device = "cpu",
        eval_batch_size: int = 1024,
        memory_format: str = "auto",
        precision: str = "fp32",
    ) -> None:
        if precision not in PRECISIONS:
            raise ConfigError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        self.precision = precision
        if memory_format not in MEMORY_FORMATS:
            raise ConfigError(
                f"memory_format {memory_format!r} is not one of {', '.join(MEMORY_FORMATS)}"
            )
        self._factory = model if not isinstance(model, nn.Module) else None
        module = model if isinstance(model, nn.Module) else model()
        self.device = torch.device(device)
        # forking the CUDA RNG too keeps training from reseeding the caller's CUDA generator
        self._rng_devices = [self.device] if self.device.type == "cuda" else []
        self.model = module.to(self.device)
        self._layout = Layout.from_module(self.model)
        self._initial = self._layout.flatten(self.model.state_dict())
        convs = conv2d_weights(self.model, self._layout)
        if memory_format == "auto":
            memory_format = "channels_last" if convs and self.device.type == "cpu" else "contiguous"
        self.memory_format = memory_format
        self._buffer = FlatBuffer(
            self._layout,
            self.model,
            self.device,
            convs if memory_format == "channels_last" else frozenset(),
        )
        self._flat = self._buffer.flat
        # client-local state outside the vector (BatchNorm's num_batches_tracked): reset at
        # every load, so no client's fit depends on which clients this object trained before
        federated = set(self._layout.names)
        state = self.model.state_dict(keep_vars=True)
        self._local_state = [
            (t, t.detach().clone()) for name, t in state.items() if name not in federated
        ]
        # (parameter, its spec) for every trainable federated parameter: where the extra
        # gradient terms of FedProx and SCAFFOLD apply
        params = {id(p): p for p in self.model.parameters() if p.requires_grad}
        self._trainable = [
            (params[id(state[s.name])], s)
            for s in self._layout.specs
            if id(state[s.name]) in params
        ]
        self.loss_fn = loss_fn
        self.optimizer = resolve_optimizer(optimizer)
        self.optimizer_args = dict(optimizer_args or {})
        self.eval_batch_size = eval_batch_size

    @property
    def model_factory(self) -> Callable[[], nn.Module] | None:
        """The factory this trainer was built from (None when it was given a module): cohort
        trainers on the same model are built from it (:mod:`fedfleet.sim._executor_choice`)."""
        return self._factory

    @property
    def layout(self) -> Layout:
        return self._layout

    def init_vector(self, seed: int) -> np.ndarray:
        if self._factory is None:
            return self._initial.copy()
        with torch.random.fork_rng(devices=self._rng_devices):
            torch.manual_seed(seed)
            fresh = self._factory()
        return self._layout.flatten(fresh.state_dict())

    def export(self, vector: np.ndarray) -> nn.Module:
        """A standalone copy of the model holding ``vector``'s weights."""
        module = self._factory() if self._factory is not None else copy.deepcopy(self.model)
        module.load_state_dict(self._layout.to_state_dict(vector), strict=False)
        return module.to(self.device)

    def _load(self, vector: np.ndarray) -> None:
        self._buffer.load(vector)
        with torch.no_grad():
            for tensor, initial in self._local_state:
                tensor.copy_(initial)

    def _tensors(self, data: ArrayDataset) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.as_tensor(data.x, device=self.device)
        y = torch.as_tensor(data.y, device=self.device)
        return x, y

    def fit(
        self, vector: np.ndarray, data: ArrayDataset, instructions: FitInstructions, seed: int
    ) -> FitResult:
        """Run ``instructions.epochs`` epochs of mini-batch training (reshuffled each epoch from
        ``seed``), stopping early after ``instructions.max_steps`` steps if set. With
        ``config["prox_mu"]`` or ``payload["grad_correction"]`` every gradient gets
        ``mu * (w - vector) + correction`` added before the optimizer step."""
        mu, correction = gradient_terms(instructions, self._layout)
        self._load(vector)
        add_terms = None
        if mu != 0.0 or correction is not None:  # FedAvg's path stays exactly as it was
            add_terms = self._terms(vector, mu, correction)
        x, y = self._tensors(data)
        n = len(y)
        rng = np.random.default_rng(seed)
        opt = self.optimizer(self.model.parameters(), lr=instructions.lr, **self.optimizer_args)
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        steps, seen = 0, 0
        cap = instructions.max_steps
        with torch.random.fork_rng(devices=self._rng_devices):
            torch.manual_seed(seed)
            for _ in range(instructions.epochs):
                order = torch.from_numpy(rng.permutation(n)).to(self.device)
                for start in range(0, n, instructions.batch_size):
                    if cap is not None and steps >= cap:
                        break
                    idx = order[start : start + instructions.batch_size]
                    xb, yb = x[idx], y[idx]
                    opt.zero_grad(set_to_none=True)
                    with self._autocast():
                        loss = self._loss(xb, yb)
                    loss.backward()
                    if add_terms is not None:
                        add_terms()
                    opt.step()
                    loss_sum += loss.detach() * len(idx)
                    seen += len(idx)
                    steps += 1
        return FitResult(
            vector=self._buffer.vector(),
            num_samples=n,
            num_steps=steps,
            metrics={"train_loss": float(loss_sum) / seen} if seen else {},
        )

    def _loss(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        if self.precision == "fp32":
            return self.loss_fn(self.model(xb), yb)
        try:
            return self.loss_fn(self.model(xb), yb)
        except RuntimeError as e:  # e.g. oneDNN's LSTM without bfloat16 units on this CPU
            raise ConfigError(
                f"precision = {self.precision!r}: this machine has no {self.precision} kernel "
                f"for a layer of {type(self.model).__name__} ({str(e).splitlines()[0]}); "
                "use precision = 'fp32'"
            ) from e

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _terms(
        self, vector: np.ndarray, mu: float, correction: np.ndarray | None
    ) -> Callable[[], None]:
        """A function adding ``mu * (w - vector) + correction`` to the parameters' gradients.

        The difference ``w - vector`` is one subtraction over the flat buffer into a scratch
        buffer; the per-parameter additions are ``torch._foreach_add_`` over views of it, so a
        step costs two passes over the parameters and no host sync. Anchor, scratch and
        correction are kept in the buffer's order, so each view has its parameter's strides.
        """
        params = [p for p, _ in self._trainable]

        def views(flat: torch.Tensor) -> list[torch.Tensor]:
            return [self._buffer.view(flat, s) for _, s in self._trainable]

        anchor = self._buffer.working(vector)
        diff = torch.empty_like(self._flat)
        diff_views = views(diff)
        corr_views = None
        if correction is not None:
            corr_views = views(self._buffer.working(correction))

        def add_terms() -> None:
            grads = []
            for p in params:
                if p.grad is None:  # unused by this batch's forward pass: the terms still apply
                    p.grad = torch.zeros_like(p)
                grads.append(p.grad)
            if mu != 0.0:
                torch.sub(self._flat, anchor, out=diff)
                torch._foreach_add_(grads, diff_views, alpha=mu)
            if corr_views is not None:
                torch._foreach_add_(grads, corr_views)

        return add_terms

    @torch.no_grad()
    def evaluate(self, vector: np.ndarray, data: ArrayDataset) -> EvalResult:
        """Mean loss and top-1 accuracy of ``vector`` on ``data``."""
        self._load(vector)
        self.model.eval()
        x, y = self._tensors(data)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        for start in range(0, len(y), self.eval_batch_size):
            xb, yb = (
                x[start : start + self.eval_batch_size],
                y[start : start + self.eval_batch_size],
            )
            out = self.model(xb)
            loss_sum += self.loss_fn(out, yb).double() * len(yb)
            correct += (out.argmax(dim=1) == yb).sum()
        n = len(y)
        if n == 0:
            return EvalResult(float("nan"), float("nan"), 0)
        return EvalResult(float(loss_sum) / n, int(correct) / n, n)
