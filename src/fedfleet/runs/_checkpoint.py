"""Atomic per-round checkpoints of a run, simulated or deployed: one safetensors file, never
pickle.

``RUN_DIR/checkpoint.safetensors`` holds the global vector (``vector``), every array of the
strategy state (``state/<path>``) and, in simulation, every client's state
(``clients/<id>/<name>``: SCAFFOLD control variates, FedPer heads); its metadata holds, as
JSON, the round just completed, the seed (all sampling and client seeds derive from seed and
round, so no RNG state needs saving), the layout fingerprint, the metrics history, the
structures of strategy and client state with their scalars, what the round loop carries on
(``carry``, e.g. the simulated clock's ``sim_time_s``) and the gRPC server's own per-client
records (``server``: ``clients``, sample counts and the last round whose update from each
client was aggregated; ``rejected``, the log of refused uploads).

Everything is in that one file, so there is no multi-file state to tear: it is written to a
temporary name, fsynced, renamed over the old one and the directory fsynced. A crash at any
moment leaves either the previous round's complete checkpoint or the new one (a SIGKILL between
the write and the rename is tested with the ``FEDFLEET_TEST_PAUSE_BEFORE_COMMIT`` hook).

In deployment, clients' private state is *not* here: it stays with each client
(:mod:`fedfleet.net._client_state`); the server never holds it. The simulation engine holds
every client's state, so its checkpoint does (:mod:`fedfleet.runs._resume`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedfleet._atomic import atomic_write_safetensors, read_safetensors
from fedfleet.errors import FedfleetError
from fedfleet.runs._rundir import _jsonable

__all__ = ["CHECKPOINT_NAME", "Checkpoint", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_NAME = "checkpoint.safetensors"
_META = "fedfleet.checkpoint"
PAUSE_ENV = "FEDFLEET_TEST_PAUSE_BEFORE_COMMIT"
"""Test hook: ``"<round>"`` makes saving that round's checkpoint stop for good between writing
the temporary file and the rename, after logging it, so a test can SIGKILL the server there."""

log = logging.getLogger("fedfleet.runs.checkpoint")


@dataclass(frozen=True)
class Checkpoint:
    round: int
    seed: int
    fingerprint: str
    vector: np.ndarray
    state: dict[str, Any]
    history: list[dict[str, Any]]
    server: dict[str, Any]
    """The server's per-client records (JSON): ``clients`` and ``rejected``."""
    client_states: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    """Per-client state by client id (simulation only)."""
    carry: dict[str, Any] = field(default_factory=dict)
    """JSON scalars the round loop carries to the next round (simulation: ``sim_time_s``)."""


_EMPTY: dict[str, Any] = {"dict": {}}


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
        f"checkpoint entry {path!r} is a {type(state).__name__}; checkpoints hold dicts, "
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
    server: dict[str, Any] | None = None,
    *,
    client_states: Mapping[int, Mapping[str, np.ndarray]] | None = None,
    carry: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint after round ``rnd`` atomically; returns its path.

    ``server`` (the gRPC server's bookkeeping) and ``carry`` (the simulation loop's) are
    JSON-able and stored in the metadata as they are; ``client_states`` maps client ids to
    their named arrays."""
    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {"vector": np.ascontiguousarray(vector)}
    structure = _split(state, "state", arrays)
    clients = {str(cid): dict(s) for cid, s in (client_states or {}).items()}
    meta = {
        "round": rnd,
        "seed": seed,
        "fingerprint": fingerprint,
        "state": structure,
        "history": [{k: _jsonable(v) for k, v in r.items()} for r in history],
        "server": server or {},
        "client_states": _split(clients, "clients", arrays),
        "carry": carry or {},
    }

    def pause(tmp: Path) -> None:
        if os.environ.get(PAUSE_ENV) == str(rnd):
            log.warning(
                "checkpoint of round %d written to %s; pausing before commit", rnd, tmp.name
            )
            time.sleep(3600)

    return atomic_write_safetensors(
        out / CHECKPOINT_NAME, arrays, {_META: json.dumps(meta)}, before_commit=pause
    )


def load_checkpoint(run_dir: str | Path) -> Checkpoint:
    """Read ``RUN_DIR/checkpoint.safetensors``; a missing, torn or foreign file is a
    :class:`FedfleetError` that says to start afresh."""
    path = Path(run_dir) / CHECKPOINT_NAME
    try:
        meta, arrays = read_safetensors(path, _META)
    except ValueError as e:
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
        server=dict(meta.get("server", {})),
        client_states={
            int(cid): s for cid, s in _join(meta.get("client_states", _EMPTY), arrays).items()
        },
        carry=dict(meta.get("carry", {})),
    )
