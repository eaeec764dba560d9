"""LoRA adapters (through ``peft``) on any ``nn.Module``, with only the adapters federated.

LoRA (Hu et al. 2021, arXiv:2106.09685) replaces a frozen weight ``W`` of a target layer by
``W + s * B @ A`` with ``A`` of shape ``[r, in]``, ``B`` of shape ``[out, r]``, ``s = alpha / r``;
``B`` starts at zero, so training starts from the base model. ``peft`` injects the adapters
(:func:`peft.get_peft_model`); :func:`lora_factory` then turns every frozen parameter into a
*non-persistent buffer*: it still computes the forward pass, but it is no longer in the
module's ``state_dict``. fedfleet's layout is built from the ``state_dict``
(:class:`fedfleet.params.Layout`), so the vector that travels, is aggregated and is checkpointed
holds the adapters and nothing else, and every trainer, strategy and transport works unchanged.
The frozen base is built on every party by the same factory (from a seed, or a base file every
party holds: :mod:`fedfleet.models._pretrained`) and never leaves it.

Aggregating adapters. FedAvg averages the vector, i.e. ``A`` and ``B`` separately, and
``mean_k(B_k) @ mean_k(A_k) != mean_k(B_k @ A_k)``: the averaged model is not the average of the
clients' updates of ``W`` (the gap is :func:`product_gap`). ``freeze_a = True`` is FFA-LoRA
(Sun et al., ICLR 2024, arXiv:2403.12313): every ``A`` stays at its random initialisation, drawn
from ``seed`` identically on every party and never sent, and only the ``B`` factors train and
travel. Then the aggregate is exact: ``(sum_k w_k B_k) @ A == sum_k w_k (B_k @ A)`` for any
weights ``w_k``, so a weighted mean of the clients' ``B`` is the weighted mean of their weight
updates (to float32 rounding), and it halves what travels again.

Float buffers that are persistent (BatchNorm running statistics) stay in the ``state_dict`` and
federate as they do without LoRA.

Example:
    >>> import torch
    >>> from torch import nn
    >>> build = lambda: nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> model = lora_factory(build, LoraSpec(rank=2, freeze_a=True))()  # doctest: +SKIP
    >>> [name.split(".lora_B.")[0] for name in model.state_dict()]  # doctest: +SKIP
    ['base_model.model.0', 'base_model.model.2']
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedfleet.errors import ConfigError
from fedfleet.models._pretrained import from_base

__all__ = [
    "LoraFactors",
    "LoraSpec",
    "adapter_factors",
    "adapter_name",
    "lora_factory",
    "product_gap",
]


@dataclass(frozen=True, kw_only=True)
class LoraSpec:
    """How to adapt a model with LoRA.

    Attributes:
        rank: ``r``, the adapters' inner dimension.
        alpha: the scale numerator: ``B @ A`` is multiplied by ``alpha / rank``; None = ``rank``
            (scale 1).
        targets: names (or name suffixes, as ``peft`` matches them) of the modules to adapt;
            None = every ``nn.Linear``.
        dropout: dropout on the adapters' input during training.
        freeze_a: FFA-LoRA: keep every ``A`` at its seeded random init; train and send ``B`` only
            (exact aggregation of the products, see the module docstring).
        seed: draws the base (when no base file is given) and the adapters' ``A``; every party
            must use the same.
        base: a safetensors file with the base model's full state (every party holds it);
            None = the base drawn from ``seed``.
    """

    rank: int
    alpha: int | None = None
    targets: tuple[str, ...] | None = None
    dropout: float = 0.0
    freeze_a: bool = False
    seed: int = 0
    base: str | Path | None = None

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"LoRA rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoRA dropout must be in [0, 1), got {self.dropout}")


def _linear_names(module: nn.Module) -> list[str]:
    return [name for name, m in module.named_modules() if isinstance(m, nn.Linear) and name]


def _check_targets(module: nn.Module, targets: Sequence[str]) -> None:
    names = [n for n, _ in module.named_modules() if n]
    unmatched = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if unmatched:
        raise ConfigError(
            f"LoRA targets {unmatched} match no module of the model; its modules are "
            f"{', '.join(names[:20])}{' ...' if len(names) > 20 else ''} (nn.Linear: "
            f"{', '.join(_linear_names(module)[:20]) or 'none'})"
        )


def _freeze_to_buffers(module: nn.Module) -> None:
    """Every parameter that does not train becomes a non-persistent buffer of its module: same
    tensor, same forward pass, but out of ``state_dict``, ``parameters()`` and the optimizer."""
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None and not p.requires_grad:
                del sub._parameters[name]
                sub.register_buffer(name, p.detach(), persistent=False)


def lora_factory(build: Callable[[], nn.Module], spec: LoraSpec) -> Callable[[], nn.Module]:
    """A factory for ``build()``'s model with LoRA adapters whose ``state_dict`` (and so the
    federated layout) holds the trainable adapters only.

    Each call builds the base (seeded, then the base file if ``spec.base``), injects the
    adapters with ``peft`` (their ``A`` drawn from ``spec.seed``), freezes ``A`` if
    ``spec.freeze_a``, and moves every frozen tensor out of the ``state_dict``. Every call
    returns the same model, whatever the caller's random state.

    Raises:
        ConfigError: a target that names no module, or a model without ``nn.Linear`` layers
            when ``targets`` is None.
    """
    base_factory = from_base(build, spec.base, seed=spec.seed)
    adapter: list[str] = []  # the adapter's name, computed once: every call builds the same base

    def factory() -> nn.Module:
        import peft

        base = base_factory()
        targets: list[str] | str
        if spec.targets is not None:
            targets = list(spec.targets)
            _check_targets(base, targets)
        else:
            linear = _linear_names(base)
            if not linear:
                raise ConfigError(
                    "LoRA found no nn.Linear layer to adapt in the model; name the modules in "
                    "lora_targets"
                )
            # a full-match pattern: a plain name such as '1' would also match 'block.1'
            targets = "|".join(re.escape(n) for n in linear)
        config = peft.LoraConfig(
            r=spec.rank,
            lora_alpha=spec.alpha if spec.alpha is not None else spec.rank,
            target_modules=targets,
            lora_dropout=spec.dropout,
            bias="none",
        )
        if not adapter:
            adapter.append(adapter_name(base, spec))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed + 1)  # A's draw, apart from the base's
            model = peft.get_peft_model(base, config, adapter_name=adapter[0])
        if spec.freeze_a:
            for name, p in model.named_parameters():
                if ".lora_A." in name:
                    p.requires_grad_(False)
        _freeze_to_buffers(model)
        return model

    return factory


def adapter_name(base: nn.Module, spec: LoraSpec) -> str:
    """``"b"`` + 12 hex digits of a SHA-256 over the base's tensors (names, dtypes, shapes,
    bytes) and the adapters' settings (rank, alpha, targets, seed, freeze_a; not the base
    file's path). It names the adapters, so it is part of every federated tensor's name and of
    the layout's fingerprint: a party whose base (or A, drawn from the seed) differs from the
    server's has another layout, and the server refuses it at registration instead of
    averaging adapters trained against another base."""
    h = hashlib.sha256()
    for name, t in base.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    settings = (spec.rank, spec.alpha, spec.targets, spec.dropout, spec.seed, spec.freeze_a)
    h.update(repr(settings).encode())
    return "b" + h.hexdigest()[:12]


@dataclass(frozen=True)
class LoraFactors:
    """One adapted layer's factors: its update of ``W`` is ``scale * b @ a``."""

    a: np.ndarray
    b: np.ndarray
    scale: float

    @property
    def product(self) -> np.ndarray:
        return self.scale * (self.b.astype(np.float64) @ self.a.astype(np.float64))


