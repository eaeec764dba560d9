"""A run directory: the resolved config, per-round metrics, checkpoint and final model.

DIR/config.toml             the resolved configuration (``fedfleet run --config
                            DIR/config.toml`` repeats the run)
DIR/metrics.jsonl           one JSON object per round, appended and flushed as rounds finish
DIR/checkpoint.safetensors  the run after its last finished round, rewritten atomically each
                            round before that round's metrics line (``fedfleet run --resume
                            DIR`` continues from it; :mod:`fedfleet.runs._resume`)
DIR/model.safetensors       the final global model, one tensor per layout entry, with the
                            layout fingerprint in the metadata
DIR/tensorboard/, mlflow.*  what the trackers write when ``[track]`` asks (:mod:`fedfleet.tracking`)

Where a run goes: ``fedfleet run`` without ``--out`` makes a new directory
``runs/<data>-<strategy>-<YYYYmmdd-HHMMSS>`` (:func:`new_run_dir`, as MLflow and Lightning give
each run its own); ``--out DIR`` into a directory that already holds a run is refused
(:func:`check_new_run`) unless the user asks to overwrite it, so no run is replaced silently.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file

from fedfleet._atomic import atomic_write_bytes, atomic_write_safetensors
from fedfleet.errors import ConfigError, LayoutError
from fedfleet.params import Layout

__all__ = ["RUN_FILES", "RunDir", "check_new_run", "load_model_vector", "new_run_dir", "save_model"]

RUN_FILES = ("config.toml", "metrics.jsonl")
"""The files whose presence means a directory holds a run."""

_OWNED = (
    "config.toml",
    "metrics.jsonl",
    "checkpoint.safetensors",
    "checkpoint.safetensors.tmp",
    "model.safetensors",
    "mlflow.db",
    "mlflow_run.json",
)
_OWNED_DIRS = ("tensorboard", "mlflow-artifacts")
"""What ``--overwrite`` removes: the files and folders a run writes, nothing else."""


def new_run_dir(root: str | Path, name: str, now: float | None = None) -> Path:
    """Create and return a new, empty ``root/<name>-<YYYYmmdd-HHMMSS>``; when that exists
    (two runs started in the same second) ``-2``, ``-3``, ... follow. ``mkdir`` without
    ``exist_ok`` is the claim, so two processes never get the same directory."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    base = Path(root) / f"{name}-{stamp}"
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        path = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise ConfigError(f"cannot find a free run directory next to {str(base)!r}; use --out DIR")


def check_new_run(path: str | Path, *, overwrite: bool = False) -> None:
    """Refuse to start a run in ``path`` when it holds one (``config.toml`` or
    ``metrics.jsonl``), naming it and the ways on; with ``overwrite`` remove that run's files
    (only those :class:`RunDir` and the trackers write) instead."""
    path = Path(path)
    found = [f for f in RUN_FILES if (path / f).exists()]
    if not found:
        return
    if not overwrite:
        raise ConfigError(
            f"--out {path} already holds a run ({', '.join(found)}); continue it with "
            f"fedfleet run --resume {path}, choose another --out (or none: a new directory "
            "under runs/), or pass --overwrite to replace it"
        )
    for name in _OWNED:
        (path / name).unlink(missing_ok=True)
    for name in _OWNED_DIRS:
        if (path / name).is_dir():
            shutil.rmtree(path / name)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/Inf
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return value


class RunDir:
    """Writes a run's files into ``path`` (created if missing); ``metrics.jsonl`` starts empty
    unless ``fresh=False`` (resuming)."""

    def __init__(self, path: str | Path, *, fresh: bool = True) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.path / "metrics.jsonl"
        if fresh:
            self.metrics_path.write_text("")

    def write_config(self, toml_text: str) -> None:
        atomic_write_bytes(self.path / "config.toml", toml_text.encode())

    def append_metrics(self, record: Mapping[str, Any]) -> None:
        with self.metrics_path.open("a") as f:
            f.write(_line(record))

    def write_metrics(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Replace ``metrics.jsonl`` with ``records``, atomically (on resume: the checkpoint's
        rounds, whatever lines a killed run wrote after it)."""
        atomic_write_bytes(self.metrics_path, "".join(map(_line, records)).encode())

    def save_model(self, vector: np.ndarray, layout: Layout) -> Path:
        return save_model(self.path / "model.safetensors", vector, layout)


def _line(record: Mapping[str, Any]) -> str:
    return json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n"


def save_model(path: str | Path, vector: np.ndarray, layout: Layout) -> Path:
    """Write ``vector`` as safetensors, one tensor per layout entry (float32), atomically."""
    tensors = {k: np.ascontiguousarray(v) for k, v in layout.unflatten(vector).items()}
    return atomic_write_safetensors(path, tensors, {"fedfleet.layout": layout.fingerprint})


def load_model_vector(path: str | Path, layout: Layout) -> np.ndarray:
    """Read a model written by :func:`save_model` back into a flat vector of ``layout``."""
    try:
        with safe_open(str(path), framework="np") as f:
            found = (f.metadata() or {}).get("fedfleet.layout")
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise LayoutError(f"cannot read model file {str(path)!r}: {e}") from None
    if found is not None and found != layout.fingerprint:
        raise LayoutError(
            f"model file {str(path)!r} was written for layout {found}, not {layout.fingerprint}; "
            "was it trained with another model config?"
        )
    return layout.flatten(tensors)
