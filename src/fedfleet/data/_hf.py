"""Datasets where users keep them: Hugging Face ``datasets`` saved to disk, Parquet, CSV, and image
folders, read with the ``datasets`` library (the ``hf`` extra) from local files only.

A table becomes a task by column names: ``features`` (numeric columns, stacked side by side, or
one image column, decoded to float32 ``[C, H, W]`` in ``[0, 1]``), ``label`` (integers, a
``ClassLabel``, or strings numbered in sorted order) and, optionally, ``client_id`` (each distinct
value is one natural client, for ``data.partition = 'natural'``). The server's test set is the
``test`` split when the data has one, else a seeded share of the rows (of every client's rows,
with ``client_id``, so each client also keeps held-out samples for federated evaluation).

``datasets`` does the reading (Arrow-backed, memory-mapped, the formats and folder layouts the
Hugging Face ecosystem uses: ``train``/``test`` in file or folder names become splits, class
subfolders become an image folder's labels), so this module only turns columns into arrays. No
hub access is made or needed: every source is a local path.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fedfleet.data._base import ArrayDataset, TaskData
from fedfleet.data.partition import train_test_split_clients
from fedfleet.errors import DatasetError

__all__ = ["FORMATS", "Format", "infer_format", "load_hf"]

Format = Literal["auto", "disk", "parquet", "csv", "imagefolder"]
FORMATS: tuple[str, ...] = ("disk", "parquet", "csv", "imagefolder")
"""What ``data.format`` may name besides 'auto'."""

_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
_SAVED_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")
"""Files ``save_to_disk`` writes: a folder holding one of them is read with ``load_from_disk``."""
_TEST_SPLITS = ("test", "validation")
"""The splits taken as the server's test set, in this order, when ``test_split`` is not given."""


def infer_format(path: str | Path) -> str:
    """Which reader ``path`` needs: 'disk' for a ``save_to_disk`` folder, else by the files in it
    ('parquet', 'csv' or 'imagefolder').

    Raises:
        DatasetError: the path does not exist, or holds none or several of those kinds.
    """
    p = Path(path)
    if not p.exists():
        raise DatasetError(
            f"hf dataset: data.path {str(p)!r} does not exist; point it at a save_to_disk "
            "folder, a Parquet or CSV file (or a folder of them), or an image folder"
        )
    if p.is_file():
        if p.suffix.lower() in _SUFFIXES:
            return _SUFFIXES[p.suffix.lower()]
        raise DatasetError(
            f"hf dataset: cannot tell the format of {str(p)!r} from its suffix; set "
            f"data.format to one of {', '.join(FORMATS)}"
        )
    if any((p / m).is_file() for m in _SAVED_MARKERS):
        return "disk"
    found = set()
    for f in p.rglob("*"):
        suffix = f.suffix.lower()
        if suffix in _SUFFIXES:
            found.add(_SUFFIXES[suffix])
        elif suffix in _IMAGE_SUFFIXES:
            found.add("imagefolder")
    if len(found) == 1:
        return found.pop()
    what = f"both {' and '.join(sorted(found))} files" if found else "no dataset files"
    raise DatasetError(
        f"hf dataset: {str(p)!r} holds {what} (looked for a save_to_disk folder, *.parquet, "
        f"*.csv and images); set data.format to one of {', '.join(FORMATS)}"
    )


