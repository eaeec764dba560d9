"""Reading run directories back for a report: each run's resolved config and its round records.

A run directory is what ``fedfleet run --out DIR`` writes (:mod:`fedfleet.runs._rundir`):
``config.toml`` and ``metrics.jsonl``, one JSON object per round. Only those two files are read,
so a run still going (or killed) can be reported on with the rounds it finished.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedfleet.errors import RunDirError

__all__ = ["Run", "config_differences", "load_run", "load_runs"]

_MISSING = object()  # a key one run's config lacks (another algorithm's section)


@dataclass(frozen=True)
class Run:
    """One run as a report reads it.

    Attributes:
        label: the name it is shown under (its directory's name, made unique in a report).
        path: its directory.
        config: its resolved config, flattened to dotted keys (``client.lr``).
        records: its rounds' metrics, in file order (``round`` ascending; FedBuff's model
            ``version`` serves as its round).
    """

    label: str
    path: Path
    config: dict[str, Any]
    records: list[dict[str, Any]]

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(rounds, values) of the records that have ``key`` with a number (evaluation runs
        every few rounds; a NaN is written as null and left out)."""
        rounds, values = [], []
        for r in self.records:
            v = r.get(key)
            if isinstance(v, int | float) and not isinstance(v, bool):
                rounds.append(int(r["round"]))
                values.append(float(v))
        return rounds, values

    def has(self, key: str) -> bool:
        return any(isinstance(r.get(key), int | float) for r in self.records)

    @property
    def final(self) -> dict[str, Any]:
        """The last value of every metric (a metric evaluated every k rounds keeps its last
        evaluation), with ``round`` the last round run."""
        last: dict[str, Any] = {}
        for r in self.records:
            last.update({k: v for k, v in r.items() if v is not None})
        return last


def load_run(path: str | Path, label: str | None = None) -> Run:
    """Read the run in directory ``path``; :class:`RunDirError` naming the path and what is
    wrong when it is missing, not a run directory, holds no rounds or a damaged file."""
    path = Path(path)
    if not path.is_dir():
        what = "is a file, not a directory" if path.exists() else "does not exist"
        raise RunDirError(f"run directory {str(path)!r} {what}; pass a fedfleet run --out DIR")
    config_path, metrics_path = path / "config.toml", path / "metrics.jsonl"
    for needed in (config_path, metrics_path):
        if not needed.is_file():
            raise RunDirError(
                f"{str(path)!r} is not a run directory: it has no {needed.name} "
                "(fedfleet run --out DIR writes config.toml and metrics.jsonl)"
            )
    try:
        config = tomllib.loads(config_path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise RunDirError(f"{str(config_path)!r} is not valid TOML: {e}") from None
    records = _read_records(metrics_path)
    if not records:
        raise RunDirError(
            f"{str(metrics_path)!r} holds no rounds: the run at {str(path)!r} has not finished "
            "its first round (or was started afresh into this directory)"
        )
    return Run(label or path.resolve().name, path, _flatten(config), records)


def load_runs(paths: Sequence[str | Path]) -> list[Run]:
    """:func:`load_run` for each path, labelled by directory name; runs whose directories share
    a name are told apart by their parent directories' names (``a/run``, ``b/run``)."""
    if not paths:
        raise RunDirError("no run directories given; pass one or more fedfleet run --out DIRs")
    resolved = [Path(p).resolve() for p in paths]
    names = [p.name for p in resolved]
    labels = [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in resolved]
    if len(set(labels)) < len(labels):  # the same directory twice, or deeper clashes
        labels = [f"{i + 1}: {label}" for i, label in enumerate(labels)]
    return [load_run(p, label) for p, label in zip(paths, labels, strict=True)]


def config_differences(runs: Sequence[Run]) -> dict[str, list[Any]]:
    """The config keys whose values are not the same in every run (a key missing in a run
    counts as different), each with its value per run (None where missing), sorted by key."""
    keys = sorted({k for run in runs for k in run.config})
    diff = {}
    for key in keys:
        values = [run.config.get(key, _MISSING) for run in runs]
        if any(v != values[0] for v in values[1:]):
            diff[key] = [None if v is _MISSING else v for v in values]
    return diff


def _read_records(path: Path) -> list[dict[str, Any]]:
    records = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines):
                break  # the last line of a run killed mid-write: the rounds before it stand
            raise RunDirError(f"{str(path)!r} line {number} is not JSON ({e.msg})") from None
        if isinstance(record, dict) and "round" not in record and "version" in record:
            record["round"] = record["version"]  # FedBuff counts server model versions
        if not isinstance(record, dict) or not isinstance(record.get("round"), int):
            raise RunDirError(
                f"{str(path)!r} line {number} is not a round record (a JSON object with an "
                "integer 'round', or FedBuff's 'version')"
            )
        records.append(record)
    return records


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
