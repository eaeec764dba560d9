"""SecureBoost's trained model, one side per party, and how the parties score rows with it.

The guest keeps the trees (its own cuts as feature and bin, a host's as that host's split id),
its bin edges and the base score; each host keeps only its lookup table, split id -> (feature,
threshold). Scoring (:func:`prediction_programs`): the guest walks every tree a level at a time
and asks each host for the direction of the rows that sit at its nodes (split id, row); the
host answers left or right and learns which rows reach its nodes, nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from fedfleet._codec import Message
from fedfleet.errors import DatasetError
from fedfleet.vertical._boost import PlainTree, to_bins
from fedfleet.vertical._channel import Channel
from fedfleet.vertical._party import PartyData

__all__ = [
    "Program",
    "SecureBoostHostModel",
    "SecureBoostModel",
    "depth_of",
    "guest_predict",
    "host_predict",
    "prediction_programs",
]

Program = Callable[[Channel], Any]


@dataclass(frozen=True)
class SecureBoostModel:
    """The guest's side of the model: trees whose ``party`` is 0 for the guest's own cuts
    (``feature``, ``bin`` in its columns) and k for ``hosts[k-1]`` (``feature`` is that host's
    split id), the guest's bin edges, the base score and the training rows' raw scores."""

    trees: tuple[PlainTree, ...]
    hosts: tuple[str, ...]
    edges: tuple[np.ndarray, ...]
    base: float
    objective: str
    train_score: np.ndarray
    metrics: dict[str, Any] = field(default_factory=dict)
    """``loss`` (the training rows' after each tree: log loss, or mean squared error),
    ``train_rows``, ``test_rows`` and, on the held-out rows, ``accuracy`` and ``auc``
    (binary) or ``rmse`` and ``r2`` (regression)."""


@dataclass(frozen=True)
class SecureBoostHostModel:
    """A host's lookup table: split id -> (its feature, threshold); rows with x <= threshold
    go left."""

    feature: tuple[int, ...]
    threshold: tuple[float, ...]


def prediction_programs(
    model: SecureBoostModel,
    host_models: Mapping[str, SecureBoostHostModel],
    parties: Mapping[str, PartyData],
    *,
    guest: str = "guest",
) -> dict[str, Program]:
    """Programs that score aligned rows: the guest's returns the raw scores (logits, or values
    for regression), each host answers the directions of its nodes."""
    depth = max((depth_of(t) for t in model.trees), default=0)
    programs: dict[str, Program] = {guest: partial(guest_predict, model, parties[guest], depth)}
    for h in model.hosts:
        programs[h] = partial(host_predict, host_models[h], parties[h], depth, guest)
    return programs


def depth_of(t: PlainTree) -> int:
    def d(i: int) -> int:
        return 0 if t.party[i] == -1 else 1 + max(d(t.left[i]), d(t.right[i]))

    return d(0)


def guest_predict(m: SecureBoostModel, data: PartyData, depth: int, ch: Channel) -> np.ndarray:
    binned = to_bins(data.x, list(m.edges))
    n = len(data.ids)
    node = np.zeros((len(m.trees), n), dtype=np.int64)
    for _ in range(depth):
        asks: list[list[tuple[int, int, int]]] = [[] for _ in m.hosts]  # (tree, row, split id)
        for t, tree in enumerate(m.trees):
            for r in range(n):
                k = node[t, r]
                p = tree.party[k]
                if p == 0:
                    go = binned[r, tree.feature[k]] <= tree.bin[k]
                    node[t, r] = tree.left[k] if go else tree.right[k]
                elif p > 0:
                    asks[p - 1].append((t, r, tree.feature[k]))
        for hname, ask in zip(m.hosts, asks, strict=True):
            q = np.array(ask, dtype=np.int64).reshape(-1, 3)
            ch.send(hname, Message("sb-ask", {}, [q[:, 1:].copy()], ["row, split id"]))
            go_left = ch.recv(hname, "sb-go").arrays[0]
            for (t, r, _), go in zip(ask, go_left.tolist(), strict=True):
                k = node[t, r]
                node[t, r] = m.trees[t].left[k] if go else m.trees[t].right[k]
    score = np.full(n, m.base)
    for t, tree in enumerate(m.trees):
        score = score + np.asarray(tree.weight)[node[t]]
    return score


def host_predict(
    m: SecureBoostHostModel, data: PartyData, depth: int, guest: str, ch: Channel
) -> None:
    feature, threshold = np.asarray(m.feature, dtype=np.int64), np.asarray(m.threshold)
    for _ in range(depth):
        q = ch.recv(guest, "sb-ask").arrays[0]
        rows, ids = q[:, 0], q[:, 1]
        if len(ids) and (ids.min() < 0 or ids.max() >= len(feature)):
            raise DatasetError(f"the guest asked host {data.name} for an unknown split id")
        go = data.x[rows, feature[ids]] <= threshold[ids]
        ch.send(guest, Message("sb-go", {}, [go.astype(bool)], ["goes left"]))
