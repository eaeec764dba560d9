"""Partitioners: split a train pool across clients, IID or with a chosen kind of skew.

Every partitioner takes an explicit ``seed`` and returns ``list[np.ndarray]``: one int64 array of
sample indices per client, sorted ascending, the arrays disjoint. The skews follow the standard
benchmarks (Li et al., "Federated Learning on Non-IID Data Silos: An Experimental Study", 2022):

- :func:`iid`: uniform random, near-equal sizes.
- :func:`dirichlet`: label skew, class proportions ~ Dir(alpha) (Hsu et al. 2019).
- :func:`shards`: pathological label skew, a few label-sorted shards each (McMahan et al. 2017).
- :func:`quantity_skew`: IID labels, lognormal or power-law client sizes.
- :func:`natural`: the dataset's own users (LEAF writers, Synthetic devices).

Examples:
    >>> labels = np.repeat(np.arange(10), 100)
    >>> parts = dirichlet(labels, num_clients=20, alpha=0.5, seed=0)
    >>> int(label_distribution(labels, parts, 10).sum())
    1000
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedfleet.data._base import TaskData
from fedfleet.errors import DatasetError

__all__ = [
    "dirichlet",
    "iid",
    "label_distribution",
    "natural",
    "quantity_skew",
    "shards",
    "train_test_split_clients",
]

_MAX_DIRICHLET_TRIES = 1000


def iid(num_samples: int, num_clients: int, seed: int) -> list[np.ndarray]:
    """A seeded random permutation cut into ``num_clients`` parts whose sizes differ by at most 1.

    Examples:
        >>> [len(p) for p in iid(10, 3, seed=0)]
        [4, 3, 3]
    """
    _check_clients(num_clients, num_samples)
    rng = np.random.default_rng(seed)
    return _sorted(np.array_split(rng.permutation(num_samples), num_clients))


def dirichlet(
    labels: np.ndarray, num_clients: int, alpha: float, seed: int, min_size: int = 1
) -> list[np.ndarray]:
    """Label skew: each class is split across clients by proportions drawn from Dir(alpha).

    For every class c, p_c ~ Dir(alpha * 1_K) over the K clients and client k receives the
    fraction p_c[k] of c's samples (Hsu et al., "Measuring the Effects of Non-Identical Data
    Distribution for Federated Visual Classification", 2019; Yurochkin et al. 2019). Small alpha
    gives each client few classes; large alpha approaches IID. The draw is repeated until every
    client holds at least ``min_size`` samples. Every sample is assigned exactly once.

    Args:
        labels: int labels ``[N]`` of the train pool.
        num_clients: number of clients K, in ``1..N``.
        alpha: Dirichlet concentration, > 0.
        seed: seed of the draws.
        min_size: smallest client size accepted, in ``0..N // K``.

    Raises:
        DatasetError: invalid arguments, or no draw with every client at ``min_size`` or more
            within 1000 tries (lower num_clients or min_size, or raise alpha).
    """
    labels = _check_labels(labels)
    n = len(labels)
    _check_clients(num_clients, n)
    if not alpha > 0:
        raise DatasetError(f"dirichlet: alpha must be > 0, got {alpha}")
    if not 0 <= min_size <= n // num_clients:
        raise DatasetError(
            f"dirichlet: min_size must be in 0..{n // num_clients} "
            f"({n} samples over {num_clients} clients), got {min_size}"
        )
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    class_sizes = np.array([len(m) for m in by_class], dtype=np.int64)[:, None]
    for _ in range(_MAX_DIRICHLET_TRIES):
        p = rng.dirichlet(np.full(num_clients, alpha), size=len(by_class))  # [classes, clients]
        # Client k takes class c's samples between floor(n_c * cumsum(p_c)) at k-1 and at k;
        # the last bound is pinned to n_c so that rounding never drops a sample.
        bounds = np.minimum(np.floor(np.cumsum(p, axis=1) * class_sizes), class_sizes)
        bounds = np.concatenate([np.zeros_like(class_sizes), bounds[:, :-1], class_sizes], axis=1)
        bounds = bounds.astype(np.int64)
        if np.diff(bounds, axis=1).sum(axis=0).min() >= min_size:
            break
    else:
        raise DatasetError(
            f"dirichlet: no draw gave every one of {num_clients} clients at least {min_size} "
            f"samples in {_MAX_DIRICHLET_TRIES} tries (alpha={alpha}, {n} samples); lower "
            "num_clients or min_size, or raise alpha"
        )
    pieces: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for members, row in zip(by_class, bounds, strict=True):
        shuffled = rng.permutation(members)
        for k in range(num_clients):
            pieces[k].append(shuffled[row[k] : row[k + 1]])
    return _sorted([np.concatenate(ps) for ps in pieces])


def shards(
    labels: np.ndarray, num_clients: int, shards_per_client: int, seed: int
) -> list[np.ndarray]:
    """Pathological non-IID: label-sorted shards, ``shards_per_client`` random ones per client.

    McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data"
    (AISTATS 2017): sort by label, cut into ``num_clients * shards_per_client`` equal shards and
    give each client ``shards_per_client`` of them at random, so with 2 shards most clients see
    only 2 classes. When N is not a multiple of the shard count, ``N mod shards`` samples chosen
    at random are left out (no client holds them), so that every shard has the same size.
    """
    labels = _check_labels(labels)
    if shards_per_client < 1:
        raise DatasetError(f"shards: shards_per_client must be >= 1, got {shards_per_client}")
    _check_clients(num_clients, len(labels))
    num_shards = num_clients * shards_per_client
    size = len(labels) // num_shards
    if size == 0:
        raise DatasetError(
            f"shards: {num_clients} clients x {shards_per_client} shards = {num_shards} shards "
            f"for {len(labels)} samples; lower num_clients or shards_per_client to at most "
            f"{len(labels)} shards in all"
        )
    rng = np.random.default_rng(seed)
    kept = np.arange(len(labels))
    if len(labels) % num_shards:
        kept = np.sort(rng.choice(len(labels), num_shards * size, replace=False))
    order = kept[np.argsort(labels[kept], kind="stable")]
    cut = order.reshape(num_shards, size)
    owner = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    return _sorted([cut[row].ravel() for row in owner])


def quantity_skew(
    num_samples: int,
    num_clients: int,
    seed: int,
    distribution: str = "lognormal",
    sigma: float = 1.0,
    exponent: float = 1.5,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Quantity skew: client sizes from a heavy-tailed law, samples assigned IID.

    Weights w_k ~ lognormal(0, sigma) or, for ``"power-law"``, Pareto with tail index
    ``exponent`` (``P(w > t) = t^-exponent`` for t >= 1); client k gets ``min_size`` samples plus
    its share w_k / sum(w) of the rest (largest-remainder rounding, so the sizes sum to exactly
    ``num_samples``). The samples themselves are a random permutation, so labels stay IID.
    """
    _check_clients(num_clients, num_samples)
    if not 0 <= min_size <= num_samples // num_clients:
        raise DatasetError(
            f"quantity_skew: min_size must be in 0..{num_samples // num_clients} "
            f"({num_samples} samples over {num_clients} clients), got {min_size}"
        )
    rng = np.random.default_rng(seed)
    if distribution == "lognormal":
        if not sigma > 0:
            raise DatasetError(f"quantity_skew: sigma must be > 0, got {sigma}")
        weights = rng.lognormal(0.0, sigma, num_clients)
    elif distribution == "power-law":
        if not exponent > 0:
            raise DatasetError(f"quantity_skew: exponent must be > 0, got {exponent}")
        weights = rng.pareto(exponent, num_clients) + 1.0
    else:
        raise DatasetError(
            f"quantity_skew: unknown distribution {distribution!r}; valid: lognormal, power-law"
        )
    rest = num_samples - num_clients * min_size
    share = weights / weights.sum() * rest
    sizes = np.floor(share).astype(np.int64)
    # Largest remainders get the samples that flooring left over (ties: lowest client id).
    leftover = rest - int(sizes.sum())
    sizes[np.argsort(-(share - sizes), kind="stable")[:leftover]] += 1
    sizes += min_size
    perm = rng.permutation(num_samples)
    return _sorted(np.split(perm, np.cumsum(sizes)[:-1]))


