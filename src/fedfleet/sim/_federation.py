"""A federation: which samples each client holds, for training and for held-out evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fedfleet.data import ArrayDataset, Subset, TaskData

__all__ = ["ClientPopulation", "Federation"]


class ClientPopulation(Protocol):
    """What an engine needs of a set of clients: the task (its test set is the server's), the
    ids, and each client's data on demand. :class:`Federation` holds index arrays into one
    task; :class:`fedfleet.sim.SyntheticPopulation` generates clients lazily."""

    @property
    def task(self) -> TaskData: ...

    @property
    def num_clients(self) -> int: ...

    @property
    def client_ids(self) -> Sequence[int]: ...

    def num_samples(self, cid: int) -> int:
        """Client ``cid``'s training-set size (cheap: no data is built)."""
        ...

    def train_data(self, cid: int) -> ArrayDataset: ...

    def test_data(self, cid: int) -> ArrayDataset | None: ...


@dataclass(frozen=True)
class Federation:
    """Clients ``0..N-1`` over one task.

    Attributes:
        task: the dataset; its ``test`` set is the server's centralized test set.
        train_parts: client k trains on ``task.train[train_parts[k]]`` (index arrays; an
            index out of the pool's range is an IndexError when the client's data is read).
        test_parts: client k's held-out samples for federated evaluation (optional), indices
            into ``task.train`` (a per-client split) or, when ``test_from_task_test`` is set,
            into ``task.test`` (natural per-user test data such as LEAF's).
    """

    task: TaskData
    train_parts: Sequence[np.ndarray]
    test_parts: Sequence[np.ndarray] | None = None
    test_from_task_test: bool = False

    def __post_init__(self) -> None:
        if self.test_parts is not None and len(self.test_parts) != len(self.train_parts):
            raise ValueError(
                f"{len(self.test_parts)} test parts for {len(self.train_parts)} clients"
            )

    @property
    def num_clients(self) -> int:
        return len(self.train_parts)

    @property
    def client_ids(self) -> list[int]:
        return list(range(self.num_clients))

    def num_samples(self, cid: int) -> int:
        return len(self.train_parts[cid])

    def train_data(self, cid: int) -> ArrayDataset:
        """Client ``cid``'s training samples: a :class:`~fedfleet.data.Subset` of the
        task's pool, gathered when first read (trainers that stage batches read the pool)."""
        return Subset(self.task.train, self.train_parts[cid])

    def test_data(self, cid: int) -> ArrayDataset | None:
        if self.test_parts is None:
            return None
        source = self.task.test if self.test_from_task_test else self.task.train
        return source.subset(self.test_parts[cid])
