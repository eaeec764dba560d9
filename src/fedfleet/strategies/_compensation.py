"""Compensation for lagging clients: adapt a client's next instructions to how it is doing.

:class:`Compensation` wraps any strategy. In ``aggregate_fit`` it keeps, per client, an
exponential moving average of the reported ``train_loss`` (and ``train_accuracy`` when reported)
in its state: ``state["compensation"]["loss"]`` (NaN: never reported). In ``configure_fit`` a
client is *lagging* when its average loss exceeds ``threshold`` times the median over the
clients that have reported; the wrapped strategy's instructions for it are then passed through
the ``rule``:

* :class:`MoreEpochs` - ``epochs * factor`` (rounded up), but no more local steps than fit in
  ``budget_s`` on the client's profile (so the extra work does not make it a straggler).
* :class:`ScaleLR` - ``lr * factor``.

Compensation is off unless the wrapper is used; any object with ``adjust(cid, instructions,
lag)`` is a rule (``lag`` = the client's loss / the median, > ``threshold``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from fedfleet.client import FitInstructions
from fedfleet.errors import ConfigError
from fedfleet.strategies._base import ClientUpdate, Strategy, StrategyState
from fedfleet.strategies._stragglers import RoundPlan
from fedfleet.strategies._wrapper import ClientFit, Wrapper

if TYPE_CHECKING:  # sim/ imports rounds/, which imports strategies/: a cycle at run time
    from fedfleet.sim._profiles import ClientProfiles

__all__ = ["ClientFit", "Compensation", "CompensationRule", "MoreEpochs", "ScaleLR"]


class CompensationRule(Protocol):
    def adjust(self, cid: int, instructions: FitInstructions, lag: float) -> FitInstructions: ...


@dataclass(frozen=True, kw_only=True)
class MoreEpochs:
    """``epochs -> ceil(epochs * factor)``; with ``profiles`` and ``budget_s``, ``max_steps``
    becomes the steps that fit in ``budget_s`` on client ``cid``'s profile (``num_bytes`` per
    transfer), never below an existing ``max_steps``; a client with no time to spare is left
    as it was."""

    factor: float
    profiles: ClientProfiles | None = None
    budget_s: float = math.inf
    num_bytes: int = 0

    def __post_init__(self) -> None:
        if not self.factor >= 1.0:
            raise ConfigError(f"compensation: MoreEpochs factor must be >= 1, got {self.factor}")

    def adjust(self, cid: int, instructions: FitInstructions, lag: float) -> FitInstructions:
        epochs = math.ceil(instructions.epochs * self.factor)
        out = dataclasses.replace(instructions, epochs=epochs)
        if self.profiles is not None and math.isfinite(self.budget_s):
            fit = self.profiles.steps_within(cid, self.budget_s, self.num_bytes)
            cap = fit if instructions.max_steps is None else max(fit, instructions.max_steps)
            if instructions.max_steps is None and fit < 1:
                return instructions  # no time to spare: leave it as it was
            out = dataclasses.replace(out, max_steps=cap)
        return out


@dataclass(frozen=True, kw_only=True)
class ScaleLR:
    """``lr -> lr * factor`` for lagging clients."""

    factor: float

    def __post_init__(self) -> None:
        if not self.factor > 0:
            raise ConfigError(f"compensation: ScaleLR factor must be > 0, got {self.factor}")

    def adjust(self, cid: int, instructions: FitInstructions, lag: float) -> FitInstructions:
        return dataclasses.replace(instructions, lr=instructions.lr * self.factor)


@dataclass(frozen=True, kw_only=True)
class Compensation(Wrapper):
    """Wrap ``inner`` so lagging clients get instructions rewritten by ``rule``.

    Attributes:
        inner: the wrapped strategy.
        rule: how a lagging client's instructions change.
        num_clients: size of the federation (the state's arrays).
        threshold: lagging when loss > threshold * median loss of the reported clients.
        decay: EMA weight of the old value (0: only the latest report counts).

    Metrics: ``compensated`` (clients whose instructions were changed this round).

    Examples:
        >>> Compensation(inner=FedAvg(...), rule=ScaleLR(factor=2.0), num_clients=100)
    """

    inner: Strategy
    rule: CompensationRule
    num_clients: int
    threshold: float = 1.2
    decay: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay < 1.0:
            raise ConfigError(f"compensation: decay must be in [0, 1), got {self.decay}")
        if not self.threshold > 0:
            raise ConfigError(f"compensation: threshold must be > 0, got {self.threshold}")

    def init(self, vector: np.ndarray) -> StrategyState:
        nan = np.full(self.num_clients, np.nan)
        return {"inner": self.inner.init(vector), "compensation": {"loss": nan, "acc": nan.copy()}}

    def lagging(self, state: StrategyState) -> dict[int, float]:
        """``{client: lag}`` for clients whose loss exceeds ``threshold * median``."""
        comp: Any = state["compensation"]
        loss: np.ndarray = comp["loss"]
        seen = ~np.isnan(loss)
        if not seen.any():
            return {}
        med = float(np.median(loss[seen]))
        if med <= 0:
            return {}
        lag = loss / med
        return {int(c): float(lag[c]) for c in np.flatnonzero(seen & (lag > self.threshold))}

    def configure_fit(
        self,
        rnd: int,
        vector: np.ndarray,
        state: StrategyState,
        clients: Sequence[int],
        rng: np.random.Generator,
    ) -> list[tuple[int, FitInstructions]]:
        plan = self.inner.configure_fit(rnd, vector, state["inner"], clients, rng)  # type: ignore[arg-type]
        lag = self.lagging(state)
        out = [(c, self.rule.adjust(c, i, lag[c]) if c in lag else i) for c, i in plan]
        changed = float(sum(c in lag for c, _ in plan))
        metrics = {**getattr(plan, "metrics", {}), "compensated": changed}
        return RoundPlan(out, metrics)

    def aggregate_fit(
        self,
        rnd: int,
        vector: np.ndarray,
        state: StrategyState,
        updates: Sequence[ClientUpdate],
    ) -> tuple[np.ndarray, StrategyState, dict[str, float]]:
        comp: Any = state["compensation"]
        loss, acc = comp["loss"].copy(), comp["acc"].copy()
        for u in updates:
            for key, arr in (("train_loss", loss), ("train_accuracy", acc)):
                v = u.metrics.get(key)
                if v is None or not np.isfinite(v):
                    continue
                old = arr[u.client_id]
                arr[u.client_id] = v if np.isnan(old) else self.decay * old + (1 - self.decay) * v
        new, inner_state, metrics = self.inner.aggregate_fit(rnd, vector, state["inner"], updates)  # type: ignore[arg-type]
        return new, {"inner": inner_state, "compensation": {"loss": loss, "acc": acc}}, metrics
