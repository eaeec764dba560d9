"""SecureBoost's per-tree checkpoints: each party's state after some trees as named arrays.

A :class:`~fedfleet.vertical._progress.PartyProgress` stores flat arrays (safetensors), so the
state is laid out flat:

- the guest: its trees so far, their nodes concatenated (``tree/<field>``, ``tree/nodes`` the
  node count of each), the training rows' raw scores after them (``score``, exactly, so the next
  tree's gradients are the uninterrupted run's), its train loss after each tree (``loss``) and
  the hosts' split ids it has learnt (``split_ids``: rows of host, feature, bin, id);
- a host: its lookup table so far as the (feature, bin) of each split id in id order; the
  thresholds follow from its bin edges, which it recomputes from its data.

The guest's Paillier key is not kept: a resumed run draws a fresh one, which changes no bit of
the model (every sum the guest decrypts is an exact integer).
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import pairwise

import numpy as np

from fedfleet.vertical._boost import PlainTree
from fedfleet.vertical._channel import PartyError

__all__ = ["GuestState", "guest_arrays", "guest_state", "host_arrays", "host_table"]

_INT_FIELDS = ("party", "feature", "bin", "left", "right")

# (host, feature, bin) -> the host's split id
SplitIds = dict[tuple[int, int, int], int]
# trees so far, the training rows' scores, the loss after each tree, the hosts' split ids
GuestState = tuple[list[PlainTree], np.ndarray, list[float], SplitIds]


def guest_arrays(
    trees: list[PlainTree], score: np.ndarray, losses: list[float], split_id: SplitIds
) -> dict[str, np.ndarray]:
    """The guest's state after ``len(trees)`` trees."""
    out: dict[str, np.ndarray] = {
        f"tree/{name}": np.array([v for t in trees for v in getattr(t, name)], dtype=np.int64)
        for name in _INT_FIELDS
    }
    out["tree/weight"] = np.array([v for t in trees for v in t.weight], dtype=np.float64)
    out["tree/nodes"] = np.array([len(t.party) for t in trees], dtype=np.int64)
    ids = [[*key, v] for key, v in split_id.items()]
    out["split_ids"] = np.array(ids, dtype=np.int64).reshape(-1, 4)
    out["score"] = np.asarray(score, dtype=np.float64)
    out["loss"] = np.array(losses, dtype=np.float64)
    return out


def guest_state(saved: Mapping[str, np.ndarray], done: int, rows: int) -> GuestState:
    """The guest's state from its checkpoint of ``done`` trees over ``rows`` training rows."""
    nodes = saved["tree/nodes"].tolist()
    if len(nodes) != done or saved["score"].shape != (rows,) or len(saved["loss"]) != done:
        raise PartyError(
            f"the guest's checkpoint holds {len(nodes)} trees and {saved['score'].shape[0]} "
            f"scores, expected {done} trees over {rows} rows"
        )
    bounds = np.cumsum([0, *nodes])
    column = {name: saved[f"tree/{name}"].tolist() for name in (*_INT_FIELDS, "weight")}
    trees = [
        PlainTree(**{name: tuple(values[lo:hi]) for name, values in column.items()})
        for lo, hi in pairwise(bounds.tolist())
    ]
    split_id = {(int(h), int(f), int(b)): int(i) for h, f, b, i in saved["split_ids"].tolist()}
    return trees, saved["score"].copy(), saved["loss"].tolist(), split_id


def host_arrays(table_f: list[int], table_b: list[int]) -> dict[str, np.ndarray]:
    """A host's lookup table so far: split id i cuts its feature ``table_f[i]`` at bin
    ``table_b[i]``."""
    return {
        "feature": np.array(table_f, dtype=np.int64),
        "bin": np.array(table_b, dtype=np.int64),
    }


def host_table(
    saved: Mapping[str, np.ndarray], edges: list[np.ndarray], party: str
) -> tuple[list[int], list[int]]:
    """A host's (features, bins) of its split ids from its checkpoint, checked against its
    bin edges (``party``: the host, for the error)."""
    features, bins = saved["feature"].tolist(), saved["bin"].tolist()
    for f, b in zip(features, bins, strict=True):
        if not (0 <= f < len(edges) and 0 <= b < len(edges[f])):
            raise PartyError(
                f"host {party}'s checkpoint holds a cut {f}/{b} its data has no bin edge for; "
                "was its data changed? Start without --resume"
            )
    return features, bins
