"""Model parameters as one flat float32 vector plus a layout.

A layout fixes, for a run, the name, shape, dtype and offset of every federated tensor. With it an
update is a vector, a cohort of updates a ``[clients, params]`` matrix, and the wire format and
checkpoints are the layout plus raw bytes (safetensors, protobuf bytes), never pickle.

Which tensors are federated: every *floating-point* entry of a module's ``state_dict`` (parameters
and float buffers such as BatchNorm's running statistics). Integer buffers (BatchNorm's
``num_batches_tracked``) stay client-local. float16/bfloat16 tensors round-trip exactly through
float32; float64 tensors do not, so they are refused rather than silently rounded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from math import prod

import numpy as np
import torch
from torch import nn

from fedfleet.errors import LayoutError

__all__ = ["Layout", "TensorSpec"]

_EXACT_IN_FLOAT32 = {torch.float32, torch.float16, torch.bfloat16}


@dataclass(frozen=True)
class TensorSpec:
    """One tensor's place in the flat vector."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int

    @property
    def numel(self) -> int:
        return prod(self.shape)


@dataclass(frozen=True)
class Layout:
    """Where each named tensor lives in a flat float32 vector.

    Examples:
        >>> layout = Layout.from_module(torch.nn.Linear(3, 2))
        >>> vec = layout.flatten(torch.nn.Linear(3, 2).state_dict())
        >>> vec.shape
        (8,)
    """

    specs: tuple[TensorSpec, ...]

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, tuple[int, ...]], dtype: str = "float32") -> Layout:
        """A layout for plain arrays (NumPy models), in the mapping's order."""
        specs, offset = [], 0
        for name, shape in shapes.items():
            spec = TensorSpec(name, tuple(int(s) for s in shape), dtype, offset)
            specs.append(spec)
            offset += spec.numel
        return cls(tuple(specs))

    @classmethod
    def from_module(cls, module: nn.Module) -> Layout:
        """The layout of a module's floating-point state (parameters and float buffers)."""
        return cls.from_state_dict(module.state_dict())

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> Layout:
        specs, offset = [], 0
        for name, t in state.items():
            if not t.is_floating_point():
                continue
            if t.dtype not in _EXACT_IN_FLOAT32:
                raise LayoutError(
                    f"tensor {name!r} has dtype {t.dtype}, which a float32 vector cannot hold "
                    "exactly; convert the model with model.float() first"
                )
            spec = TensorSpec(name, tuple(t.shape), str(t.dtype).removeprefix("torch."), offset)
            specs.append(spec)
            offset += spec.numel
        if not specs:
            raise LayoutError("the model has no floating-point parameters to federate")
        return cls(tuple(specs))

    @property
    def size(self) -> int:
        """Number of float32 entries in the flat vector."""
        last = self.specs[-1]
        return last.offset + last.numel

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    @property
    def fingerprint(self) -> str:
        """A short hash of names, shapes and dtypes: equal fingerprints mean compatible models."""
        text = ";".join(f"{s.name}:{'x'.join(map(str, s.shape))}:{s.dtype}" for s in self.specs)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def check(self, vector: np.ndarray, who: str = "vector") -> None:
        """Raise LayoutError unless ``vector`` is a 1-D float32 array of this layout's size."""
        if not isinstance(vector, np.ndarray):
            raise LayoutError(f"{who} is a {type(vector).__name__}, expected a numpy array")
        if vector.dtype != np.float32 or vector.shape != (self.size,):
            raise LayoutError(
                f"{who} has shape {vector.shape} and dtype {vector.dtype}, expected "
                f"({self.size},) float32 for layout {self.fingerprint}; is it another model?"
            )

    def flatten(self, arrays: Mapping[str, torch.Tensor | np.ndarray]) -> np.ndarray:
        """Concatenate the layout's tensors from a state dict (or a dict of arrays) into a vector.

        Entries not in the layout (integer buffers) are ignored; missing or misshaped ones raise.
        """
        out = np.empty(self.size, dtype=np.float32)
        for s in self.specs:
            if s.name not in arrays:
                raise LayoutError(f"tensor {s.name!r} of the layout is missing from the state")
            value = arrays[s.name]
            if isinstance(value, torch.Tensor):
                value = value.detach().to("cpu", torch.float32).numpy()
            if tuple(value.shape) != s.shape:
                raise LayoutError(
                    f"tensor {s.name!r} has shape {tuple(value.shape)}, layout expects {s.shape}"
                )
            out[s.offset : s.offset + s.numel] = value.reshape(-1)
        return out

    def unflatten(self, vector: np.ndarray) -> dict[str, np.ndarray]:
        """Views of ``vector`` shaped as the layout's tensors (float32; no copy)."""
        self.check(vector)
        return {s.name: vector[s.offset : s.offset + s.numel].reshape(s.shape) for s in self.specs}

    def to_state_dict(self, vector: np.ndarray) -> dict[str, torch.Tensor]:
        """Tensors in each entry's original dtype, for ``module.load_state_dict(strict=False)``."""
        return {
            name: torch.from_numpy(arr.copy()).to(getattr(torch, spec.dtype))
            for (name, arr), spec in zip(self.unflatten(vector).items(), self.specs, strict=True)
        }

    def bind(self, module: nn.Module, flat: torch.Tensor) -> None:
        """Make the module's federated tensors views into ``flat`` (float32 modules only).

        Afterwards ``flat.copy_(vector)`` loads a model in one copy and an optimizer stepping the
        module's parameters writes straight into ``flat``: the lean path for local training.
        """
        if flat.shape != (self.size,) or flat.dtype != torch.float32:
            raise LayoutError(f"flat buffer must be float32 of shape ({self.size},)")
        state = module.state_dict(keep_vars=True)
        for s in self.specs:
            t = state[s.name]
            if t.dtype != torch.float32:
                raise LayoutError(f"bind needs float32 tensors; {s.name!r} is {t.dtype}")
            view = flat[s.offset : s.offset + s.numel].view(s.shape)
            view.copy_(t.detach())
            t.data = view
