"""The two containers every dataset loader returns and every partitioner reads."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ArrayDataset", "TaskData"]


@dataclass(frozen=True)
class ArrayDataset:
    """Samples held as arrays: ``x`` float32 ``[N, *input_shape]``, ``y`` int64 ``[N]``."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} samples but y has {len(self.y)}")

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, indices: np.ndarray) -> ArrayDataset:
        """The samples at ``indices`` (a copy, in that order)."""
        return ArrayDataset(self.x[indices], self.y[indices])


@dataclass(frozen=True)
class TaskData:
    """A learning task: a train pool the partitioners split, a server-side test set, and, for
    datasets with natural users (LEAF, Synthetic), each user's train and test indices.

    Attributes:
        name: short name, e.g. ``"digits"``.
        train: the pool that is split across clients.
        test: the server's held-out set for centralized evaluation.
        num_classes: number of labels; ``y`` takes values in ``[0, num_classes)``.
        input_shape: shape of one sample, e.g. ``(1, 28, 28)`` or ``(60,)``.
        natural_train: per-user index arrays into ``train`` (None when the data has no users).
        natural_test: per-user index arrays into ``test``, aligned with ``natural_train``.
        user_ids: the users' names, aligned with ``natural_train``.
    """

    name: str
    train: ArrayDataset
    test: ArrayDataset
    num_classes: int
    input_shape: tuple[int, ...]
    natural_train: tuple[np.ndarray, ...] | None = None
    natural_test: tuple[np.ndarray, ...] | None = None
    user_ids: tuple[str, ...] | None = None
