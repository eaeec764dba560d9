"""Atomic file writes (a crash at any moment leaves the old file or the new one, never a mix),
and reading back a safetensors file with JSON metadata.

The data go to ``NAME.tmp`` beside the target, which is fsynced, renamed over the target
(``os.replace`` is atomic on POSIX) and the directory fsynced so the rename itself is durable.
Run directories, server checkpoints and clients' state files all write through here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_safetensors", "read_safetensors"]

Hook = Callable[[Path], None]


def atomic_write(path: str | Path, write: Hook, *, before_commit: Hook | None = None) -> Path:
    """Have ``write(tmp)`` create the temporary file, then commit it to ``path``; returns it.

    ``before_commit(tmp)`` runs after the temporary file is complete and synced and before the
    rename: the crash tests use it to stop a server between the two.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    if before_commit is not None:
        before_commit(tmp)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """``data`` written to ``path`` atomically."""

    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    return atomic_write(path, write)


def atomic_write_safetensors(
    path: str | Path,
    arrays: Mapping[str, np.ndarray],
    metadata: dict[str, str],
    *,
    before_commit: Hook | None = None,
) -> Path:
    """``arrays`` as one safetensors file (no pickle) with ``metadata``, written atomically and
    streamed to disk (no in-memory copy of a large model)."""

    def write(tmp: Path) -> None:
        save_file(dict(arrays), str(tmp), metadata=metadata)

    return atomic_write(path, write, before_commit=before_commit)


def read_safetensors(path: str | Path, meta_key: str) -> tuple[Any, dict[str, np.ndarray]]:
    """The JSON metadata under ``meta_key`` and every array of a safetensors file. Raises
    ``ValueError`` with the reason when the file is missing, torn or not ours; callers add what
    to do about it."""
    try:
        with safe_open(str(path), framework="np") as f:
            meta = json.loads((f.metadata() or {})[meta_key])
            return meta, {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as e:
        raise ValueError(str(e) or type(e).__name__) from None
