"""Personalisation with a shared body and a personal head: FedPer and FedRep.

The model is split by layout name: the *head* is every entry whose name starts with one of the
given prefixes (typically the last layer), the *body* is the rest. Each client keeps its own head
in its client state (the first time, the global initial head), trains from ``global body +
own head``, keeps the trained head, and uploads a delta that is exactly zero on the head. The
server runs any base strategy on those deltas (FedAvg by default, so the body is averaged as in
FedAvg) and keeps its own head at the initial values, so the head never leaves a client:

    body <- base aggregation of the body deltas,     head_k <- client k's trained head

- FedPer (Arivazhagan et al. 2019, "Federated Learning with Personalization Layers") trains body
  and head together for the instructed epochs.
- FedRep (Collins et al. 2021, "Exploiting Shared Representations for Personalized Federated
  Learning") first trains the head alone for ``head_epochs`` epochs (body frozen), then the body
  alone for the instructed epochs (head frozen).

Both wrap a base strategy, which picks the clients, runs the client side of the body phase and
aggregates; both offer ``personalize(vector, client_state)``, with which the engine's federated
evaluation scores each client on its own model (global body + its head).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import final

import numpy as np
from torch import nn

import fedfleet._streams as _streams
from fedfleet.client import ClientState, FitInstructions, Trainer
from fedfleet.data import ArrayDataset
from fedfleet.errors import ConfigError
from fedfleet.params import Layout
from fedfleet.strategies._base import (
    ClientResult,
    ClientUpdate,
    DelegatedEvaluation,
    Strategy,
    StrategyState,
)
from fedfleet.strategies._fedavg import FedAvg

__all__ = ["HEAD_STATE", "FedPer", "FedRep", "head_mask"]

HEAD_STATE = "personal_head"
"""The client-state entry holding a client's head (the head coordinates of the flat vector)."""


def head_mask(layout: Layout, prefixes: Sequence[str]) -> np.ndarray:
    """A boolean mask over the flat vector: True on the entries whose names start with one of
    ``prefixes``. Every prefix must match an entry, and the body must not be empty."""
    if isinstance(prefixes, str):
        raise ConfigError(f"head must be a list of name prefixes, got the string {prefixes!r}")
    if not prefixes:
        raise ConfigError(f"give at least one head prefix; layout names: {', '.join(layout.names)}")
    for prefix in prefixes:
        if not any(name.startswith(prefix) for name in layout.names):
            raise ConfigError(
                f"head prefix {prefix!r} matches no tensor of the model; layout names: "
                f"{', '.join(layout.names)}"
            )
    mask = np.zeros(layout.size, dtype=bool)
    for spec in layout.specs:
        if spec.name.startswith(tuple(prefixes)):
            mask[spec.offset : spec.offset + spec.numel] = True
    if mask.all():
        raise ConfigError(
            f"head prefixes {list(prefixes)} cover the whole model, leaving no shared body; "
            f"layout names: {', '.join(layout.names)}"
        )
    return mask


@dataclass(frozen=True, kw_only=True)
class _PersonalHead(DelegatedEvaluation, abc.ABC):
    """The server side every personal-head strategy shares: selection and aggregation by the
    base strategy, with the head's coordinates kept at their global values; subclasses say what
    a client does."""

    strategy: Strategy = field(default_factory=FedAvg)
    layout: Layout
    head: tuple[str, ...]
    _mask: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_mask", head_mask(self.layout, self.head))
        object.__setattr__(self, "head", tuple(self.head))  # a list from a config file is fine

    def init(self, vector: np.ndarray) -> StrategyState:
        return self.strategy.init(vector)

    def configure_fit(
        self,
        rnd: int,
        vector: np.ndarray,
        state: StrategyState,
        clients: Sequence[int],
        rng: np.random.Generator,
    ) -> list[tuple[int, FitInstructions]]:
        return self.strategy.configure_fit(rnd, vector, state, clients, rng)

    @abc.abstractmethod
    def client_fit(
        self,
        trainer: Trainer,
        vector: np.ndarray,
        data: ArrayDataset,
        instructions: FitInstructions,
        seed: int,
        state: ClientState | None,
    ) -> ClientResult: ...

    def aggregate_fit(
        self,
        rnd: int,
        vector: np.ndarray,
        state: StrategyState,
        updates: Sequence[ClientUpdate],
    ) -> tuple[np.ndarray, StrategyState, dict[str, float]]:
        new, state, metrics = self.strategy.aggregate_fit(rnd, vector, state, updates)
        return np.where(self._mask, vector, new), state, metrics

    def _evaluates_as(self) -> Strategy:
        return self.strategy

    def personalize(self, vector: np.ndarray, client_state: ClientState | None) -> np.ndarray:
        """Client's own model: the global body with its head from ``client_state`` (the global
        vector itself while the client has no head yet)."""
        return _personalize(vector, client_state, self._mask)


@final
@dataclass(frozen=True, kw_only=True)
class FedPer(_PersonalHead):
    """FedPer: a federated body, personal heads trained jointly with it on each client.

    Attributes:
        strategy: the base strategy: client selection, the client-side training, aggregation.
        layout: the model's layout (``trainer.layout``).
        head: name prefixes of the personal entries, e.g. ``("2.",)`` for the last Linear of
            ``nn.Sequential(Linear, ReLU, Linear)``.

    Examples:
        >>> strategy = FedPer(strategy=FedAvg(clients_per_round=10), layout=trainer.layout,
        ...                   head=("2.",))
    """

    def client_fit(
        self,
        trainer: Trainer,
        vector: np.ndarray,
        data: ArrayDataset,
        instructions: FitInstructions,
        seed: int,
        state: ClientState | None,
    ) -> ClientResult:
        _check_layout(trainer, self.layout)
        inner = _inner_state(state)
        start = _personalize(vector, state, self._mask)
        result = self.strategy.client_fit(trainer, start, data, instructions, seed, inner)
        return _upload(vector, result, inner, self._mask)


