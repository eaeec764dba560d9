"""Which rows of one matrix a list of vectors is: how a round's deltas are read without stacking.

The engine and the cohort trainers hand vectors out as rows of one ``[K, P]`` array; aggregation
(:func:`fedfleet.strategies.weighted_mean`) and the engine's in-place deltas read that array
directly when they can tell the vectors are its rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["rows_of"]


def rows_of(vectors: Sequence[Any]) -> tuple[np.ndarray, list[int]] | None:
    """``(base, rows)`` when every vector is a whole row of one C-contiguous 2-D array
    ``base`` (vector ``i`` is ``base[rows[i]]``); None otherwise (no vectors, a copy, a
    strided or partial row, rows of different arrays)."""
    if not vectors:
        return None
    base = getattr(vectors[0], "base", None)
    if not isinstance(base, np.ndarray) or base.ndim != 2 or not base.flags.c_contiguous:
        return None
    pitch, origin = base.strides[0], base.ctypes.data
    rows: list[int] = []
    for v in vectors:
        if (
            not isinstance(v, np.ndarray)
            or v.base is not base
            or v.dtype != base.dtype
            or v.shape != (base.shape[1],)
            or v.strides != (base.itemsize,)
        ):
            return None
        row, rest = divmod(v.ctypes.data - origin, pitch)
        if rest:
            return None
        rows.append(row)
    return base, rows
