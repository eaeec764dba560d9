"""The per-step arithmetic of :class:`~fedfleet.client.VmapTrainer` outside its
hand-written MLP path: every client's gradients from one ``vmap(grad(functional_call(...)))``,
and ``torch.optim.SGD``'s update applied to ``[clients, ...]`` stacks of parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap
from torch.nn import functional as F

from fedfleet.client._vmap_schedule import Hyper, Workspace
from fedfleet.errors import ConfigError

__all__ = ["SGD_ARGS", "StackedSGD", "per_client_grads"]

SGD_ARGS = ("dampening", "momentum", "nesterov", "weight_decay")
"""The ``torch.optim.SGD`` options the stacked and compiled trainers implement."""

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Tensors = dict[str, torch.Tensor]


def per_client_grads(
    module: nn.Module,
    loss_fn: LossFn,
    first: bool,
    train: Tensors,
    constants: Tensors,
    x: torch.Tensor,
    y: torch.Tensor,
    weight: torch.Tensor | None,
) -> tuple[Tensors, torch.Tensor]:
    """Per-client gradients of ``train`` (unbatched when ``first``: every client starts from the
    global model) and the clients' batch losses; ``weight`` (``[clients, B]``) weights each
    sample of a ragged step (zero for padding)."""
    module.train()

    def loss(params: Tensors, xb: torch.Tensor, yb: torch.Tensor, wb: Any) -> torch.Tensor:
        out = functional_call(module, {**params, **constants}, (xb,))
        if wb is None:
            return loss_fn(out, yb)
        return (_per_sample_loss(loss_fn, out, yb) * wb).sum()

    dims = (None if first else 0, 0, 0, None if weight is None else 0)
    grads, value = vmap(grad_and_value(loss), in_dims=dims)(train, x, y, weight)
    return grads, value


@dataclass(frozen=True)
class StackedSGD:
    """``torch.optim.SGD``'s settings, and its step on stacks of clients' parameters."""

    momentum: float
    dampening: float
    nesterov: bool
    weight_decay: float

    @classmethod
    def from_args(cls, args: Mapping[str, Any], trainer: str) -> StackedSGD:
        """The settings in ``optimizer_args``, refused where ``torch.optim.SGD`` refuses them
        (``trainer`` names who asks, for the message)."""
        unknown = sorted(set(args) - set(SGD_ARGS))
        if unknown:
            raise ConfigError(
                f"{trainer}'s SGD does not take {', '.join(unknown)}; valid optimizer_args: "
                f"{', '.join(SGD_ARGS)}; use TorchTrainer for other SGD options"
            )
        sgd = cls(
            momentum=float(args.get("momentum", 0.0)),
            dampening=float(args.get("dampening", 0.0)),
            nesterov=bool(args.get("nesterov", False)),
            weight_decay=float(args.get("weight_decay", 0.0)),
        )
        if not (sgd.momentum >= 0 and sgd.weight_decay >= 0):
            raise ConfigError(
                f"momentum and weight_decay must be >= 0, got momentum={sgd.momentum}, "
                f"weight_decay={sgd.weight_decay}"
            )
        if sgd.nesterov and (sgd.momentum <= 0 or sgd.dampening != 0):
            raise ConfigError(
                f"nesterov momentum requires momentum > 0 and dampening = 0 (as in "
                f"torch.optim.SGD); got momentum={sgd.momentum}, dampening={sgd.dampening}"
            )
        return sgd

    def update(
        self,
        space: Workspace,
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
            diff = torch.sub(p, w0, out=space.tensor(f"d:{name}", tuple(p.shape)))
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
