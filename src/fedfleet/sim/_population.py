"""Populations too large to hold: clients whose data are generated when they are sampled.

A :class:`SyntheticPopulation` registers any number of FedProx Synthetic(alpha, beta) devices
(Li et al. 2020) and builds a device's samples from ``(seed, client id)`` alone when the engine
asks for them, so memory grows with the cohort, not with the population: a million registered
clients cost nothing until they are picked. Client ids are a ``range``, which the samplers in
:mod:`fedfleet.strategies._sampling` draw from without materialising it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedfleet.data import ArrayDataset, TaskData
from fedfleet.data._synthetic import device_rng, synthetic_device
from fedfleet.errors import ConfigError

__all__ = ["SyntheticPopulation"]


@dataclass(frozen=True, kw_only=True)
class SyntheticPopulation:
    """``num_clients`` Synthetic(alpha, beta) devices, generated on demand.

    Attributes:
        num_clients: registered clients (ids ``0..num_clients-1``).
        alpha, beta, iid, dim, num_classes, seed: the Synthetic generator's parameters.
        max_samples: cap on a device's sample count (lognormal(4, 2) + 50 sizes have a long
            tail: a million devices include some with hundreds of thousands of samples).
        test_devices: the server's test set is the data of this many further devices (ids
            ``num_clients..``), users the federation never trains on.
    """

    num_clients: int
    alpha: float = 1.0
    beta: float = 1.0
    iid: bool = False
    dim: int = 60
    num_classes: int = 10
    seed: int = 0
    max_samples: int | None = None
    test_devices: int = 50
    task: TaskData = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.num_clients < 1:
            raise ConfigError(f"a population needs at least one client, got {self.num_clients}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError(f"max_samples must be >= 1, got {self.max_samples}")
        tests = [self._device(self.num_clients + i) for i in range(self.test_devices)]
        test = ArrayDataset(
            np.concatenate([d.x for d in tests]), np.concatenate([d.y for d in tests])
        )
        empty = ArrayDataset(np.zeros((0, self.dim), np.float32), np.zeros(0, np.int64))
        name = "synthetic-iid" if self.iid else f"synthetic({self.alpha},{self.beta})"
        task = TaskData(name, empty, test, self.num_classes, (self.dim,))
        object.__setattr__(self, "task", task)

    def _device(self, k: int) -> ArrayDataset:
        d = synthetic_device(
            k,
            alpha=self.alpha,
            beta=self.beta,
            iid=self.iid,
            dim=self.dim,
            num_classes=self.num_classes,
            seed=self.seed,
        )
        n = len(d.y) if self.max_samples is None else min(len(d.y), self.max_samples)
        return ArrayDataset(d.x[:n].astype(np.float32), d.y[:n].astype(np.int64))

    @property
    def client_ids(self) -> range:
        return range(self.num_clients)

    def num_samples(self, cid: int) -> int:
        # the device generator's first draw is its size (fedfleet.data._synthetic.device_rng)
        n = int(device_rng(self.seed, cid).lognormal(4.0, 2.0)) + 50
        return n if self.max_samples is None else min(n, self.max_samples)

    def train_data(self, cid: int) -> ArrayDataset:
        if not 0 <= cid < self.num_clients:
            raise ConfigError(f"client {cid} is not registered (ids 0..{self.num_clients - 1})")
        return self._device(cid)

    def test_data(self, cid: int) -> ArrayDataset | None:
        return None
