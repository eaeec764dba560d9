"""The sequential trainer's working copy of a model: its federated tensors as views of one buffer.

Loading a model is one copy into the buffer and an optimizer stepping the module writes straight
into it (:meth:`fedfleet.params.Layout.bind`). With ``channels_last`` the buffer keeps every
``nn.Conv2d`` weight in OHWI order instead of the vector's OIHW, so that the module's weights are
channels-last tensors and oneDNN runs its channels-last convolutions: on CPU a client's epoch of
the FedAvg CNN takes 0.71-0.80x the NCHW time (``bench/conv_layout.py``), with the same
arithmetic. The vectors that go in and come out are always in the layout's order; only the
buffer is permuted, and only this class knows it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedfleet.params import Layout, TensorSpec

__all__ = ["FlatBuffer", "conv2d_weights"]


def conv2d_weights(module: nn.Module, layout: Layout) -> frozenset[str]:
    """Names of the layout's tensors that are the 4-D weights of ``nn.Conv2d`` modules."""
    names = {
        f"{prefix}.weight" if prefix else "weight"
        for prefix, m in module.named_modules()
        if isinstance(m, nn.Conv2d)
    }
    return frozenset(s.name for s in layout.specs if s.name in names and len(s.shape) == 4)


class FlatBuffer:
    """One float32 buffer on ``device`` holding ``module``'s federated tensors, bound as views.

    Args:
        layout: the module's layout (the order of vectors in and out).
        module: bound in place: its federated tensors become views of :attr:`flat`.
        device: where the buffer lives.
        channels_last: names of 4-D tensors kept channels-last (see :func:`conv2d_weights`).
    """

    def __init__(
        self,
        layout: Layout,
        module: nn.Module,
        device: torch.device,
        channels_last: frozenset[str] = frozenset(),
    ) -> None:
        self.layout = layout
        self.flat = torch.zeros(layout.size, dtype=torch.float32, device=device)
        layout.bind(module, self.flat)
        self._permuted = [s for s in layout.specs if s.name in channels_last]
        state = module.state_dict(keep_vars=True)
        for s in self._permuted:
            tensor = state[s.name]
            value = tensor.detach().clone()
            tensor.data = self.view(self.flat, s)
            tensor.data.copy_(value)

    def view(self, buffer: torch.Tensor, spec: TensorSpec) -> torch.Tensor:
        """``spec``'s tensor inside a buffer in this buffer's order (the module's strides)."""
        segment = buffer[spec.offset : spec.offset + spec.numel]
        if spec in self._permuted:
            o, i, h, w = spec.shape
            return segment.view(o, h, w, i).permute(0, 3, 1, 2)
        return segment.view(spec.shape)

    def write(self, buffer: torch.Tensor, vector: np.ndarray) -> None:
        """Copy a layout-ordered ``vector`` into ``buffer`` in this buffer's order."""
        source = torch.from_numpy(vector).to(buffer.device)
        buffer.copy_(source)
        for s in self._permuted:  # rewrite the permuted segments from the source's order
            self.view(buffer, s).copy_(source[s.offset : s.offset + s.numel].view(s.shape))

    def load(self, vector: np.ndarray) -> None:
        """Make the bound module hold ``vector``'s weights."""
        self.layout.check(vector)
        self.write(self.flat, vector)

    def working(self, vector: np.ndarray) -> torch.Tensor:
        """A new device tensor holding ``vector`` in this buffer's order (FedProx's anchor)."""
        out = torch.empty_like(self.flat)
        self.write(out, vector)
        return out

    def vector(self) -> np.ndarray:
        """The bound module's weights as a new layout-ordered float32 vector."""
        out = self.flat.detach().clone()
        for s in self._permuted:
            out[s.offset : s.offset + s.numel].view(s.shape).copy_(self.view(self.flat, s))
        return out.to("cpu").numpy()