def adapter_factors(
    model: nn.Module, state: Mapping[str, np.ndarray] | None = None
) -> dict[str, LoraFactors]:
    """Every adapted layer's ``A``, ``B`` and scale, by the layer's name; ``state`` (for
    example ``layout.unflatten(vector)``) overrides the model's own tensors by name, so the
    factors of any client's vector can be read with one model."""
    from peft.tuners.lora import LoraLayer

    state = state or {}
    out = {}
    named = dict(model.named_modules())
    for name, layer in named.items():
        if not isinstance(layer, LoraLayer):
            continue
        for adapter in layer.lora_A:
            a, b = (
                _tensor(state, f"{name}.lora_{f}.{adapter}.weight", getattr(layer, f"lora_{f}"))
                for f in "AB"
            )
            out[f"{name}.{adapter}"] = LoraFactors(a=a, b=b, scale=float(layer.scaling[adapter]))
    return out


def _tensor(state: Mapping[str, np.ndarray], key: str, adapters: nn.ModuleDict) -> np.ndarray:
    if key in state:
        return np.asarray(state[key])
    adapter = key.rsplit(".", 2)[-2]
    weight = adapters[adapter].weight
    assert isinstance(weight, torch.Tensor)
    return weight.detach().to("cpu", torch.float32).numpy()


def product_gap(
    clients: Iterable[Mapping[str, LoraFactors]], weights: Sequence[float] | None = None
) -> float:
    """How far averaging the factors is from averaging the products, relative:

    ``||mean_k(s B_k A_k) - s mean_k(B_k) mean_k(A_k)||_F / ||mean_k(s B_k A_k)||_F`` over all
    adapted layers together (weighted means with ``weights``, e.g. sample counts). Zero (to
    rounding) when every client shares ``A`` (FFA-LoRA); 0.0 when the products are all zero.
    """
    per_client = list(clients)
    if not per_client:
        raise ValueError("product_gap needs at least one client's factors")
    w = np.ones(len(per_client)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    num = den = 0.0
    for layer in per_client[0]:
        f = [c[layer] for c in per_client]
        exact = sum(wk * fk.product for wk, fk in zip(w, f, strict=True))
        a = sum(wk * fk.a.astype(np.float64) for wk, fk in zip(w, f, strict=True))
        b = sum(wk * fk.b.astype(np.float64) for wk, fk in zip(w, f, strict=True))
        approx = f[0].scale * (b @ a)
        num += float(np.sum((exact - approx) ** 2))
        den += float(np.sum(exact**2))
    return 0.0 if den == 0.0 else float(np.sqrt(num / den))
