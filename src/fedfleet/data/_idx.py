"""MNIST and Fashion-MNIST from their original IDX files, parsed with NumPy alone.

IDX (LeCun et al., "Gradient-based learning applied to document recognition", 1998) is a
big-endian header followed by raw values: a 4-byte magic number ``0x0000TTDD`` (``TT`` the value
type, 0x08 = unsigned byte; ``DD`` the number of dimensions), one 4-byte size per dimension, then
the values in row-major order. Images are magic 2051 (``0x00000803``: count, rows, cols) and
labels magic 2049 (``0x00000801``: count). Fashion-MNIST (Xiao et al. 2017) uses the same files.

Each file may be gzip-compressed (``name.gz``, as distributed) or plain (``name``).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from fedfleet.data._base import ArrayDataset, TaskData
from fedfleet.errors import DatasetError

__all__ = ["IDX_FILES", "NORMALIZATION", "fashion_mnist", "load_idx", "mnist"]

IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
"""Split -> (images file, labels file), without the optional ``.gz`` suffix."""

NORMALIZATION: dict[str, tuple[float, float]] = {
    "mnist": (0.1307, 0.3081),
    "fashion-mnist": (0.2860, 0.3530),
}
"""Per-dataset (mean, std) of the train pixels scaled to [0, 1]; inputs become (x - mean) / std."""

_IMAGES_MAGIC = 2051
_LABELS_MAGIC = 2049
_NUM_CLASSES = 10
_EXPECTED = ", ".join(f"{name}[.gz]" for pair in IDX_FILES.values() for name in pair)


def load_idx(directory: str | Path, name: str = "mnist") -> TaskData:
    """Load MNIST or Fashion-MNIST from a directory holding the four IDX files.

    Pixels are scaled to [0, 1], then standardised with the dataset's usual constants
    (:data:`NORMALIZATION`), so x is float32 ``[N, 1, rows, cols]`` (``[N, 1, 28, 28]``) and y
    int64 in ``0..9``. The train pool is the 60,000 train images, the server test set the
    10,000 t10k images.

    Args:
        directory: folder with ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
            ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each plain or ``.gz``.
        name: ``"mnist"`` or ``"fashion-mnist"``; picks the normalisation constants.

    Raises:
        DatasetError: unknown name, missing directory or file, a corrupt gzip stream, a wrong
            magic number, a truncated file, or image and label counts that differ.

    Examples:
        >>> task = load_idx("../shared/data/mnist", "mnist")  # doctest: +SKIP
        >>> len(task.train), len(task.test), task.input_shape  # doctest: +SKIP
        (60000, 10000, (1, 28, 28))
    """
    if name not in NORMALIZATION:
        raise DatasetError(
            f"unknown IDX dataset name {name!r}; valid: {', '.join(sorted(NORMALIZATION))}"
        )
    root = Path(directory)
    if not root.is_dir():
        raise DatasetError(
            f"{name}: directory {root} does not exist; it should hold {_EXPECTED}. "
            "Download the four files there, or point data.path (or FEDFLEET_DATA) at them."
        )
    mean, std = NORMALIZATION[name]
    # A 256-entry table maps every possible byte to its float32 value exactly once.
    table = ((np.arange(256, dtype=np.float64) / 255.0 - mean) / std).astype(np.float32)
    splits = {}
    for split, (images_name, labels_name) in IDX_FILES.items():
        images_path = _find(root, images_name, name)
        labels_path = _find(root, labels_name, name)
        images = _read_idx(images_path, _IMAGES_MAGIC)
        labels = _read_idx(labels_path, _LABELS_MAGIC)
        if len(images) != len(labels):
            raise DatasetError(
                f"{images_path} holds {len(images)} images but {labels_path} holds "
                f"{len(labels)} labels; the two files come from different downloads or one is "
                "damaged: download both again"
            )
        if labels.size and int(labels.max()) >= _NUM_CLASSES:
            raise DatasetError(
                f"{labels_path}: label {int(labels.max())} is out of range 0..{_NUM_CLASSES - 1}; "
                f"is this a {name} labels file?"
            )
        x = table[images][:, None, :, :]
        splits[split] = ArrayDataset(x, labels.astype(np.int64))
    train_shape, test_shape = splits["train"].x.shape[1:], splits["test"].x.shape[1:]
    if train_shape != test_shape:
        raise DatasetError(
            f"{name}: train images are {train_shape[1:]} but test images are {test_shape[1:]} "
            f"in {root}; the files come from different datasets"
        )
    return TaskData(
        name=name,
        train=splits["train"],
        test=splits["test"],
        num_classes=_NUM_CLASSES,
        input_shape=tuple(int(d) for d in train_shape),
    )


def mnist(directory: str | Path) -> TaskData:
    """MNIST (LeCun et al. 1998) from its IDX files; see :func:`load_idx`."""
    return load_idx(directory, "mnist")


def fashion_mnist(directory: str | Path) -> TaskData:
    """Fashion-MNIST (Xiao et al. 2017) from its IDX files; see :func:`load_idx`."""
    return load_idx(directory, "fashion-mnist")


def _find(root: Path, stem: str, name: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    present = sorted(p.name for p in root.iterdir())
    shown = ", ".join(present[:10]) + (", ..." if len(present) > 10 else "") or "nothing"
    raise DatasetError(
        f"{name}: missing file {root / stem}[.gz]; the directory holds {shown}. "
        f"It should hold {_EXPECTED}."
    )


def _read_bytes(path: Path) -> bytes:
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(
            f"{path} is not a valid gzip file ({e}); the download is damaged or incomplete: "
            "download it again (or store it uncompressed, without the .gz suffix)"
        ) from e


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """The uint8 array stored in one IDX file whose magic number must be ``magic``."""
    data = _read_bytes(path)
    kind = {_IMAGES_MAGIC: "images", _LABELS_MAGIC: "labels"}
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < 4:
        raise DatasetError(f"{path} is truncated: {len(data)} bytes, too short for an IDX header")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        hint = ""
        if found in kind:
            hint = f"; is this a {kind[found]} file? Check that the file names are not swapped"
        elif data[:2] == b"\x1f\x8b":
            hint = "; it looks gzip-compressed: give it the .gz suffix"
        raise DatasetError(
            f"{path}: magic number {found} (0x{found:08x}), expected {magic} (0x{magic:08x}, "
            f"{kind[magic]}){hint}"
        )
    if len(data) < header:
        raise DatasetError(
            f"{path} is truncated: its header needs {header} bytes, found {len(data)}; "
            "download it again"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64))
    found_bytes = len(data) - header
    if found_bytes != expected:
        what = " * ".join(str(d) for d in dims)
        problem = "is truncated" if found_bytes < expected else "has trailing bytes"
        raise DatasetError(
            f"{path} {problem}: its header says {what} = {expected} bytes of data, found "
            f"{found_bytes}; download it again"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)
