"""Pretrained base models: a safetensors file every party holds, and a central pretraining step.

Fine-tuning starts from weights that exist before the federation does: a checkpoint downloaded
or trained centrally. Here such a *base* is a plain safetensors file of the module's full
``state_dict`` (every tensor, by name; no pickle). Every party builds the model from the same
factory and loads the same file, so the starting point never travels: only what is trained does
(the whole vector for full fine-tuning, the adapters for LoRA, :mod:`fedfleet.models._lora`).

:func:`pretrain_base` is the usual way to get one: train centrally on some clients' pooled data
(:func:`split_for_pretraining`) and fine-tune federatedly on the others.

Example:
    >>> import torch
    >>> build = lambda: torch.nn.Linear(4, 3)
    >>> factory = from_base(build, None, seed=0)  # no file: drawn from the seed
    >>> torch.equal(factory().weight, factory().weight)
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedfleet.data import ArrayDataset
from fedfleet.errors import ConfigError
from fedfleet.sim import Federation

__all__ = ["from_base", "load_base", "pretrain_base", "save_base", "split_for_pretraining"]


def save_base(module: nn.Module, path: str | Path) -> Path:
    """Write ``module``'s full ``state_dict`` to ``path`` (safetensors); returns the path."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path))
    return path


def load_base(module: nn.Module, path: str | Path) -> nn.Module:
    """Load the base file ``path`` into ``module`` in place; names and shapes must match exactly.

    Raises:
        ConfigError: the file is missing or holds other tensors than the module's state.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise ConfigError(f"base model file {str(path)!r} does not exist") from None
    except SafetensorError as e:
        raise ConfigError(f"base model file {str(path)!r} is not a safetensors file: {e}") from None
    own = module.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [
        f"{k} {tuple(state[k].shape)} (model: {tuple(own[k].shape)})"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or extra or shapes:
        parts = [
            f"missing {', '.join(missing[:5])}" if missing else "",
            f"unexpected {', '.join(extra[:5])}" if extra else "",
            f"misshaped {', '.join(shapes[:5])}" if shapes else "",
        ]
        raise ConfigError(
            f"base model file {str(path)!r} does not fit the model: "
            f"{'; '.join(p for p in parts if p)}; was it saved from another model.name or size?"
        )
    module.load_state_dict(state)
    return module


def from_base(
    build: Callable[[], nn.Module], base: str | Path | None, *, seed: int = 0
) -> Callable[[], nn.Module]:
    """A factory building ``build()`` with its weights drawn from ``seed`` and then, if ``base``
    is given, overwritten by that file: the same module on every party, whatever the caller's
    random state (the draw runs in a forked RNG)."""

    def factory() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = build()
        return module if base is None else load_base(module, base)

    return factory


def split_for_pretraining(
    federation: Federation, pretrain_clients: Sequence[int]
) -> tuple[ArrayDataset, Federation]:
    """The pooled training data of ``pretrain_clients`` (for central pretraining) and a
    federation of the remaining clients (renumbered ``0..``, in their order) that fine-tunes.

    Raises:
        ConfigError: an unknown client id, or no client left to fine-tune.
    """
    chosen = sorted(set(pretrain_clients))
    bad = [c for c in chosen if not 0 <= c < federation.num_clients]
    if bad:
        raise ConfigError(
            f"pretrain clients {bad} are not in the federation "
            f"(clients 0..{federation.num_clients - 1})"
        )
    rest = [c for c in federation.client_ids if c not in chosen]
    if not rest:
        raise ConfigError("every client pretrains; leave at least one to fine-tune federatedly")
    pooled = federation.task.train.subset(
        np.concatenate([np.asarray(federation.train_parts[c]) for c in chosen])
        if chosen
        else np.zeros(0, dtype=np.int64)
    )
    tests = federation.test_parts
    fine_tune = Federation(
        federation.task,
        [federation.train_parts[c] for c in rest],
        None if tests is None else [tests[c] for c in rest],
        federation.test_from_task_test,
    )
    return pooled, fine_tune


def pretrain_base(
    build: Callable[[], nn.Module],
    data: ArrayDataset,
    path: str | Path,
    *,
    epochs: int = 5,
    lr: float = 0.1,
    batch_size: int = 32,
    optimizer: str = "sgd",
    seed: int = 0,
) -> Path:
    """Train ``build()`` (weights drawn from ``seed``) centrally on ``data`` and save it as a
    base file at ``path``; returns the path. Deterministic: the same arguments give the same
    bytes."""
    from fedfleet.client import FitInstructions, TorchTrainer

    trainer = TorchTrainer(build, optimizer=optimizer)
    start = trainer.init_vector(seed)
    fit = trainer.fit(
        start, data, FitInstructions(epochs=epochs, lr=lr, batch_size=batch_size), seed=seed
    )
    return save_base(trainer.export(fit.vector), path)