def load_hf(
    path: str | Path,
    *,
    format: Format = "auto",
    features: str | Sequence[str] | None = None,
    label: str = "label",
    client_id: str | None = None,
    train_split: str | None = None,
    test_split: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> TaskData:
    """Load a local dataset with Hugging Face ``datasets`` as a task.

    Args:
        path: a ``save_to_disk`` folder; a Parquet or CSV file, or a folder of them (files named
            ``train*``/``test*`` become those splits); or an image folder (class subfolders,
            optionally under ``train/`` and ``test/``).
        format: 'disk', 'parquet', 'csv', 'imagefolder', or 'auto' (:func:`infer_format`).
        features: the input column(s); by default every column but ``label`` and ``client_id``.
            Numeric columns (numbers or equal-length lists of numbers) are stacked side by side
            (one column keeps its own shape); an image column must be the only one.
        label: the class column.
        client_id: the column naming each row's client (natural partition), if any.
        train_split: the training split; by default 'train', or the only split there is.
        test_split: the server's test split; by default 'test' or 'validation' if present,
            else ``test_fraction`` of the training rows (of each client's, with ``client_id``).
        test_fraction: share held out when there is no test split, in (0, 1).
        seed: seed of that hold-out.

    Raises:
        DatasetError: a missing path or split, a column that is not there (the message lists
            those that are), a feature column that is not numeric, images of different sizes,
            labels that are not classes, missing values; ``datasets`` not installed.

    Example:
        >>> task = load_hf("clients.parquet", features=["x0", "x1"], label="y")  # doctest: +SKIP
    """
    if format == "auto":
        fmt = infer_format(path)
    elif format in FORMATS:
        fmt = format
        if not Path(path).exists():
            infer_format(path)  # raises the missing-path error
    else:
        raise DatasetError(
            f"hf dataset: unknown format {format!r}; valid: auto, {', '.join(FORMATS)}"
        )
    if not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"hf dataset: test_fraction must be in (0, 1), got {test_fraction}")
    splits = _read(Path(path), fmt)
    where = f"hf dataset {str(path)!r}"
    train_name = _pick_train(splits, train_split, where)
    test_name = _pick_test(splits, train_name, test_split, where)
    train = splits[train_name]
    test = splits[test_name] if test_name is not None else None
    columns = list(train.column_names)
    for key, col in (("label", label), ("client_id", client_id)):
        if col is not None:
            _require(col, columns, key, f"{where} split {train_name!r}")
    feature_cols = _feature_columns(features, columns, label, client_id, where, train_name)
    if test is not None:
        for key, cols in (("features", feature_cols), ("label", [label])):
            for col in cols:
                _require(col, list(test.column_names), key, f"{where} split {test_name!r}")

    train_where = f"{where} split {train_name!r}"
    x = _features(train, feature_cols, train_where)
    ids = None if client_id is None else _column(train, client_id)
    if test is None:
        y, _, classes = _labels(train.features[label], _column(train, label), None, label, where)
        pool, held, natural_train, natural_test, user_ids = _hold_out(
            x, y, ids, test_fraction, seed, where
        )
    else:
        x_test = _features(test, feature_cols, f"{where} split {test_name!r}")
        if x_test.shape[1:] != x.shape[1:]:
            raise DatasetError(
                f"{where}: samples of split {test_name!r} have shape {x_test.shape[1:]}, those "
                f"of {train_name!r} {x.shape[1:]}; both splits must hold the same features"
            )
        y, y_test, classes = _labels(
            train.features[label], _column(train, label), _column(test, label), label, where
        )
        test_ids = None
        if client_id is not None and client_id in test.column_names:
            test_ids = _column(test, client_id)
        natural_train, natural_test, user_ids = _natural_with_test(ids, test_ids, where)
        assert y_test is not None
        pool, held = ArrayDataset(x, y), ArrayDataset(x_test, y_test)
    name = f"hf:{Path(path).name or path}"
    return TaskData(
        name=name,
        train=pool,
        test=held,
        num_classes=classes,
        input_shape=tuple(pool.x.shape[1:]),
        natural_train=natural_train,
        natural_test=natural_test,
        user_ids=user_ids,
    )


# -- reading --------------------------------------------------------------------------------


def _read(path: Path, fmt: str) -> dict[str, Any]:
    """The dataset's splits by name (a saved single ``Dataset`` is the split 'train')."""
    try:
        import datasets
    except ImportError:
        raise DatasetError(
            "data.name = 'hf' reads datasets with Hugging Face datasets, which is not "
            "installed: pip install 'fedfleet[hf]'"
        ) from None
    try:
        if fmt == "disk":
            loaded = datasets.load_from_disk(str(path))
        elif path.is_file():
            loaded = datasets.load_dataset(fmt, data_files={"train": str(path)})
        else:
            loaded = datasets.load_dataset(fmt, data_dir=str(path))
    except Exception as e:  # datasets raises many types (FileNotFoundError, ArrowInvalid, ...)
        raise DatasetError(
            f"hf dataset: datasets could not read {str(path)!r} as {fmt} ({type(e).__name__}: {e})"
        ) from e
    if isinstance(loaded, datasets.Dataset):
        return {"train": loaded}
    return dict(loaded)


def _pick_train(splits: dict[str, Any], split: str | None, where: str) -> str:
    names = list(splits)
    if split is not None:
        if split not in splits:
            raise DatasetError(
                f"{where} has no split {split!r} (data.train_split); its splits: {', '.join(names)}"
            )
        return split
    if "train" in splits:
        return "train"
    if len(names) == 1:
        return names[0]
    raise DatasetError(
        f"{where} has splits {', '.join(names)} and none is 'train'; set data.train_split to the "
        "one to train on"
    )


