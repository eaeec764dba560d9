"""Partitioners: exact covers and sizes, the skew each one promises, seeding, argument checks."""

from __future__ import annotations

import numpy as np
import pytest

from fedfleet.data import ArrayDataset, TaskData
from fedfleet.data import partition as P
from fedfleet.errors import DatasetError

# 10 balanced classes of 120, shuffled so that label order is not sample order.
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 120))


def assert_disjoint_cover(parts: list[np.ndarray], n: int) -> None:
    """Sorted int64 parts that together hold every index in 0..n-1 exactly once."""
    for p in parts:
        assert p.dtype == np.int64
        assert np.all(np.diff(p) > 0)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(n))


def max_class_fraction(parts: list[np.ndarray]) -> float:
    counts = P.label_distribution(LABELS, parts, 10)
    return float((counts.max(axis=1) / counts.sum(axis=1)).mean())


def test_iid_sizes_and_cover() -> None:
    parts = P.iid(1003, 10, seed=0)
    assert_disjoint_cover(parts, 1003)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) == 1 and sum(sizes) == 1003
    assert [len(p) for p in P.iid(5, 5, seed=0)] == [1] * 5
    # Shuffled: the first client's samples are not just 0..100.
    assert not np.array_equal(parts[0], np.arange(len(parts[0])))


def test_seeding() -> None:
    for make in (
        lambda s: P.iid(500, 7, seed=s),
        lambda s: P.dirichlet(LABELS, 7, 0.5, seed=s),
        lambda s: P.shards(LABELS, 7, 2, seed=s),
        lambda s: P.quantity_skew(500, 7, seed=s),
    ):
        a, b, c = make(1), make(1), make(2)
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
        assert any(len(x) != len(z) or not np.array_equal(x, z) for x, z in zip(a, c, strict=True))


def test_dirichlet_cover_min_size_and_skew() -> None:
    skewed = P.dirichlet(LABELS, 10, alpha=0.05, seed=0, min_size=5)
    flat = P.dirichlet(LABELS, 10, alpha=1000.0, seed=0)
    for parts in (skewed, flat):
        assert_disjoint_cover(parts, len(LABELS))
    assert min(len(p) for p in skewed) >= 5
    # alpha=0.05 leaves most clients with one dominant class; alpha=1000 is nearly uniform (0.1).
    assert max_class_fraction(skewed) > 0.6
    assert max_class_fraction(flat) < 0.15


def test_dirichlet_gives_up_with_advice() -> None:
    with pytest.raises(DatasetError, match=r"lower num_clients or min_size, or raise alpha"):
        P.dirichlet(LABELS, 100, alpha=0.001, seed=0, min_size=10)


def test_shards_exact_sizes_and_at_most_two_classes() -> None:
    # 1200 samples, 20 clients x 2 shards = 40 shards of 30; 120 per class = 4 whole shards, so
    # no shard straddles two labels.
    parts = P.shards(LABELS, 20, 2, seed=0)
    assert_disjoint_cover(parts, len(LABELS))
    assert all(len(p) == 60 for p in parts)
    counts = P.label_distribution(LABELS, parts, 10)
    assert (counts > 0).sum(axis=1).max() <= 2
    assert np.all(counts % 30 == 0)  # whole shards


def test_shards_drop_the_remainder() -> None:
    labels = LABELS[:1003]
    parts = P.shards(labels, 10, 3, seed=0)  # 30 shards of 33, 13 samples left out
    assert all(len(p) == 99 for p in parts)
    flat = np.concatenate(parts)
    assert len(np.unique(flat)) == 990 and flat.max() < 1003


def test_quantity_skew_sizes() -> None:
    for dist in ("lognormal", "power-law"):
        parts = P.quantity_skew(1000, 20, seed=0, distribution=dist, sigma=1.5, min_size=3)
        assert_disjoint_cover(parts, 1000)
        sizes = np.array([len(p) for p in parts])
        assert sizes.sum() == 1000 and sizes.min() >= 3
        assert sizes.max() > 3 * np.median(sizes)  # heavy-tailed, not near-equal
    # Larger sigma spreads the sizes further.
    cv = [np.std([len(p) for p in P.quantity_skew(5000, 50, seed=0, sigma=s)]) for s in (0.1, 2.0)]
    assert cv[1] > 5 * cv[0]
    with pytest.raises(DatasetError, match=r"unknown distribution 'zipf'"):
        P.quantity_skew(100, 5, seed=0, distribution="zipf")


def test_natural() -> None:
    data = ArrayDataset(np.zeros((4, 2), np.float32), np.zeros(4, np.int64))
    users = (np.array([0, 2]), np.array([1, 3]))
    task = TaskData("t", data, data, 2, (2,), natural_train=users, natural_test=users)
    assert [p.tolist() for p in P.natural(task)] == [[0, 2], [1, 3]]
    with pytest.raises(DatasetError, match=r"'plain' has no natural users.*iid, dirichlet"):
        P.natural(TaskData("plain", data, data, 2, (2,)))


def test_train_test_split_clients_sizes() -> None:
    parts = [np.arange(0, 10), np.arange(10, 13), np.array([13]), np.arange(14, 19)]
    train, test = P.train_test_split_clients(parts, 0.3, seed=0)
    # round half up of 0.3 * n: 3, 1 (0.9), 0 (one sample stays in training), 2 (1.5)
    assert [len(t) for t in test] == [3, 1, 0, 2]
    for part, tr, te in zip(parts, train, test, strict=True):
        assert len(np.intersect1d(tr, te)) == 0
        np.testing.assert_array_equal(np.sort(np.concatenate([tr, te])), part)
    _, test = P.train_test_split_clients([np.arange(2)], 0.9, seed=0)
    assert len(test[0]) == 1  # never the last training sample


def test_label_distribution() -> None:
    labels = np.array([0, 1, 1, 2, 2, 2])
    counts = P.label_distribution(labels, [np.array([0, 1]), np.array([2, 3, 4, 5])], 4)
    np.testing.assert_array_equal(counts, [[1, 1, 0, 0], [0, 1, 3, 0]])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: P.iid(10, 0, seed=0), r"num_clients must be in 1\.\.10.*got 0"),
        (lambda: P.iid(10, 11, seed=0), r"num_clients must be in 1\.\.10.*got 11"),
        (lambda: P.dirichlet(LABELS, 5, 0.0, seed=0), r"alpha must be > 0, got 0.0"),
        (lambda: P.dirichlet(LABELS, 5, 1.0, 0, min_size=300), r"min_size must be in 0\.\.240"),
        (lambda: P.dirichlet(LABELS * 0.5, 5, 1.0, seed=0), r"1-D array of integers"),
        (lambda: P.shards(LABELS, 5, 0, seed=0), r"shards_per_client must be >= 1, got 0"),
        (lambda: P.shards(LABELS, 700, 2, seed=0), r"1400 shards for 1200 samples"),
        (lambda: P.quantity_skew(100, 5, seed=0, sigma=0), r"sigma must be > 0, got 0"),
        (lambda: P.train_test_split_clients([], 1.0, seed=0), r"test_fraction .*got 1.0"),
        (lambda: P.label_distribution(LABELS, [], 5), r"label 9 is out of range 0\.\.4"),
    ],
)
def test_invalid_arguments(call, match: str) -> None:
    with pytest.raises(DatasetError, match=match):
        call()
