"""The two containers every dataset loader returns and every partitioner reads."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ArrayDataset", "Subset", "TaskData"]


class ArrayDataset:
    """Samples held as arrays: ``x`` float32 ``[N, *input_shape]``, ``y`` int64 ``[N]``.

    Read-only attributes; :class:`Subset` is the same samples gathered out of a larger set
    only when they are read.
    """

    __slots__ = ("_x", "_y")

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
        self._x: np.ndarray | None = x
        self._y: np.ndarray | None = y

    @property
    def x(self) -> np.ndarray:
        assert self._x is not None
        return self._x

    @property
    def y(self) -> np.ndarray:
        assert self._y is not None
        return self._y

    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} samples of shape {self.sample_shape})"

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample (``x.shape[1:]``)."""
        return tuple(self.x.shape[1:])

    def rows(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(x[index], y[index])`` for an integer index array of any shape."""
        return self.x[index], self.y[index]

    def subset(self, indices: np.ndarray) -> ArrayDataset:
        """The samples at ``indices`` (a copy, in that order)."""
        return ArrayDataset(self.x[indices], self.y[indices])


class Subset(ArrayDataset):
    """``source``'s samples at ``indices``, gathered the first time ``x`` or ``y`` is read.

    A federation hands its clients' data out this way: a trainer that stages its own batches
    (:class:`fedfleet.client.VmapTrainer`) reads them straight out of ``source`` with
    :meth:`rows`, so a round of 100 clients does not copy their 19 MB of samples twice
    (workload b, ``bench/README.md``); any other reader gets the copy
    :meth:`ArrayDataset.subset` would give.
    """

    __slots__ = ("indices", "source")

    def __init__(self, source: ArrayDataset, indices: np.ndarray) -> None:
        idx = np.asarray(indices)
        if idx.dtype == np.bool_:
            idx = np.flatnonzero(idx)
        elif idx.size == 0:
            idx = idx.astype(np.intp)
        elif idx.dtype.kind not in "iu":
            raise TypeError(f"Subset indices must be integers or a boolean mask, got {idx.dtype}")
        if idx.ndim != 1:
            raise ValueError(f"Subset indices must be 1-D, got shape {idx.shape}")
        self.source = source
        self.indices = idx
        self._x = self._y = None

    @property
    def x(self) -> np.ndarray:
        if self._x is None:  # through rows: a TokenWindows source builds only these windows
            self._x = self.source.rows(self.indices)[0]
        return self._x

    @property
    def y(self) -> np.ndarray:
        if self._y is None:
            self._y = self.source.y[self.indices]
        return self._y

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.source.sample_shape

    def rows(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._x is not None and self._y is not None:
            return self._x[index], self._y[index]
        return self.source.rows(self.indices[index])


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