def _pick_test(
    splits: dict[str, Any], train: str, test_split: str | None, where: str
) -> str | None:
    if test_split is not None:
        if test_split not in splits:
            raise DatasetError(
                f"{where} has no split {test_split!r} (data.test_split); its splits: "
                f"{', '.join(splits)}"
            )
        if test_split == train:
            raise DatasetError(
                f"{where}: data.test_split is {test_split!r}, the training split too; pick "
                "another split, or leave it out to hold out data.test_fraction of the rows"
            )
        return test_split
    return next((s for s in _TEST_SPLITS if s in splits and s != train), None)


def _require(col: str, columns: list[str], key: str, where: str) -> None:
    if col not in columns:
        raise DatasetError(
            f"{where} has no column {col!r} (data.{key}); its columns: {', '.join(columns)}"
        )


def _feature_columns(
    features: str | Sequence[str] | None,
    columns: list[str],
    label: str,
    client_id: str | None,
    where: str,
    split: str,
) -> list[str]:
    if features is None:
        cols = [c for c in columns if c not in (label, client_id)]
        if not cols:
            raise DatasetError(
                f"{where} has no column besides the label and client id ({', '.join(columns)}); "
                "set data.features"
            )
        return cols
    cols = [features] if isinstance(features, str) else list(features)
    if not cols:
        raise DatasetError(f"{where}: data.features is empty; name the input column(s)")
    for col in cols:
        _require(col, columns, "features", f"{where} split {split!r}")
        if col in (label, client_id):
            raise DatasetError(
                f"{where}: column {col!r} is both a feature and the label or client id; "
                "leave it out of data.features"
            )
    return cols


def _column(ds: Any, col: str) -> np.ndarray:
    """A column as one NumPy array (numbers stay numbers; text becomes a str array)."""
    return np.asarray(ds.with_format("numpy")[col])


# -- features -------------------------------------------------------------------------------


def _features(ds: Any, cols: list[str], where: str) -> np.ndarray:
    """The feature columns as float32 ``[N, ...]``: one image column ``[N, C, H, W]``, one
    numeric column in its own shape (``[N]`` becomes ``[N, 1]``), several side by side."""
    import datasets

    images = [c for c in cols if isinstance(ds.features[c], datasets.Image)]
    if images:
        if len(cols) > 1:
            raise DatasetError(
                f"{where}: image column {images[0]!r} must be the only feature, but data.features "
                f"is {cols}; train on the image alone"
            )
        return _images(ds, images[0], where)
    arrays = [_numeric(ds, c, where) for c in cols]
    if len(arrays) == 1:
        x = arrays[0]
        return x.reshape(len(x), 1) if x.ndim == 1 else x
    return np.concatenate([a.reshape(len(a), -1) for a in arrays], axis=1)


def _numeric(ds: Any, col: str, where: str) -> np.ndarray:
    try:
        values = _column(ds, col)
    except (ValueError, TypeError) as e:  # ragged lists do not form one array
        raise DatasetError(
            f"{where}: feature column {col!r} ({ds.features[col]}) is not one array of numbers "
            f"({e}); features must be numbers or equal-length lists of numbers"
        ) from None
    kind = values.dtype.kind
    if kind not in "biuf":
        what = "text" if kind in "US" else f"{ds.features[col]} values"
        raise DatasetError(
            f"{where}: feature column {col!r} holds {what}, not numbers; features must be "
            "numeric columns (numbers or equal-length lists of numbers) or one image column; "
            "encode it as numbers first, or leave it out of data.features"
        )
    x = values.astype(np.float32)
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if bad.any():
        raise DatasetError(
            f"{where}: feature column {col!r} has {int(bad.sum())} rows with missing or "
            f"non-finite values (first: row {int(np.flatnonzero(bad)[0])}); fill or drop them"
        )
    return x


