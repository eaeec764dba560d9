"""The hand-written fast path of :class:`~fedfleet.client.VmapTrainer`.

For an ``nn.Sequential`` of ``Flatten``/``Linear``/``ReLU`` trained with cross-entropy: the
numbers autograd computes, without autograd and, for plain SGD, with each weight update fused
into the gradient's batched product (``baddbmm``) instead of writing the gradient out.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["MLP", "mlp_layers"]

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class MLP:
    """The hand-written path for ``Sequential(Flatten?, Linear, ReLU?, ..., Linear)`` with
    cross-entropy: the forward and backward pass of autograd, written out with batched matrix
    products so that a plain SGD update can be fused into the weight gradient's product."""

    layers: tuple[tuple[str, str | None, bool], ...]  # (weight, bias or None, ReLU after)
    flatten: bool

    def step(
        self,
        src: Tensors,
        x: torch.Tensor,
        y: torch.Tensor,
        weight: torch.Tensor | None,
        shared: bool,
        scale: float | torch.Tensor | None,
        dst: Tensors,
    ) -> torch.Tensor:
        """Per-client losses of the batch ``x [a, B, ...]``.

        ``scale`` None: write the gradients into the buffers ``dst``. Otherwise (``scale = -lr``,
        a number or an ``[a, 1, 1]`` column) write ``src + scale * gradient`` into ``dst``, which
        may be ``src`` itself. ``shared``: ``src`` holds one unbatched model for every client.
        """
        a, b = y.shape
        h = x.reshape(a, b, -1) if self.flatten else x
        inputs, outputs = [], []
        for wname, bname, relu in self.layers:
            w, bias = src[wname], src[bname] if bname else None
            if shared:
                flat = h.reshape(a * b, -1)
                z = torch.mm(flat, w.t()) if bias is None else torch.addmm(bias, flat, w.t())
                z = z.view(a, b, -1)
            elif bias is None:
                z = torch.bmm(h, w.transpose(1, 2))
            else:
                z = torch.baddbmm(bias.unsqueeze(1), h, w.transpose(1, 2))
            if relu:
                z = z.relu_()
            inputs.append(h)
            outputs.append(z)
            h = z
        logp = torch.log_softmax(outputs[-1], dim=-1)
        classes = logp.shape[-1]
        nll = F.nll_loss(logp.view(a * b, classes), y.reshape(a * b), reduction="none").view(a, b)
        loss = nll.mean(dim=1) if weight is None else (nll * weight).sum(dim=1)
        # d loss / d logits = softmax - onehot, times each sample's weight
        d = logp.exp_()
        d.scatter_add_(-1, y.unsqueeze(-1), _minus_ones(a, b, d.dtype, d.device))
        factor = 1.0 if scale is None else scale
        if weight is None:
            d.mul_(factor / b)
        else:
            d.mul_(weight.unsqueeze(-1) * factor)
        for i in range(len(self.layers) - 1, -1, -1):
            wname, bname, relu = self.layers[i]
            if relu:
                d = d * (outputs[i] > 0)
            w = src[wname]
            back = None
            if i > 0:  # before the weights below are overwritten
                back = torch.mm(d.view(a * b, -1), w).view(a, b, -1) if shared else torch.bmm(d, w)
            dt, h = d.transpose(1, 2), inputs[i]
            if scale is None:
                torch.bmm(dt, h, out=dst[wname])
                if bname:
                    torch.sum(d, dim=1, out=dst[bname])
            else:
                if shared:
                    torch.baddbmm(w.expand(a, *w.shape), dt, h, out=dst[wname])
                else:
                    dst[wname].baddbmm_(dt, h)
                if bname:
                    torch.add(src[bname], d.sum(dim=1), out=dst[bname])
            if back is not None:
                d = back
        return loss


@functools.lru_cache(maxsize=64)
def _minus_ones(a: int, b: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``[a, b, 1]`` of -1, the one-hot's sign in the loss gradient; made once per shape (it is
    only ever read)."""
    return torch.full((a, b, 1), -1.0, dtype=dtype, device=device)


def mlp_layers(module: nn.Module, trainable: list[str]) -> MLP | None:
    """The fast path's description of ``module``, or None if it is not a plain MLP."""
    if not isinstance(module, nn.Sequential):
        return None
    layers: list[tuple[str, str | None, bool]] = []
    flatten = False
    for name, m in module.named_children():
        if type(m) is nn.Flatten and not layers and m.start_dim == 1 and m.end_dim == -1:
            flatten = True
        elif type(m) is nn.Linear:
            layers.append((f"{name}.weight", None if m.bias is None else f"{name}.bias", False))
        elif type(m) is nn.ReLU and layers and not layers[-1][2]:
            layers[-1] = (layers[-1][0], layers[-1][1], True)
        else:
            return None
    names = [n for layer in layers for n in layer[:2] if n is not None]
    if not layers or sorted(names) != sorted(trainable):
        return None
    return MLP(tuple(layers), flatten)
