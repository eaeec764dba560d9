"""Atomic per-round server checkpoints: one safetensors file, never pickle.

``RUN_DIR/checkpoint.safetensors`` holds the global vector (``vector``) and every array of the
strategy state (``state/<path>``); its metadata holds, as JSON, the round just completed, the
seed (all sampling and client seeds derive from seed and round, so no RNG state needs saving),
the layout fingerprint, the metrics history and the strategy state's structure with its scalars.
The file is written to a temporary name, fsynced and renamed, so a crash at any moment leaves
either the previous round's checkpoint or the new one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from fedfleet.errors import FedfleetError
from fedfleet.runs.rundir import _jsonable

__all__ = ["CHECKPOINT_NAME", "Checkpoint", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_NAME = "checkpoint.safetensors"
_META = "fedfleet.checkpoint"


@dataclass(frozen=True)
class Checkpoint:
    round: int
    seed: int
    fingerprint: str
    vector: np.ndarray
    state: dict[str, Any]
    history: list[dict[str, Any]]


def _split(state: Any, path: str, arrays: dict[str, np.ndarray]) -> Any:
    """The JSON structure of ``state`` with arrays moved into ``arrays``."""
    if isinstance(state, dict):
        return {"dict": {str(k): _split(v, f"{path}/{k}", arrays) for k, v in state.items()}}
    if isinstance(state, np.ndarray):
        arrays[path] = np.ascontiguousarray(state)
        return {"array": path}
    if isinstance(state, bool | np.bool_):
        return {"bool": bool(state)}
    if isinstance(state, int | np.integer):
        return {"int": int(state)}
    if isinstance(state, float | np.floating):
        return {"float": repr(float(state))}  # repr keeps every bit, and NaN/Inf
    if isinstance(state, str):
        return {"str": state}
    if state is None:
        return {"none": None}
    raise FedfleetError(
        f"strategy state entry {path!r} is a {type(state).__name__}; checkpoints hold dicts, "
        "arrays, numbers and strings only"
    )


def _join(node: dict[str, Any], arrays: dict[str, np.ndarray]) -> Any:
    ((kind, value),) = node.items()
    if kind == "dict":
        return {k: _join(v, arrays) for k, v in value.items()}
    if kind == "array":
        return arrays[value]
    if kind == "float":
        return float(value)
    if kind == "bool":
        return bool(value)
    if kind == "int":
        return int(value)
    if kind == "str":
        return str(value)
    return None


def save_checkpoint(
    run_dir: str | Path,
    rnd: int,
    seed: int,
    fingerprint: str,
    vector: np.ndarray,
    state: dict[str, Any],
    history: list[dict[str, Any]],
) -> Path:
    """Write the checkpoint after round ``rnd`` atomically; returns its path."""
    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {"vector": np.ascontiguousarray(vector)}
    structure = _split(state, "state", arrays)
    meta = {
        "round": rnd,
        "seed": seed,
        "fingerprint": fingerprint,
        "state": structure,
        "history": [{k: _jsonable(v) for k, v in r.items()} for r in history],
    }
    path = out / CHECKPOINT_NAME
    tmp = out / (CHECKPOINT_NAME + ".tmp")
    save_file(arrays, str(tmp), metadata={_META: json.dumps(meta)})
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(out, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load_checkpoint(run_dir: str | Path) -> Checkpoint:
    path = Path(run_dir) / CHECKPOINT_NAME
    try:
        with safe_open(str(path), framework="np") as f:
            meta = json.loads((f.metadata() or {})[_META])
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as e:
        raise FedfleetError(
            f"cannot read checkpoint {str(path)!r}: {e}; start without --resume to begin afresh"
        ) from None
    return Checkpoint(
        round=int(meta["round"]),
        seed=int(meta["seed"]),
        fingerprint=str(meta["fingerprint"]),
        vector=arrays["vector"],
        state=_join(meta["state"], arrays),
        history=list(meta["history"]),
    )
