"""A vertical task from a config file: which protocol, which table, how its columns are split.

The ``[vertical]`` section of a TOML config::

    [vertical]
    protocol = "split-nn"        # a name of fedfleet.vertical's registry (PROTOCOLS)
    dataset = "breast-cancer"    # scikit-learn's, or "synthetic" (rows, features, seed)
    parties = 3                  # the guest (labels + its columns) and parties - 1 hosts
    # columns = [[0, 1, 2], [3, 4], [5, 6, 7]]   # per party; default an even split
    relay = "127.0.0.1:50080"    # deployed: where the relay listens
    align = "psi"                # "psi" (default): each party its own records, aligned by PSI
    overlap = 0.9                # with psi: each party's share of the people (default 1.0)

    [vertical.settings]          # the protocol's own keys (its dataclass's fields)
    epochs = 10

Parties are named ``guest``, ``host-0``, ``host-1``, ... and, after them, the parties without
data the protocol adds (its ``roles``: ``arbiter`` for hetero-lr): in deployment each name is the
CN of the party's certificate (``fedfleet certs --party guest --party host-0 ...``).
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedfleet._cache import cached_arrays
from fedfleet.errors import ConfigError, DatasetError
from fedfleet.vertical._party import PartyData, split_columns
from fedfleet.vertical._registry import build_protocol

__all__ = ["VerticalTask", "guest_metrics", "party_tables"]

_SYNTHETIC_ENTROPY = 0x564552  # 'VER': the synthetic table's root, apart from other streams
DATASETS = ("breast-cancer", "synthetic")


@dataclass(frozen=True, kw_only=True)
class VerticalTask:
    """The ``[vertical]`` section of a config."""

    protocol: str = "split-nn"
    dataset: str = "breast-cancer"
    rows: int = 10_000
    """Rows of the synthetic table."""
    features: int = 20
    """Columns of the synthetic table."""
    seed: int = 0
    """The synthetic table's seed (the protocol's own seed is one of its settings)."""
    parties: int = 3
    columns: tuple[tuple[int, ...], ...] | None = None
    """Each party's columns (guest first); None: an even split in column order."""
    relay: str = "127.0.0.1:50080"
    settings: Mapping[str, Any] = field(default_factory=dict)
    align: str = "psi"
    """``"psi"``: each party holds its own records (string ids, its own order), and the
    parties run private set intersection before the protocol, which trains on the aligned
    intersection; ``"none"``: every party holds every row in the same order (no alignment)."""
    overlap: float = 1.0
    """With ``align = "psi"``: the share of the people each party holds (drawn per party from
    ``seed``); the intersection of 3 parties at 0.9 is about 0.73 of the rows."""

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ConfigError(
                f"[vertical] dataset {self.dataset!r} is unknown; use one of {list(DATASETS)}"
            )
        if self.parties < 2:
            raise ConfigError(
                f"[vertical] parties must be >= 2 (a guest and a host), got {self.parties}"
            )
        if self.columns is not None and len(self.columns) != self.parties:
            raise ConfigError(
                f"[vertical] columns gives {len(self.columns)} parties their columns, but "
                f"parties = {self.parties}"
            )
        if self.dataset == "synthetic" and (self.rows < 10 or self.features < self.parties):
            raise ConfigError(
                f"[vertical] a synthetic table needs rows >= 10 and features >= parties, got "
                f"rows = {self.rows}, features = {self.features}"
            )
        self._check_alignment()
        build_protocol(self.protocol, self.settings)  # unknown protocol or keys: fail now

    def _check_alignment(self) -> None:
        if self.align not in ("psi", "none"):
            raise ConfigError(f"[vertical] align must be 'psi' or 'none', got {self.align!r}")
        if not 0.0 < self.overlap <= 1.0:
            raise ConfigError(f"[vertical] overlap must be in (0, 1], got {self.overlap}")
        if self.align == "none" and self.overlap != 1.0:
            raise ConfigError(
                f"[vertical] overlap = {self.overlap} needs align = 'psi' (without alignment "
                "every party must hold the same rows)"
            )

    @classmethod
    def from_toml(cls, path: str | Path) -> VerticalTask:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(f"cannot read config {str(path)!r}: {err}") from None
        if "vertical" not in raw:
            raise ConfigError(f"config {str(path)!r} has no [vertical] section")
        section = dict(raw["vertical"])
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(section) - valid)
        if unknown:
            raise ConfigError(
                f"unknown key(s) {unknown} in [vertical] of {path}; valid keys: "
                f"{', '.join(sorted(valid))}"
            )
        if section.get("columns") is not None:
            section["columns"] = tuple(tuple(int(c) for c in cols) for cols in section["columns"])
        return cls(**section)

    @property
    def names(self) -> list[str]:
        """The parties' names, guest first, the protocol's parties without data last."""
        roles = list(getattr(self.build(), "roles", ()))
        return ["guest"] + [f"host-{k}" for k in range(self.parties - 1)] + roles

    def build(self) -> Any:
        """The protocol, with its settings."""
        return build_protocol(self.protocol, self.settings)


def _table(task: VerticalTask) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if task.dataset == "breast-cancer":
        table = cached_arrays("breast-cancer-v1", _breast_cancer, ("x", "y", "names"))
        return table["x"], table["y"], [str(n) for n in table["names"]]
    rng = np.random.default_rng([_SYNTHETIC_ENTROPY, task.seed])
    x = rng.standard_normal((task.rows, task.features))
    w = rng.standard_normal(task.features)
    margin = 3.0 * x @ w / np.sqrt(task.features) + rng.logistic(size=task.rows)
    return x, (margin > 0).astype(np.int64), [f"x{j}" for j in range(task.features)]


def _breast_cancer() -> dict[str, np.ndarray]:
    """scikit-learn's breast cancer table (kept in the data cache: :mod:`fedfleet._cache`)."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    names = np.array([str(n) for n in data.feature_names])
    return {"x": np.asarray(data.data), "y": np.asarray(data.target), "names": names}


def _columns(task: VerticalTask, n_features: int) -> list[list[int]]:
    if task.columns is None:
        if n_features < task.parties:
            raise DatasetError(f"{n_features} columns cannot be split among {task.parties} parties")
        return [list(map(int, c)) for c in np.array_split(np.arange(n_features), task.parties)]
    for k, cols in enumerate(task.columns):
        bad = [c for c in cols if not 0 <= c < n_features]
        if bad:
            raise ConfigError(
                f"[vertical] columns of {task.names[k]}: {bad} not in 0..{n_features - 1} "
                f"({task.dataset} has {n_features} columns)"
            )
    return [list(c) for c in task.columns]


def party_tables(task: VerticalTask, only: str | None = None) -> list[PartyData]:
    """The parties' tables (or only party ``only``'s: a deployed party keeps its own columns
    and drops the rest as soon as the shared file is read)."""
    if only is not None and only not in task.names:
        raise ConfigError(f"party {only!r} is not one of this task's parties {task.names}")
    if only is not None and only in getattr(task.build(), "roles", ()):
        return [PartyData.dataless(only)]  # an arbiter: no columns, no rows
    x, y, names = _table(task)
    tables = split_columns(x, y, _columns(task, x.shape[1]), feature_names=names)
    return [t for t in tables if only is None or t.name == only]


def guest_metrics(result: Any) -> dict[str, Any]:
    """What the guest's result says about the model (a mapping, or its ``metrics``)."""
    if isinstance(result, Mapping):
        return dict(result)
    metrics = getattr(result, "metrics", None)
    return dict(metrics) if isinstance(metrics, Mapping) else {}
