"""A client's own data from a file: ``.npz`` (read with ``allow_pickle=False``) or
``.safetensors``, holding ``x`` (float32 ``[N, *input_shape]``) and ``y`` (integer labels
``[N]``). This is how a deployed client brings data that never leaves its machine."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

from fedfleet.data._base import ArrayDataset, TaskData
from fedfleet.errors import DatasetError

__all__ = ["load_arrays", "save_arrays"]


def save_arrays(path: str | Path, data: ArrayDataset) -> Path:
    """Write ``data`` as ``.npz`` or ``.safetensors`` (by the file's suffix)."""
    path = Path(path)
    x = np.ascontiguousarray(data.x, dtype=np.float32)
    y = np.ascontiguousarray(data.y, dtype=np.int64)
    if path.suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file({"x": x, "y": y}, str(path))
    else:
        np.savez(path, x=x, y=y)
    return path


def load_arrays(path: str | Path, task: TaskData | None = None) -> ArrayDataset:
    """Read a client's data file; with ``task``, check it fits the federation's model."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"client data file {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            arrays = load_file(str(path))
        else:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, SafetensorError) as e:
        raise DatasetError(
            f"cannot read client data file {str(path)!r} ({e}); expected .npz or .safetensors "
            "with arrays x and y"
        ) from None
    missing = {"x", "y"} - set(arrays)
    if missing:
        raise DatasetError(
            f"client data file {str(path)!r} lacks {', '.join(sorted(missing))}; it holds "
            f"{', '.join(sorted(arrays)) or 'nothing'}"
        )
    x, y = np.asarray(arrays["x"]), np.asarray(arrays["y"])
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1 or len(x) != len(y):
        raise DatasetError(
            f"client data file {str(path)!r}: y must be integer labels with one per row of x; "
            f"got x {x.shape}, y {y.shape} {y.dtype}"
        )
    data = ArrayDataset(x.astype(np.float32), y.astype(np.int64))
    if task is not None:
        if tuple(x.shape[1:]) != tuple(task.input_shape):
            raise DatasetError(
                f"client data file {str(path)!r} has samples of shape {tuple(x.shape[1:])}, but "
                f"the federation's model takes {tuple(task.input_shape)}"
            )
        if len(y) and (y.min() < 0 or y.max() >= task.num_classes):
            raise DatasetError(
                f"client data file {str(path)!r} has labels {int(y.min())}..{int(y.max())}, "
                f"outside 0..{task.num_classes - 1}"
            )
    return data
