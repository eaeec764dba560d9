"""The parties of a vertical federation and the tables they hold.

In vertical FL the parties hold *different columns* of the *same people*: the guest holds the
labels (and maybe some features), each host holds more features; an arbiter, where a protocol
needs one, holds keys and no data. Record ids identify people across parties; they never travel
in the clear (private set intersection aligns them, :mod:`fedfleet.vertical._psi`).

A protocol is a dataclass of its settings (like a strategy) whose :meth:`VerticalProtocol.
programs` gives one program per party; :func:`fedfleet.vertical.run_parties` runs them over a
network.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fedfleet.errors import DatasetError
from fedfleet.vertical._channel import Channel

__all__ = ["PartyData", "VerticalProtocol", "align", "split_columns"]


@dataclass(frozen=True)
class PartyData:
    """One party's table.

    Attributes:
        name: the party (``"guest"``, ``"host-0"``, ...).
        ids: one record id per row (strings; they never leave the party in the clear).
        x: the party's features, ``(rows, columns)`` float64 (zero columns for a guest with
            labels only).
        y: the labels (the guest only; None at hosts).
        feature_names: one name per column of ``x``.
    """

    name: str
    ids: np.ndarray
    x: np.ndarray
    y: np.ndarray | None = None
    feature_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.x.ndim != 2 or len(self.x) != len(self.ids):
            raise DatasetError(
                f"party {self.name}: x must be (rows, columns) with one row per id, got "
                f"{self.x.shape} for {len(self.ids)} ids"
            )
        if self.y is not None and len(self.y) != len(self.ids):
            raise DatasetError(f"party {self.name}: {len(self.y)} labels for {len(self.ids)} ids")
        if len(set(self.ids.tolist())) != len(self.ids):
            raise DatasetError(f"party {self.name}: record ids must be unique")

    @classmethod
    def dataless(cls, name: str) -> PartyData:
        """The empty table of a party that holds no data (an arbiter, a key holder): its
        program still takes a :class:`PartyData`, so every party is started the same way."""
        return cls(name, np.array([], dtype=str), np.zeros((0, 0)))

    def rows(self, ids: Sequence[str]) -> PartyData:
        """The rows of ``ids``, in that order (after alignment)."""
        index = {v: i for i, v in enumerate(self.ids.tolist())}
        try:
            take = np.array([index[i] for i in ids], dtype=np.int64)
        except KeyError as err:
            raise DatasetError(f"party {self.name} has no record {err.args[0]!r}") from None
        return self.subset(take)

    def subset(self, positions: np.ndarray) -> PartyData:
        """The rows at ``positions``, in that order (as ``ArrayDataset.subset`` does)."""
        return PartyData(
            self.name,
            self.ids[positions],
            self.x[positions],
            None if self.y is None else self.y[positions],
            self.feature_names,
        )


class VerticalProtocol(Protocol):
    """A vertical protocol: its settings, and one program per party."""

    def programs(self, parties: Mapping[str, PartyData]) -> dict[str, Callable[[Channel], Any]]:
        """The program each party runs (parties without data, such as an arbiter, are named by
        the protocol itself)."""
        ...


def split_columns(
    x: np.ndarray,
    y: np.ndarray,
    columns: Sequence[Sequence[int]],
    *,
    ids: Sequence[str] | None = None,
    names: Sequence[str] | None = None,
    feature_names: Sequence[str] | None = None,
) -> list[PartyData]:
    """A centralised table split column-wise: party k holds ``columns[k]``; the first party is
    the guest and also holds ``y``. Ids default to ``"r0", "r1", ...``."""
    n = len(x)
    ids_arr = np.array(ids if ids is not None else [f"r{i}" for i in range(n)])
    names = (
        list(names)
        if names is not None
        else ["guest"] + [f"host-{k}" for k in range(len(columns) - 1)]
    )
    fnames = list(feature_names or [f"x{j}" for j in range(x.shape[1])])
    used = [c for cols in columns for c in cols]
    if len(set(used)) != len(used):
        raise DatasetError("a column is given to two parties")
    return [
        PartyData(
            name,
            ids_arr.copy(),
            np.asarray(x[:, list(cols)], dtype=np.float64),
            np.asarray(y) if k == 0 else None,
            tuple(fnames[c] for c in cols),
        )
        for k, (name, cols) in enumerate(zip(names, columns, strict=True))
    ]


def align(parties: Sequence[PartyData], ids: Sequence[str]) -> list[PartyData]:
    """Every party's rows of the intersection ``ids`` (as PSI returns it), in one order."""
    return [p.rows(ids) for p in parties]