def _images(ds: Any, col: str, where: str) -> np.ndarray:
    """Decoded images as float32 ``[N, C, H, W]`` in ``[0, 1]``: one channel if every image is
    grey-scale, else three (grey images repeated, others converted to RGB)."""
    out: list[np.ndarray] = []
    size = None
    for i, img in enumerate(ds[col]):
        if img is None:
            raise DatasetError(f"{where}: image column {col!r} has no image in row {i}")
        grey = img.mode in ("1", "L")
        a = np.asarray(img.convert("L" if grey else "RGB"), dtype=np.float32) / 255.0
        if size is None:
            size = a.shape[:2]
        elif a.shape[:2] != size:
            raise DatasetError(
                f"{where}: image column {col!r} holds images of different sizes ({size[1]}x"
                f"{size[0]} in row 0, {a.shape[1]}x{a.shape[0]} in row {i}); resize them to "
                "one size first"
            )
        out.append(a[None] if grey else a.transpose(2, 0, 1))
    if not out:
        raise DatasetError(f"{where}: image column {col!r} is empty")
    channels = max(a.shape[0] for a in out)
    return np.stack([np.repeat(a, channels // a.shape[0], axis=0) for a in out])


# -- labels ---------------------------------------------------------------------------------


def _labels(
    feature: Any, train: np.ndarray, test: np.ndarray | None, col: str, where: str
) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Labels as int64 class indices (train, test) and the number of classes."""
    import datasets

    parts = [train] if test is None else [train, test]
    if isinstance(feature, datasets.ClassLabel):
        return (
            train.astype(np.int64),
            None if test is None else test.astype(np.int64),
            int(feature.num_classes),
        )
    kinds = {p.dtype.kind for p in parts}
    if kinds <= set("US"):
        names = np.unique(np.concatenate(parts))
        coded = [np.searchsorted(names, p).astype(np.int64) for p in parts]
        return coded[0], coded[1] if test is not None else None, len(names)
    if not kinds <= set("biuf"):
        raise DatasetError(
            f"{where}: label column {col!r} holds {feature} values; a label is a class: "
            "integers 0..C-1, a ClassLabel, or strings"
        )
    for p in parts:
        if p.dtype.kind == "f" and not (np.isfinite(p).all() and (np.mod(p, 1) == 0).all()):
            raise DatasetError(
                f"{where}: label column {col!r} holds non-integer or missing numbers; a label "
                "is a class: integers 0..C-1, a ClassLabel, or strings"
            )
    ints = [p.astype(np.int64) for p in parts]
    low = min(int(p.min()) for p in ints if len(p))
    if low < 0:
        raise DatasetError(
            f"{where}: label column {col!r} has a negative label {low}; labels are 0..C-1"
        )
    classes = max(int(p.max()) for p in ints if len(p)) + 1
    return ints[0], ints[1] if test is not None else None, classes


# -- clients and the server's test set ------------------------------------------------------


def _client_codes(ids: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """The distinct client ids (sorted) and each row's index among them."""
    if ids.dtype.kind not in "biuUS":
        ids = np.asarray([str(v) for v in ids])
    if ids.dtype.kind == "f" or len(ids) == 0:
        raise DatasetError(f"{where}: the client id column is empty or holds floats")
    return np.unique(ids, return_inverse=True)


def _natural_with_test(
    ids: np.ndarray | None, test_ids: np.ndarray | None, where: str
) -> tuple[tuple[np.ndarray, ...] | None, tuple[np.ndarray, ...] | None, tuple[str, ...] | None]:
    """Each client's rows of the training split and of the test split (by the same id)."""
    if ids is None:
        return None, None, None
    names, codes = _client_codes(ids, where)
    train = tuple(np.flatnonzero(codes == k) for k in range(len(names)))
    if test_ids is None:
        empty = np.zeros(0, dtype=np.int64)
        test = tuple(empty for _ in names)
    else:
        if names.dtype.kind in "US" and test_ids.dtype.kind not in "US":
            test_ids = np.asarray([str(v) for v in test_ids])
        test = tuple(np.flatnonzero(test_ids == n) for n in names)
    return train, test, tuple(str(n) for n in names)


def _hold_out(
    x: np.ndarray, y: np.ndarray, ids: np.ndarray | None, fraction: float, seed: int, where: str
) -> tuple[
    ArrayDataset,
    ArrayDataset,
    tuple[np.ndarray, ...] | None,
    tuple[np.ndarray, ...] | None,
    tuple[str, ...] | None,
]:
    """``fraction`` of the rows (of each client's rows) as the server's test set, seeded."""
    if ids is None:
        names = None
        groups = [np.arange(len(y))]
    else:
        names, codes = _client_codes(ids, where)
        groups = [np.flatnonzero(codes == k) for k in range(len(names))]
    train_parts, test_parts = train_test_split_clients(groups, fraction, seed=seed)
    train_idx, test_idx = np.concatenate(train_parts), np.concatenate(test_parts)
    if len(test_idx) == 0:
        raise DatasetError(
            f"{where}: holding out test_fraction = {fraction} of {len(y)} rows leaves no test "
            "samples; raise data.test_fraction or add a test split"
        )
    pool, held = ArrayDataset(x[train_idx], y[train_idx]), ArrayDataset(x[test_idx], y[test_idx])
    if names is None:
        return pool, held, None, None, None
    natural_train = tuple(_ranges([len(p) for p in train_parts]))
    natural_test = tuple(_ranges([len(p) for p in test_parts]))
    return pool, held, natural_train, natural_test, tuple(str(n) for n in names)


def _ranges(sizes: list[int]) -> list[np.ndarray]:
    """Consecutive index ranges of these sizes: where each group's rows lie in the pool."""
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return [np.arange(a, b, dtype=np.int64) for a, b in itertools.pairwise(starts)]
