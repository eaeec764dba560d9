"""A vertical party's progress: its per-epoch checkpoints, the guest's metrics, its model file.

A protocol's program reports each finished epoch (or tree) to a :class:`PartyProgress` with the
party's whole state as named arrays, and asks it at the start where to begin. Neither the
protocol nor the party knows where that goes; :class:`RunProgress` writes it into a run
directory::

    DIR/checkpoints/<party>-e<epoch>.safetensors   the party's state after <epoch> epochs,
                                                   written atomically; the last two are kept
    DIR/metrics.jsonl                              (the guest) a line per epoch
    DIR/models/<party>.safetensors                 the party's trained piece of the model

Why two checkpoints per party: parties finish an epoch one message apart, so a run killed
between them leaves one party an epoch ahead of another (never more: split learning is lockstep
per batch). Resuming starts from the last epoch *every* party completed
(:func:`common_epoch`), and a party ahead takes its previous checkpoint.

Simulation and deployment write the same files: in simulation every party into one run
directory, deployed each party into its own ``--out``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fedfleet._atomic import atomic_write_safetensors, read_safetensors
from fedfleet.errors import FedfleetError

__all__ = [
    "PAUSE_ENV",
    "PartyProgress",
    "RunProgress",
    "common_epoch",
    "party_logger",
    "save_party_model",
    "saved_epochs",
]

_META = "fedfleet.vertical.checkpoint"
PAUSE_ENV = "FEDFLEET_TEST_PAUSE_VERTICAL"
"""Test hook: ``"<party>:<epoch>"`` makes that party stop for good between writing the
temporary file of its checkpoint after ``<epoch>`` epochs and the rename, after logging it, so
a test can SIGKILL the run there (as the horizontal checkpoint's ``PAUSE_ENV``)."""
_FILE = re.compile(r"^(?P<party>.+)-e(?P<epoch>\d{5})\.safetensors$")


def party_logger(party: str) -> logging.Logger:
    """The logger of vertical party ``party`` (``fedfleet.vertical.<party>``)."""
    return logging.getLogger(f"fedfleet.vertical.{party}")


class MetricsFile(Protocol):
    """Where the guest's per-epoch records go (:class:`fedfleet.runs.RunDir`'s
    ``metrics.jsonl``)."""

    def append_metrics(self, record: Mapping[str, Any]) -> None: ...

    def write_metrics(self, records: Sequence[Mapping[str, Any]]) -> None: ...


class PartyProgress(Protocol):
    """Where a party's program starts and where it reports each finished epoch."""

    def start(self) -> tuple[int, dict[str, np.ndarray]]:
        """``(epochs already done, the state saved after them)``; ``(0, {})`` for a fresh run."""
        ...

    def epoch_done(
        self, epoch: int, state: Mapping[str, np.ndarray], metrics: Mapping[str, Any]
    ) -> None:
        """``epoch`` epochs are done (1-based); ``state`` is everything the party needs to go on
        from here; ``metrics`` what it measured (the guest's loss, say)."""
        ...


def _path(run_dir: Path, party: str, epoch: int) -> Path:
    return run_dir / "checkpoints" / f"{party}-e{epoch:05d}.safetensors"


def saved_epochs(run_dir: str | Path, party: str) -> list[int]:
    """The epochs after which ``party`` has a checkpoint in ``run_dir``, ascending."""
    folder = Path(run_dir) / "checkpoints"
    found = [_FILE.match(p.name) for p in folder.glob("*.safetensors")] if folder.is_dir() else []
    return sorted(int(m["epoch"]) for m in found if m and m["party"] == party)


def common_epoch(run_dir: str | Path, parties: Sequence[str]) -> int:
    """The last epoch every party of ``parties`` has a checkpoint of (0: start afresh)."""
    return min((max(saved_epochs(run_dir, p), default=0) for p in parties), default=0)


class RunProgress:
    """A :class:`PartyProgress` writing into run directory ``run_dir``.

    Args:
        run_dir: the run directory.
        party: the party (its checkpoints' and model's name, its logger).
        fingerprint: what must not change between a run and its resumption (the protocol, its
            settings, the aligned rows), as JSON; a checkpoint with another is refused.
        resume_from: start after this many epochs, from the party's checkpoint of them.
        epochs: the run's epoch count (for the log lines).
        metrics: where the guest's per-epoch records go (None at hosts).
    """

    def __init__(
        self,
        run_dir: str | Path,
        party: str,
        fingerprint: str,
        *,
        resume_from: int = 0,
        epochs: int | None = None,
        metrics: MetricsFile | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.party = party
        self.fingerprint = fingerprint
        self.resume_from = resume_from
        self.epochs = epochs
        self.metrics = metrics
        self.records: list[dict[str, Any]] = []
        self.log = party_logger(party)

    def start(self) -> tuple[int, dict[str, np.ndarray]]:
        if self.resume_from == 0:
            if self.metrics is not None:
                self.metrics.write_metrics([])
            return 0, {}
        path = _path(self.run_dir, self.party, self.resume_from)
        try:
            meta, arrays = read_safetensors(path, _META)
        except ValueError as e:
            raise FedfleetError(
                f"{self.party} cannot resume from its checkpoint of epoch {self.resume_from}: "
                f"{e}; start the run again without --resume"
            ) from None
        if meta["fingerprint"] != self.fingerprint:
            raise FedfleetError(
                f"{self.party}'s checkpoint {str(path)!r} is of another run (protocol, settings "
                f"or aligned rows differ: {meta['fingerprint']} vs {self.fingerprint}); was "
                "config.toml edited? Start without --resume"
            )
        self.records = list(meta["records"])
        if self.metrics is not None:
            self.metrics.write_metrics(self.records)  # drop lines a killed run wrote after it
        self.log.info("%s resumes after epoch %d", self.party, self.resume_from)
        return self.resume_from, arrays

    def epoch_done(
        self, epoch: int, state: Mapping[str, np.ndarray], metrics: Mapping[str, Any]
    ) -> None:
        record = {"epoch": epoch, **metrics}
        records = [*self.records, record]
        meta = {"party": self.party, "epoch": epoch, "fingerprint": self.fingerprint}
        meta["records"] = records

        def pause(tmp: Path) -> None:
            if os.environ.get(PAUSE_ENV) == f"{self.party}:{epoch}":
                self.log.warning(
                    "%s: checkpoint of epoch %d written to %s; pausing before commit",
                    self.party,
                    epoch,
                    tmp.name,
                )
                time.sleep(3600)

        arrays = {k: np.ascontiguousarray(v) for k, v in state.items()}
        atomic_write_safetensors(
            _path(self.run_dir, self.party, epoch),
            arrays,
            {_META: json.dumps(meta)},
            before_commit=pause,
        )
        for old in saved_epochs(self.run_dir, self.party):
            if old < epoch - 1:
                _path(self.run_dir, self.party, old).unlink(missing_ok=True)
        self.records = records
        if self.metrics is not None:
            self.metrics.append_metrics(record)
        of = f"/{self.epochs}" if self.epochs else ""
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        self.log.info("%s: epoch %d%s done%s", self.party, epoch, of, f", {shown}" if shown else "")


def save_party_model(
    run_dir: str | Path, party: str, arrays: Mapping[str, np.ndarray], fingerprint: str
) -> Path:
    """``run_dir/models/<party>.safetensors``: the party's own piece of the trained model."""
    path = Path(run_dir) / "models" / f"{party}.safetensors"
    tensors = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    meta = {"fedfleet.vertical.party": party, "fedfleet.vertical.run": fingerprint}
    return atomic_write_safetensors(path, tensors, meta)
