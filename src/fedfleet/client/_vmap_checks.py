"""Which models :class:`~fedfleet.client.VmapTrainer` can train.

A stack of clients shares one module object, so the model must keep no state that changes in
training (BatchNorm running statistics, other buffers), draw no random numbers (dropout) and tie
no parameters together; these checks refuse the rest with a pointer to :class:`TorchTrainer`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from fedfleet.errors import ConfigError

__all__ = ["check_static_buffers", "refuse_unsupported"]

Tensors = dict[str, torch.Tensor]


def refuse_unsupported(module: nn.Module) -> None:
    """ConfigError for what a vmapped stack of clients cannot train like the sequential loop."""
    for name, m in module.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) or (
            isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats
        ):
            raise ConfigError(
                f"module {name!r} is a {type(m).__name__}: it normalises with batch statistics "
                "and updates running statistics in training, which VmapTrainer cannot carry "
                "for a stack of clients; use TorchTrainer for this model (or GroupNorm/"
                "LayerNorm, which keep no state)"
            )
        if isinstance(m, nn.RNNBase):
            raise ConfigError(
                f"module {name!r} is a {type(m).__name__}: torch.func.vmap has no batching rule "
                "for its fused recurrent kernel, so a stack of clients cannot train it; use "
                "TorchTrainer for this model (executor = 'threaded' or 'sequential')"
            )
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            raise ConfigError(
                f"module {name!r} is a {type(m).__name__} (p={m.p}): VmapTrainer cannot draw "
                "the sequential trainer's random masks; use TorchTrainer for this model"
            )
    if len(list(module.named_parameters(remove_duplicate=False))) != len(
        list(module.named_parameters())
    ):
        raise ConfigError("the model ties parameters together; use TorchTrainer for it")


def check_static_buffers(module: nn.Module, glob: Tensors, x: torch.Tensor) -> None:
    """ConfigError if a forward pass in training mode changes one of the module's buffers."""
    buffers = {n: b.detach().clone() for n, b in module.named_buffers()}
    if not buffers:
        return
    before = {n: b.clone() for n, b in buffers.items()}
    params = {n: glob[n] for n, _ in module.named_parameters() if n in glob}
    module.train()
    with torch.no_grad():
        functional_call(module, {**params, **buffers}, (x,))
    changed = [n for n in buffers if not torch.equal(buffers[n], before[n])]
    if changed:
        raise ConfigError(
            f"the model changes its buffers {changed} in training, which VmapTrainer cannot "
            "carry for a stack of clients; use TorchTrainer for this model"
        )
