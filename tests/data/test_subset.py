"""Subset: a client's samples read lazily out of the pool, and what trainers make of them."""

import numpy as np
import pytest
from torch import nn

from fedfleet.client import FitInstructions, VmapTrainer
from fedfleet.data import ArrayDataset, Subset
from fedfleet.sim import Federation


def _pool(n=50):
    rng = np.random.default_rng(0)
    return ArrayDataset(rng.normal(size=(n, 6)).astype(np.float32), rng.integers(0, 3, n))


def test_a_subset_holds_the_same_samples_as_a_copy():
    pool = _pool()
    idx = np.array([7, 3, 3, 40, 0])
    lazy, copy = Subset(pool, idx), pool.subset(idx)
    assert len(lazy) == 5 and lazy.sample_shape == (6,)
    batches = np.array([[4, 0, -1], [2, 1, 3]])  # -1: padding reads the last sample
    for got, want in zip(lazy.rows(batches), copy.rows(batches), strict=True):
        assert np.array_equal(got, want)
    assert np.array_equal(lazy.x, copy.x) and np.array_equal(lazy.y, copy.y)
    assert lazy.x is lazy.x  # gathered once
    with pytest.raises(AttributeError):
        lazy.x = copy.x  # read-only, like ArrayDataset's


def test_indices_out_of_the_pool_fail_when_the_samples_are_read():
    lazy = Subset(_pool(10), np.array([2, 10]))
    assert len(lazy) == 2
    with pytest.raises(IndexError):
        _ = lazy.x
    with pytest.raises(IndexError):
        lazy.rows(np.array([0, 1]))


def test_a_federations_clients_train_the_same_from_subsets_as_from_copies():
    pool = _pool(60)
    parts = [np.arange(i, 60, 4) for i in range(4)]
    fed = Federation(_task(pool), parts)
    lazy = [fed.train_data(c) for c in range(4)]
    assert all(isinstance(d, Subset) for d in lazy)
    copies = [pool.subset(p) for p in parts]
    trainer = VmapTrainer(lambda: nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)))
    w0 = trainer.init_vector(0)
    instr = [FitInstructions(epochs=2, batch_size=4, lr=0.1)] * 4
    a = trainer.fit_cohort(w0, lazy, instr, [1, 2, 3, 4])
    a = [r.vector.copy() for r in a]
    b = trainer.fit_cohort(w0, copies, instr, [1, 2, 3, 4])
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, y.vector)


def _task(pool):
    from fedfleet.data import TaskData

    return TaskData("pool", pool, pool, 3, (6,))


def test_subset_indices_may_be_empty_lists_or_masks_but_not_floats():
    pool = _pool(10)
    assert len(Subset(pool, [])) == 0 and Subset(pool, []).x.shape == (0, 6)
    mask = np.zeros(10, dtype=bool)
    mask[[2, 5]] = True
    assert np.array_equal(Subset(pool, mask).x, pool.x[[2, 5]])
    with pytest.raises(TypeError, match="must be integers or a boolean mask, got float64"):
        Subset(pool, np.array([1.0, 2.0]))
