"""A vertical task run in process: alignment settings, the run directory, resuming checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedfleet.errors import ConfigError, FedfleetError
from fedfleet.vertical import simulate
from fedfleet.vertical._progress import common_epoch, saved_epochs
from fedfleet.vertical._task import VerticalTask

SETTINGS = {"epochs": 3, "batch_size": 32, "bottom_widths": [4], "top_widths": [4]}


def _task(**kw) -> VerticalTask:
    settings = kw.pop("settings", SETTINGS)
    base = {"dataset": "synthetic", "rows": 200, "features": 6, "overlap": 0.8}
    return VerticalTask(**(base | kw), settings=settings)


def test_alignment_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="align must be 'psi' or 'none', got 'fuzzy'"):
        _task(align="fuzzy")
    with pytest.raises(ConfigError, match=r"overlap must be in \(0, 1\], got 0"):
        _task(overlap=0)
    with pytest.raises(ConfigError, match=r"overlap = 0\.8 needs align = 'psi'"):
        _task(align="none")


def test_a_run_directory_holds_every_partys_checkpoints_and_the_guests_metrics(
    tmp_path: Path,
) -> None:
    summary = simulate(_task(), tmp_path)
    assert summary["own_rows"] == 160 and 0 < summary["rows"] < 160
    m = summary["metrics"]
    assert m["train_rows"] + m["test_rows"] == summary["rows"]
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in lines] == m["loss"]
    for party in ("guest", "host-0", "host-1"):
        assert saved_epochs(tmp_path, party) == [2, 3]  # the last two, for a kill between
    assert common_epoch(tmp_path, ["guest", "host-0", "host-1"]) == 3
    # the checkpoints are of this run: another learning rate, or rows, is refused by name
    with pytest.raises(FedfleetError, match=r"checkpoint .* is of another run"):
        simulate(_task(settings=SETTINGS | {"lr": 0.05}), tmp_path, resume=True)
    with pytest.raises(FedfleetError, match="of another run"):
        simulate(_task(overlap=0.7), tmp_path, resume=True)
    # resuming a finished run trains nothing more and ends with the same numbers
    assert simulate(_task(), tmp_path, resume=True)["metrics"] == m
