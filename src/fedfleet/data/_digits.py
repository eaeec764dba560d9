"""scikit-learn's bundled 8x8 digits: a tiny real image task that needs no download.

1,797 grey-scale images of handwritten digits (UCI "Optical Recognition of Handwritten Digits",
Alpaydin & Kaynak 1998), 8x8 pixels with values 0-16, 10 classes. Small enough that a whole
federated run takes seconds, which makes it the default dataset for examples and tests.
"""

from __future__ import annotations

import numpy as np

from fedfleet._cache import cached_arrays
from fedfleet.data._base import ArrayDataset, TaskData
from fedfleet.errors import DatasetError

__all__ = ["load_digits"]


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> TaskData:
    """Load the digits as a task: x float32 ``[N, 1, 8, 8]`` in ``[0, 1]``, y int64 in ``0..9``.

    The server test set is a stratified split (every class keeps its share in train and test),
    drawn from ``seed``; both sides keep the original sample order.

    Args:
        test_fraction: share of the 1,797 images held out as the server's test set, in (0, 1).
        seed: seed of the train/test split.

    Examples:
        >>> task = load_digits(test_fraction=0.2, seed=0)
        >>> len(task.train), len(task.test), task.input_shape
        (1437, 360, (1, 8, 8))
    """
    if not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"digits: test_fraction must be in (0, 1), got {test_fraction}")
    split = cached_arrays(
        f"digits-v1-{test_fraction!r}-{seed}",
        lambda: _split(test_fraction, seed),
        ("x_train", "y_train", "x_test", "y_test"),
    )
    return TaskData(
        name="digits",
        train=ArrayDataset(split["x_train"], split["y_train"]),
        test=ArrayDataset(split["x_test"], split["y_test"]),
        num_classes=10,
        input_shape=(1, 8, 8),
    )


def _split(test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """The digits and their stratified split, from scikit-learn (kept in the data cache: see
    :mod:`fedfleet._cache`)."""
    # imported here, not at module level: scikit-learn (and the SciPy and pandas it pulls in)
    # is ~2 s of a process's start-up that only a first digits load needs
    from sklearn.datasets import load_digits as _sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = _sklearn_digits()
    x = (np.asarray(bunch.data, dtype=np.float64) / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(y)), test_size=test_fraction, random_state=seed, stratify=y
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    return {
        "x_train": x[train_idx],
        "y_train": y[train_idx],
        "x_test": x[test_idx],
        "y_test": y[test_idx],
    }