def natural(task: TaskData) -> list[np.ndarray]:
    """The task's own users as clients: ``task.natural_train`` (LEAF writers, Synthetic devices).

    Raises:
        DatasetError: the task has no natural users (digits, MNIST, ...).
    """
    if task.natural_train is None:
        raise DatasetError(
            f"dataset {task.name!r} has no natural users, so the 'natural' partition does not "
            "apply; use iid, dirichlet, shards or quantity instead"
        )
    return [np.asarray(p, dtype=np.int64) for p in task.natural_train]


def train_test_split_clients(
    parts: Sequence[np.ndarray], test_fraction: float, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Hold out a random share of every client's samples for federated evaluation.

    Client k with n_k samples gives ``round(test_fraction * n_k)`` of them (rounded half up) to
    its test part, but never all of them: a client with at least one sample keeps at least one
    for training. Both returned lists are aligned with ``parts`` and sorted within each client.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise DatasetError(
            f"train_test_split_clients: test_fraction must be in [0, 1), got {test_fraction}"
        )
    rng = np.random.default_rng(seed)
    train, test = [], []
    for part in parts:
        part = np.asarray(part, dtype=np.int64)
        n = len(part)
        n_test = max(0, min(int(np.floor(test_fraction * n + 0.5)), n - 1))
        shuffled = rng.permutation(part)
        test.append(np.sort(shuffled[:n_test]))
        train.append(np.sort(shuffled[n_test:]))
    return train, test


def label_distribution(
    labels: np.ndarray, parts: Sequence[np.ndarray], num_classes: int
) -> np.ndarray:
    """Counts ``[clients, classes]``: entry (k, c) counts client k's samples of class c."""
    labels = _check_labels(labels)
    if len(labels) and int(labels.max()) >= num_classes:
        raise DatasetError(
            f"label_distribution: label {int(labels.max())} is out of range 0..{num_classes - 1}"
        )
    counts = np.zeros((len(parts), num_classes), dtype=np.int64)
    for k, part in enumerate(parts):
        counts[k] = np.bincount(labels[np.asarray(part, dtype=np.int64)], minlength=num_classes)
    return counts


def _check_clients(num_clients: int, num_samples: int) -> None:
    if not 1 <= num_clients <= num_samples:
        raise DatasetError(
            f"num_clients must be in 1..{num_samples} (the number of samples), got {num_clients}"
        )


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise DatasetError(
            f"labels must be a 1-D array of integers, got dtype {labels.dtype}, "
            f"shape {labels.shape}"
        )
    if labels.size and labels.min() < 0:
        raise DatasetError(f"labels must be >= 0, got {int(labels.min())}")
    return labels.astype(np.int64, copy=False)


def _sorted(parts: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
