"""A vertical task run in process: alignment settings, the run directory, resuming (split-nn
through the task; hetero-lr and secureboost killed mid-run, simulated and as deployed parties
over a LocalNetwork)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedfleet.errors import ConfigError, FedfleetError
from fedfleet.runs import RunDir
from fedfleet.vertical import (
    Channel,
    HeteroLR,
    LocalNetwork,
    Message,
    PartyError,
    SecureBoost,
    run_parties,
    run_party,
    simulate,
    split_columns,
)
from fedfleet.vertical._progress import RunProgress, common_epoch, saved_epochs
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


class _Killed(RunProgress):
    """The guest dies at the end of epoch ``at``, before its checkpoint is written."""

    def __init__(self, *args, at: int, **kw) -> None:
        super().__init__(*args, **kw)
        self.at = at

    def epoch_done(self, epoch, state, metrics) -> None:
        if self.party == "guest" and epoch == self.at:
            raise RuntimeError(f"killed after epoch {epoch}")
        super().epoch_done(epoch, state, metrics)


def _hetero_lr_run(
    run_dir: Path, proto: HeteroLR, parties: dict, *, kill_at: int = 0
) -> tuple[dict, LocalNetwork]:
    start = common_epoch(run_dir, list(parties))
    progress = {p: _Killed(run_dir, p, "lr", resume_from=start, at=kill_at) for p in parties}
    net = LocalNetwork([*parties, "arbiter"], timeout_s=300)
    return run_parties(net, proto.programs(parties, progress)), net


def test_hetero_lr_killed_mid_run_resumes_bit_identical(tmp_path: Path) -> None:
    pytest.importorskip("phe")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((90, 4))
    y = (x @ np.array([1.0, -2.0, 0.5, 1.5]) > 0).astype(np.int64)
    parties = {p.name: p for p in split_columns(x, y, [[0, 1], [2, 3]])}
    proto = HeteroLR(epochs=3, batch_size=30, lr=0.3, key_bits=1024, seed=4)
    whole, _ = _hetero_lr_run(tmp_path / "whole", proto, parties)
    with pytest.raises(PartyError, match="killed after epoch 2"):
        _hetero_lr_run(tmp_path / "cut", proto, parties, kill_at=2)
    assert common_epoch(tmp_path / "cut", list(parties)) == 1
    resumed, net = _hetero_lr_run(tmp_path / "cut", proto, parties)  # a fresh arbiter key
    # it trained epochs 2 and 3 only: 3 batches each
    assert sum(d.kind == "hlr-residuals" for d in net.log) == 2 * 3
    for p in parties:
        np.testing.assert_array_equal(resumed[p].weights, whole[p].weights)
        assert resumed[p].intercept == whole[p].intercept
    assert saved_epochs(tmp_path / "cut", "guest") == [2, 3]


def test_deployed_parties_agree_on_the_epoch_to_resume_after(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # each party as deployed (run_party: PSI, then its program, its own run directory), here
    # over a LocalNetwork; the guest's last checkpoint is lost (killed between the hosts'
    # and its own write of epoch 3): the parties agree on epoch 2 and end as the whole run
    task = _task()
    names = task.names

    def deployed(root: Path, resume: bool = False) -> dict:
        net = LocalNetwork(names, timeout_s=300)
        programs = {
            p: (lambda ch, p=p: run_party(task, p, ch, root / p, resume=resume)) for p in names
        }
        return run_parties(net, programs)

    whole = deployed(tmp_path / "whole")
    deployed(tmp_path / "cut")
    (tmp_path / "cut" / "guest" / "checkpoints" / "guest-e00003.safetensors").unlink()
    with caplog.at_level(logging.INFO, logger="fedfleet.vertical"):
        resumed = deployed(tmp_path / "cut", resume=True)
    for p in names:
        assert f"{p} resumes after epoch 2" in caplog.text
    assert resumed["guest"][1]["metrics"] == whole["guest"][1]["metrics"]
    for p in names:
        for part in ("bottom", "top"):
            mine, theirs = getattr(resumed[p][0], part), getattr(whole[p][0], part)
            assert (mine is None) == (theirs is None)
            for k in mine or {}:
                np.testing.assert_array_equal(mine[k], theirs[k])
    metrics = [(tmp_path / d / "guest" / "metrics.jsonl").read_text() for d in ("whole", "cut")]
    assert metrics[0] == metrics[1] and len(metrics[0].splitlines()) == 3


@dataclass(frozen=True)
class _DiesAt:
    """A party's channel that fails the party (as a kill would) when it is about to receive a
    message of ``kind`` once ``file`` exists: a point every party has checkpointed up to."""

    inner: Channel
    kind: str
    file: Path

    @property
    def party(self) -> str:
        return self.inner.party

    def send(self, to: str, message: Message) -> None:
        self.inner.send(to, message)

    def recv(self, sender: str, kind: str, timeout: float | None = None) -> Message:
        if kind == self.kind and self.file.exists():
            raise RuntimeError(f"{self.party} killed: {self.file.name} is written")
        return self.inner.recv(sender, kind, timeout)


def _deployed(
    task: VerticalTask, root: Path, *, resume: bool = False, dies: tuple[str, str] | None = None
) -> tuple[dict, LocalNetwork]:
    """Each party as deployed (run_party: PSI, its program, its own run directory ``root /
    party``) over one LocalNetwork; ``dies``: (kind, checkpoint file name) kills the guest."""
    net = LocalNetwork(task.names, timeout_s=300)

    def party(p: str) -> Callable[[Channel], Any]:
        def program(ch: Channel) -> Any:
            if dies is not None and p == "guest":
                ch = _DiesAt(ch, dies[0], root / p / "checkpoints" / dies[1])
            return run_party(task, p, ch, root / p, resume=resume)

        return program

    return run_parties(net, {p: party(p) for p in task.names}), net


def _public_keys(net: LocalNetwork) -> set[bytes]:
    return {d.frame for d in net.log if d.kind == "hlr-public-key"}


def test_deployed_hetero_lr_killed_after_an_epoch_resumes_bit_identical(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("phe")
    settings = {"epochs": 3, "batch_size": 40, "lr": 0.3, "key_bits": 1024, "test_fraction": 0.2}
    task = _task(protocol="hetero-lr", rows=120, settings=settings)
    assert task.names == ["guest", "host-0", "host-1", "arbiter"]
    whole, whole_net = _deployed(task, tmp_path / "whole")
    # the guest dies as it waits for the hosts' scores of epoch 2: all have checkpointed epoch 1
    with pytest.raises(PartyError, match="guest killed: guest-e00001"):
        _deployed(task, tmp_path / "cut", dies=("hlr-host-scores", "guest-e00001.safetensors"))
    for p in ("guest", "host-0", "host-1"):
        assert saved_epochs(tmp_path / "cut" / p, p) == [1]
    with caplog.at_level(logging.INFO, logger="fedfleet.vertical"):
        resumed, net = _deployed(task, tmp_path / "cut", resume=True)
    for p in ("guest", "host-0", "host-1"):
        assert f"{p} resumes after epoch 1" in caplog.text
        np.testing.assert_array_equal(resumed[p][0].weights, whole[p][0].weights)
        assert resumed[p][0].intercept == whole[p][0].intercept
    # the arbiter holds no state: it drew another key, and no weight changed
    assert _public_keys(net) and not _public_keys(net) & _public_keys(whole_net)
    rows = whole["guest"][1]["metrics"]["train_rows"]
    batches = -(-rows // 40)
    assert sum(d.kind == "hlr-residuals" for d in net.log) == 2 * batches * 2  # 2 epochs, 2 hosts
    assert resumed["guest"][1]["metrics"] == whole["guest"][1]["metrics"]


BOOST = {"trees": 3, "max_depth": 2, "bins": 8, "key_bits": 512, "test_fraction": 0.25}


def _boost_parties() -> dict:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((120, 6))
    y = (x @ np.array([1.0, -2.0, 0.5, 1.5, -1.0, 0.7]) > 0).astype(np.int64)
    return {p.name: p for p in split_columns(x, y, [[0, 1], [2, 3], [4, 5]])}


def _boost_run(run_dir: Path, parties: dict, *, kill_at: int = 0) -> tuple[dict, LocalNetwork]:
    """SecureBoost (simulated) with each party's RunProgress, the guest writing metrics.jsonl;
    ``kill_at``: the guest dies at the end of that tree, before checkpointing it."""
    start = common_epoch(run_dir, list(parties))
    progress = {
        p: _Killed(
            run_dir,
            p,
            "boost",
            resume_from=start,
            at=kill_at,
            metrics=RunDir(run_dir, fresh=False) if p == "guest" else None,
        )
        for p in parties
    }
    net = LocalNetwork(list(parties), timeout_s=300)
    return run_parties(net, SecureBoost(**BOOST).programs(parties, progress)), net


def _assert_same_boost(resumed: dict, whole: dict) -> None:
    assert resumed["guest"].trees == whole["guest"].trees
    np.testing.assert_array_equal(resumed["guest"].train_score, whole["guest"].train_score)
    assert resumed["guest"].metrics == whole["guest"].metrics
    for h in ("host-0", "host-1"):
        assert resumed[h] == whole[h]


def test_secureboost_killed_mid_run_resumes_bit_identical(tmp_path: Path) -> None:
    pytest.importorskip("phe")
    parties = _boost_parties()
    whole, _ = _boost_run(tmp_path / "whole", parties)
    losses = whole["guest"].metrics["loss"]
    assert len(losses) == 3 and losses[0] > losses[1] > losses[2]  # each tree fits the rows
    # a host cut in the trees: the hosts' lookup tables are in the checkpoints too
    assert any(p > 0 for t in whole["guest"].trees for p in t.party)
    with pytest.raises(PartyError, match="killed after epoch 2"):
        _boost_run(tmp_path / "cut", parties, kill_at=2)
    assert common_epoch(tmp_path / "cut", list(parties)) == 1
    resumed, net = _boost_run(tmp_path / "cut", parties)
    assert sum(d.kind == "sb-gh" and d.receiver == "host-0" for d in net.log) == 2  # trees 2, 3
    _assert_same_boost(resumed, whole)
    metrics = [(tmp_path / d / "metrics.jsonl").read_text() for d in ("whole", "cut")]
    assert metrics[0] == metrics[1]
    assert [json.loads(s)["loss"] for s in metrics[0].splitlines()] == losses
    assert saved_epochs(tmp_path / "cut", "host-1") == [2, 3]
    # parties resuming from different trees (not agreed, by hand) are stopped, named
    run = tmp_path / "whole"
    progress = {
        p: RunProgress(run, p, "boost", resume_from=3 if p == "guest" else 2) for p in parties
    }
    with pytest.raises(PartyError, match="host-0 resumes after tree 2, the guest after tree 3"):
        run_parties(
            LocalNetwork(list(parties), timeout_s=300),
            SecureBoost(**BOOST).programs(parties, progress),
        )


def test_deployed_secureboost_killed_after_a_tree_resumes_bit_identical(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("phe")
    task = _task(protocol="secureboost", rows=120, settings=BOOST)
    whole, whole_net = _deployed(task, tmp_path / "whole")
    # the guest dies waiting for the hosts' histograms of tree 2: all have checkpointed tree 1
    with pytest.raises(PartyError, match="guest killed: guest-e00001"):
        _deployed(task, tmp_path / "cut", dies=("sb-hist", "guest-e00001.safetensors"))
    for p in task.names:
        assert saved_epochs(tmp_path / "cut" / p, p) == [1]
    with caplog.at_level(logging.INFO, logger="fedfleet.vertical"):
        resumed, net = _deployed(task, tmp_path / "cut", resume=True)
    for p in task.names:
        assert f"{p} resumes after epoch 1" in caplog.text
    models = [{p: r for p, (r, _) in run.items()} for run in (resumed, whole)]
    _assert_same_boost(*models)
    assert resumed["guest"][1]["metrics"] == whole["guest"][1]["metrics"]
    # a fresh Paillier key, the same trees
    setup = [{d.frame for d in n.log if d.kind == "sb-setup"} for n in (net, whole_net)]
    assert setup[0] and not setup[0] & setup[1]
    metrics = [(tmp_path / d / "guest" / "metrics.jsonl").read_text() for d in ("whole", "cut")]
    assert metrics[0] == metrics[1] and len(metrics[0].splitlines()) == 3