@final
@dataclass(frozen=True, kw_only=True)
class FedRep(_PersonalHead):
    """FedRep: personal heads trained first with the body frozen, then the body with the head
    frozen.

    Attributes:
        strategy: the base strategy: client selection, the body phase's client-side training
            (``instructions.epochs`` epochs), aggregation.
        layout: the model's layout (``trainer.layout``).
        head: name prefixes of the personal entries.
        head_epochs: local epochs of the head phase (same batch size and lr as the body phase).

    The head phase is plain local training (the instructions' strategy ``config`` and
    ``payload`` are dropped) with a seed from ``SeedSequence(seed, spawn_key=(3,))``
    (``fedfleet._streams.FEDREP_HEAD``); the body phase is the base strategy's client side
    with the client's seed. The phases freeze parameters through
    ``requires_grad``, so the trainer must expose its ``torch.nn.Module`` as ``.model``
    (:class:`fedfleet.client.TorchTrainer` does); the frozen part's coordinates (float buffers
    included) are restored after each phase.
    """

    head_epochs: int = 1

    def __post_init__(self) -> None:
        if self.head_epochs < 1:
            raise ConfigError(
                f"FedRep: head_epochs must be >= 1 (the head trains only in its phase), got "
                f"{self.head_epochs}"
            )
        super().__post_init__()

    def client_fit(
        self,
        trainer: Trainer,
        vector: np.ndarray,
        data: ArrayDataset,
        instructions: FitInstructions,
        seed: int,
        state: ClientState | None,
    ) -> ClientResult:
        _check_layout(trainer, self.layout)
        inner = _inner_state(state)
        start = _personalize(vector, state, self._mask)
        head_names = {s.name for s in self.layout.specs if s.name.startswith(self.head)}
        head_seed = _streams.derive_seed(seed, _streams.FEDREP_HEAD)
        # plain local training of the head: the base strategy's terms (prox, corrections)
        # belong to the body phase
        head_instructions = dataclasses.replace(
            instructions, epochs=self.head_epochs, config={}, payload={}
        )
        with _trainable(trainer, lambda name: name in head_names):
            head_fit = trainer.fit(start, data, head_instructions, head_seed)
        start = np.where(self._mask, head_fit.vector, start)  # body (and its buffers) kept
        with _trainable(trainer, lambda name: name not in head_names):
            result = self.strategy.client_fit(trainer, start, data, instructions, seed, inner)
        fit = result.fit
        if isinstance(fit.vector, np.ndarray) and fit.vector.shape == start.shape:
            trained = np.where(self._mask, start, fit.vector)  # head buffers kept too
            # num_steps counts the body phase, the work behind the shared update; the head's
            # steps stay on the client and are reported as a metric
            metrics = {**fit.metrics, "head_steps": float(head_fit.num_steps)}
            fit = dataclasses.replace(fit, vector=trained, metrics=metrics)
        return _upload(vector, dataclasses.replace(result, fit=fit), inner, self._mask)


def _check_layout(trainer: Trainer, layout: Layout) -> None:
    if trainer.layout != layout:
        raise ConfigError(
            f"the strategy's head was defined on layout {layout.fingerprint}, but the trainer's "
            f"model has layout {trainer.layout.fingerprint}; build the strategy with "
            "layout=trainer.layout"
        )


def _inner_state(state: ClientState | None) -> ClientState | None:
    """The base strategy's part of the client state (everything but the head)."""
    if state is None:
        return None
    inner = {k: v for k, v in state.items() if k != HEAD_STATE}
    return inner or None


def _personalize(vector: np.ndarray, state: ClientState | None, mask: np.ndarray) -> np.ndarray:
    if state is None or HEAD_STATE not in state:
        return vector
    out = vector.copy()
    out[mask] = state[HEAD_STATE]
    return out


def _upload(
    vector: np.ndarray, result: ClientResult, inner: ClientState | None, mask: np.ndarray
) -> ClientResult:
    """Keep the trained head on the client; send the global head back (a zero head delta) and
    zero the head of every extra upload. A misshaped result goes out as is, for validation to
    reject with a clear message."""
    trained = result.fit.vector
    if not isinstance(trained, np.ndarray) or trained.shape != vector.shape:
        return result
    sent = np.where(mask, vector, trained)
    extras = {
        name: np.where(mask, np.float32(0.0), x)
        if isinstance(x, np.ndarray) and x.shape == vector.shape
        else x
        for name, x in result.extras.items()
    }
    base = result.state if result.state is not None else (inner or {})
    state = {**base, HEAD_STATE: trained[mask]}
    return ClientResult(dataclasses.replace(result.fit, vector=sent), extras, state)


@contextmanager
def _trainable(trainer: Trainer, keep: Callable[[str], bool]) -> Iterator[None]:
    """Within the block only the parameters whose names pass ``keep`` get gradients."""
    model = getattr(trainer, "model", None)
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"FedRep trains the head and the body in separate phases, which needs a trainer "
            f"exposing its torch module as .model (TorchTrainer); {type(trainer).__name__} has "
            "none. Use FedPer, which trains them together"
        )
    params = dict(model.named_parameters())
    before = {name: p.requires_grad for name, p in params.items()}
    try:
        for name, p in params.items():
            p.requires_grad_(before[name] and keep(name))
        yield
    finally:
        for name, p in params.items():
            p.requires_grad_(before[name])
