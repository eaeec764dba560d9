"""Resuming a simulated run: the engine's :class:`~fedfleet.sim._engine.Snapshot` in the run
directory's checkpoint (the format and atomic writer the gRPC server uses,
:mod:`fedfleet.runs._checkpoint`).

``fedfleet run --out DIR`` saves a snapshot as ``DIR/checkpoint.safetensors`` after every round,
before the round's line goes into ``DIR/metrics.jsonl``; ``fedfleet run --resume DIR`` rebuilds
the run from ``DIR/config.toml``, loads the snapshot and continues with the next round. Every
random draw derives from (seed, round[, client]), so nothing else is needed for the resumed run
to end bit-identical to one that never stopped.

What a snapshot holds: the global vector, the strategy state (server optimizer moments, the
adaptive clip norm, Oort's and compensation's per-client statistics, DP-SGD ledgers; the DP
accountant's epsilon is a function of the round alone), every client's state (SCAFFOLD control
variates, FedPer/FedRep heads), the metrics so far and the simulated clock's running total.

Not resumable: FedBuff (asynchronous: the clients in flight at a kill, their start versions and
simulated finish times, are not in a checkpoint), refused by :func:`check_resumable`. With
``privacy.noise = 'secure'`` a resumed run is a valid run but, like any run with OS-drawn noise,
not a bit-identical one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedfleet.errors import ConfigError, FedfleetError
from fedfleet.params import Layout
from fedfleet.runs._checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from fedfleet.runs._config import RunConfig
from fedfleet.runs.algorithms import ALGORITHMS
from fedfleet.sim._engine import Snapshot

__all__ = ["check_resumable", "config_changes", "load_snapshot", "save_snapshot"]

_ENGINE = "simulation"
"""``carry["engine"]`` of a simulation's checkpoint (a gRPC server's has none)."""


def check_resumable(config: RunConfig) -> None:
    """ConfigError naming what cannot be resumed in ``config``; None when it can be."""
    if ALGORITHMS[config.strategy.name].asynchronous:
        raise ConfigError(
            f"strategy.name = {config.strategy.name!r} cannot be resumed: it is asynchronous, "
            "and the clients in flight at a kill (their start versions and simulated finish "
            "times) are not in a checkpoint; start the run again without --resume"
        )


def save_snapshot(run_dir: str | Path, snapshot: Snapshot, *, seed: int, layout: Layout) -> Path:
    """Write ``snapshot`` as ``run_dir/checkpoint.safetensors``, atomically."""
    return save_checkpoint(
        run_dir,
        snapshot.round,
        seed,
        layout.fingerprint,
        snapshot.vector,
        dict(snapshot.strategy_state),
        snapshot.history,
        client_states=snapshot.client_states,
        carry={"engine": _ENGINE, "sim_time_s": snapshot.sim_time_s},
    )


def load_snapshot(run_dir: str | Path, *, seed: int, layout: Layout) -> Snapshot:
    """The snapshot in ``run_dir/checkpoint.safetensors``, checked against the run's seed and
    model layout; a missing, torn or foreign checkpoint is an error that says how to recover."""
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.exists():
        raise FedfleetError(
            f"no checkpoint {str(path)!r}: the run stopped before its first round ended (or "
            "was not started with --out); start it again without --resume"
        )
    ckpt = load_checkpoint(run_dir)
    if ckpt.carry.get("engine") != _ENGINE:
        raise FedfleetError(
            f"checkpoint {str(path)!r} was written by a fedfleet server, not by fedfleet run; "
            "resume it with fedfleet server --resume"
        )
    if ckpt.seed != seed or ckpt.fingerprint != layout.fingerprint:
        raise FedfleetError(
            f"checkpoint {str(path)!r} is of a run with seed {ckpt.seed} and layout "
            f"{ckpt.fingerprint}, but the run's config.toml gives seed {seed} and layout "
            f"{layout.fingerprint}; was config.toml edited? Start without --resume"
        )
    return Snapshot(
        round=ckpt.round,
        vector=ckpt.vector,
        strategy_state=ckpt.state,
        client_states=ckpt.client_states,
        history=ckpt.history,
        sim_time_s=float(ckpt.carry.get("sim_time_s", 0.0)),
    )


def config_changes(saved: RunConfig, given: RunConfig) -> list[str]:
    """The dotted keys whose values differ between two configs, e.g. ``['rounds']``; a section
    whose ``name`` differs (another algorithm, dataset or model, with keys of its own) is
    reported by its ``name`` alone."""
    return sorted(_diff(saved.model_dump(mode="json"), given.model_dump(mode="json"), ""))


def _diff(a: Any, b: Any, prefix: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        if "name" in a and "name" in b and a["name"] != b["name"]:
            return [f"{prefix}name"]
        out: list[str] = []
        for key in a.keys() | b.keys():
            out += _diff(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]
