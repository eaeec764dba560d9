"""A small on-disk cache of prepared arrays, so a process need not import what made them.

Loading a scikit-learn bundled dataset (digits, breast cancer) costs every process ~2 s of CPU
for imports alone (scikit-learn, SciPy, pandas), as much as importing torch: the CLI, each
network client, each process-pool and Ray worker, each vertical party pays it. The prepared
arrays are tiny, so they are kept as an ``.npz`` under the user's cache directory after the
first load and read back with ``allow_pickle=False``.

Where: ``$FEDFLEET_CACHE_DIR`` if set (empty: no cache), else ``$XDG_CACHE_HOME/fedfleet``, else
``~/.cache/fedfleet``. A file that cannot be read (torn by a crash, written by another
version) is computed again and replaced; a cache directory that cannot be written is skipped.
Writes go to a file of their own and are renamed into place, so processes that fill the same
entry at once each leave a whole file.
"""

from __future__ import annotations

import logging
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["cache_dir", "cached_arrays"]

log = logging.getLogger("fedfleet")


def cache_dir() -> Path | None:
    """Where prepared arrays are kept (None: caching is off)."""
    explicit = os.environ.get("FEDFLEET_CACHE_DIR")
    if explicit is not None:
        return Path(explicit) if explicit else None
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fedfleet"


def cached_arrays(
    key: str, compute: Callable[[], dict[str, np.ndarray]], expected: tuple[str, ...]
) -> dict[str, np.ndarray]:
    """The arrays ``compute()`` returns, from ``<cache>/<key>.npz`` when it holds ``expected``."""
    where = cache_dir()
    path = None if where is None else where / f"{key}.npz"
    if path is not None and path.exists():
        try:
            with np.load(path, allow_pickle=False) as f:
                if set(f.files) == set(expected):
                    return {name: f[name] for name in expected}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:  # torn or foreign
            log.debug("cache entry %s unreadable (%s); recomputing", path, err)
    arrays = compute()
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
            with os.fdopen(fd, "wb") as out:
                np.savez(out, **arrays)  # type: ignore[arg-type]
            os.replace(tmp, path)
        except OSError as err:  # a read-only home: run without the cache
            log.debug("cannot write cache entry %s: %s", path, err)
    return arrays
