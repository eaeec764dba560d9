"""LEAF datasets (FEMNIST and other numeric ones) from LEAF's per-user JSON files.

LEAF (Caldas et al., "LEAF: A Benchmark for Federated Settings", 2018) ships each dataset as
``train/*.json`` and ``test/*.json``, every file holding::

    {"users": [user ids], "num_samples": [n per user],
     "user_data": {user: {"x": [[floats], ...], "y": [ints, ...]}}}

The users are the natural clients (for FEMNIST, the writers), and LEAF's ``-t sample`` split puts
part of every user's samples in ``test/``. This module keeps that structure: ``natural_train[i]``
and ``natural_test[i]`` are user i's samples in the concatenated train and test pools.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from fedfleet.data._base import ArrayDataset, TaskData
from fedfleet.errors import DatasetError

__all__ = ["FEMNIST_CLASSES", "femnist", "load_leaf"]

FEMNIST_CLASSES = 62
"""FEMNIST labels: 0-9 digits, 10-35 upper-case A-Z, 36-61 lower-case a-z."""


def load_leaf(
    directory: str | Path,
    name: str = "leaf",
    image_shape: tuple[int, ...] | None = None,
    *,
    num_classes: int | None = None,
) -> TaskData:
    """Load a numeric LEAF dataset with its users as natural clients.

    All ``*.json`` files of ``train/`` and of ``test/`` are read in file-name order and their
    users concatenated in that order; the users of ``train/`` define the clients, and each gets
    its samples in ``test/`` by user id (an empty index array when it has none there). A user
    found only in ``test/`` has no training data, so it is not a client: its samples stay in the
    server's ``test`` pool without a ``natural_test`` entry.

    Args:
        directory: folder with ``train/`` and ``test/`` subfolders of LEAF JSON files.
        name: the task's name.
        image_shape: reshape each x row to this shape (e.g. ``(1, 28, 28)``); by default x is
            ``[N, d]``.
        num_classes: the label count; by default ``max(label) + 1`` over train and test.

    Raises:
        DatasetError: missing folders, no JSON files, malformed JSON, missing keys, a user whose
            x and y lengths differ, non-numeric x (text datasets such as Shakespeare), labels
            that are not non-negative integers below ``num_classes``.

    Examples:
        >>> task = load_leaf("../shared/data/femnist", "femnist", (1, 28, 28))  # doctest: +SKIP
        >>> len(task.user_ids), len(task.train), len(task.test)  # doctest: +SKIP
        (105, 14708, 1685)
    """
    root = Path(directory)
    if not root.is_dir():
        raise DatasetError(
            f"{name}: directory {root} does not exist; it should hold LEAF's train/ and test/ "
            "folders of JSON files. Point data.path (or FEDFLEET_DATA) at it."
        )
    train_users, train = _read_split(root / "train", name)
    test_users, test = _read_split(root / "test", name)
    dims = {x.shape[1] for x, _ in (train, test) if len(x)}
    if len(dims) > 1:
        raise DatasetError(
            f"{name}: train samples have {train[0].shape[1]} features but test samples have "
            f"{test[0].shape[1]}, in {root}; the folders come from different datasets"
        )
    dim = dims.pop() if dims else 0
    x_train, x_test = (x.reshape(len(x), dim) for x, _ in (train, test))
    input_shape: tuple[int, ...] = (dim,)
    if image_shape is not None:
        image_shape = tuple(int(d) for d in image_shape)
        if math.prod(image_shape) != dim:
            raise DatasetError(
                f"{name}: cannot reshape samples of {dim} values to image_shape {image_shape} "
                f"({math.prod(image_shape)} values); pass a shape whose product is {dim}"
            )
        input_shape = image_shape
        x_train = x_train.reshape(len(x_train), *image_shape)
        x_test = x_test.reshape(len(x_test), *image_shape)
    y_train, y_test = train[1], test[1]
    top = max((int(y.max()) for y in (y_train, y_test) if len(y)), default=-1)
    if num_classes is None:
        num_classes = top + 1
    elif top >= num_classes:
        raise DatasetError(
            f"{name}: label {top} found in {root}, but the dataset has {num_classes} classes "
            f"(0..{num_classes - 1}); is this the right dataset?"
        )
    empty = np.zeros(0, dtype=np.int64)
    user_ids = tuple(train_users)
    return TaskData(
        name=name,
        train=ArrayDataset(x_train, y_train),
        test=ArrayDataset(x_test, y_test),
        num_classes=num_classes,
        input_shape=input_shape,
        natural_train=tuple(train_users[u] for u in user_ids),
        natural_test=tuple(test_users.get(u, empty) for u in user_ids),
        user_ids=user_ids,
    )


def femnist(directory: str | Path) -> TaskData:
    """FEMNIST (LEAF): 28x28 handwritten characters, 62 classes, one client per writer.

    x is float32 ``[N, 1, 28, 28]`` with LEAF's values in [0, 1], where 1.0 is the white
    background (the inverse of MNIST's polarity); they are kept as LEAF wrote them.
    """
    return load_leaf(directory, "femnist", (1, 28, 28), num_classes=FEMNIST_CLASSES)


def _read_split(folder: Path, name: str) -> tuple[dict[str, np.ndarray], tuple[np.ndarray, ...]]:
    """Users -> sample indices, and the concatenated (x, y), of one folder of LEAF files."""
    if not folder.is_dir():
        raise DatasetError(
            f"{name}: missing folder {folder}; a LEAF dataset directory holds train/ and test/ "
            "folders of JSON files (LEAF's preprocessing writes them to data/train, data/test)"
        )
    files = sorted(folder.glob("*.json"))
    if not files:
        raise DatasetError(f"{name}: no *.json files in {folder}; is this a LEAF data folder?")
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    owners: list[str] = []
    for path in files:
        for user, x, y in _read_file(path):
            xs.append(x)
            ys.append(y)
            owners.append(user)
    sizes = np.array([len(y) for y in ys], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    users: dict[str, list[np.ndarray]] = {}
    for user, start, size in zip(owners, starts[:-1], sizes, strict=True):
        users.setdefault(user, []).append(np.arange(start, start + size, dtype=np.int64))
    dims = {x.shape[1] for x in xs if len(x)}
    if len(dims) > 1:
        raise DatasetError(
            f"{name}: samples in {folder} have different lengths {sorted(dims)}; every x row of "
            "a dataset must have the same number of values"
        )
    dim = dims.pop() if dims else 0
    x_all = np.concatenate([x.reshape(len(x), dim) for x in xs]).astype(np.float32, copy=False)
    y_all = np.concatenate(ys).astype(np.int64, copy=False)
    return {u: np.concatenate(parts) for u, parts in users.items()}, (x_all, y_all)


def _read_file(path: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(user, x, y) for every user of one LEAF JSON file, in the file's user order."""
    try:
        with path.open("rb") as f:
            doc = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(
            f"{path} is not valid JSON ({e}); re-run LEAF's preprocessing or download it again"
        ) from e
    if not isinstance(doc, dict):
        raise DatasetError(f"{path}: expected a JSON object with 'users' and 'user_data'")
    for key in ("users", "user_data"):
        if key not in doc:
            raise DatasetError(
                f"{path}: missing key {key!r}; a LEAF file holds 'users', 'num_samples' and "
                "'user_data'"
            )
    users, user_data = doc["users"], doc["user_data"]
    counts = doc.get("num_samples")
    if counts is not None and len(counts) != len(users):
        raise DatasetError(
            f"{path}: 'num_samples' has {len(counts)} entries for {len(users)} users"
        )
    out = []
    for i, user in enumerate(users):
        if user not in user_data:
            raise DatasetError(f"{path}: user {user!r} is listed in 'users' but not in 'user_data'")
        entry = user_data[user]
        for key in ("x", "y"):
            if key not in entry:
                raise DatasetError(f"{path}: user {user!r} has no {key!r} in 'user_data'")
        x, y = _as_x(entry["x"], user, path), _as_y(entry["y"], user, path)
        if len(x) != len(y):
            raise DatasetError(
                f"{path}: user {user!r} has {len(x)} samples in x but {len(y)} labels in y"
            )
        if counts is not None and counts[i] != len(y):
            raise DatasetError(
                f"{path}: user {user!r} has {len(y)} samples but 'num_samples' says {counts[i]}"
            )
        out.append((str(user), x, y))
    return out


def _as_x(rows: Any, user: str, path: Path) -> np.ndarray:
    if _has_text(rows):
        raise DatasetError(
            f"{path}: user {user!r} has text samples; text LEAF datasets (Shakespeare, Sent140) "
            "are not supported yet, only numeric ones such as FEMNIST"
        )
    try:
        x = np.asarray(rows, dtype=np.float32)
    except (ValueError, TypeError) as e:
        raise DatasetError(
            f"{path}: user {user!r} has x rows that are not equal-length lists of numbers ({e})"
        ) from e
    if x.ndim == 1 and len(x) == 0:
        return x.reshape(0, 0)
    if x.ndim != 2:
        raise DatasetError(
            f"{path}: user {user!r} has x of shape {x.shape}; expected a list of flat rows "
            "(samples x values)"
        )
    return x


def _as_y(labels: Any, user: str, path: Path) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim == 1 and len(y) == 0:
        return np.zeros(0, dtype=np.int64)
    if y.dtype.kind == "f" and np.all(np.mod(y, 1) == 0):
        y = y.astype(np.int64)  # some writers store labels as floats (3.0)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        what = "text" if y.dtype.kind in "US" else f"dtype {y.dtype}, shape {y.shape}"
        hint = "; text LEAF datasets are not supported yet" if y.dtype.kind in "US" else ""
        raise DatasetError(
            f"{path}: user {user!r} has labels y that are not integers ({what}){hint}"
        )
    if y.min() < 0:
        raise DatasetError(f"{path}: user {user!r} has a negative label {int(y.min())}")
    return y.astype(np.int64, copy=False)


def _has_text(rows: Any) -> bool:
    """Whether the first sample is (or contains) a string, as in Shakespeare or Sent140."""
    if isinstance(rows, str):
        return True
    if not isinstance(rows, list) or not rows:
        return False
    first = rows[0]
    return isinstance(first, str) or (
        isinstance(first, list) and any(isinstance(v, str) for v in first[:8])
    )
