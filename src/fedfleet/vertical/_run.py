"""A vertical task end to end: each party's records, PSI alignment, the protocol, the run files.

:func:`simulate` runs every party in this process (PSI on one :class:`LocalNetwork`, then the
protocol on another); :func:`run_party` is one deployed party, which runs PSI and then the
protocol over the same channel. Both align the same way (:mod:`fedfleet.vertical._alignment`),
so a deployed run ends with its simulation's numbers. With a run directory each party
checkpoints every epoch and saves its own piece of the model (:mod:`fedfleet.vertical.
_progress`); the guest writes the metrics.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np

from fedfleet.errors import ConfigError, FedfleetError
from fedfleet.vertical._alignment import own_records, psi_align, psi_align_party
from fedfleet.vertical._channel import Channel, LocalNetwork, Message, run_parties
from fedfleet.vertical._hetero_lr import HeteroLR, PartyWeights
from fedfleet.vertical._party import PartyData
from fedfleet.vertical._progress import (
    PartyProgress,
    RunProgress,
    common_epoch,
    party_logger,
    save_party_model,
    saved_epochs,
)
from fedfleet.vertical._registry import Deployable
from fedfleet.vertical._secureboost import SecureBoost, SecureBoostHostModel, SecureBoostModel
from fedfleet.vertical._secureboost_state import guest_arrays
from fedfleet.vertical._split_nn import SplitNN, SplitNNResult
from fedfleet.vertical._task import VerticalTask, guest_metrics, party_tables

__all__ = ["RECORDED", "held_tables", "model_arrays", "run_party", "simulate"]

RECORDED: tuple[type, ...] = (SplitNN, HeteroLR, SecureBoost)
"""Protocols whose ``programs(parties, progress)``, and deployed ``program(data, roster,
progress)``, checkpoint every epoch (resumable; SecureBoost's "epoch" is a tree; HeteroLR's
arbiter keeps no state: a resumed run's arbiter draws a fresh key, which changes no bit of the
weights)."""


class Recorded(Protocol):
    """A protocol of :data:`RECORDED`: its party programs report to a :class:`PartyProgress`."""

    epochs: int

    def programs(
        self,
        parties: Mapping[str, PartyData],
        progress: Mapping[str, PartyProgress] | None = None,
    ) -> dict[str, Callable[[Channel], Any]]: ...


class RecordedDeployed(Recorded, Protocol):
    """A protocol of :data:`RECORDED`, deployed."""

    def program(
        self, data: PartyData, roster: Sequence[str], progress: PartyProgress | None = None
    ) -> Callable[[Channel], Any]: ...


def held_tables(task: VerticalTask, only: str | None = None) -> list[PartyData]:
    """What each party holds before alignment: with ``align = "psi"`` its own share of the
    people in its own order (:func:`~fedfleet.vertical._alignment.own_records`), else the
    same rows everywhere."""
    tables = party_tables(task)
    if task.align == "psi":
        tables = own_records(tables, overlap=task.overlap, seed=task.seed)
    if only is not None and only not in task.names:
        raise ConfigError(f"party {only!r} is not one of this task's parties {task.names}")
    return [t for t in tables if only is None or t.name == only]


def _fingerprint(task: VerticalTask, protocol: Any, rows: int) -> str:
    """What a checkpoint must agree on with the run resuming it."""
    is_settings = dataclasses.is_dataclass(protocol) and not isinstance(protocol, type)
    settings = dataclasses.asdict(protocol) if is_settings else {}
    body = {"protocol": task.protocol, "settings": settings, "rows": rows}
    return json.dumps(body, sort_keys=True, default=str)


def model_arrays(result: Any) -> dict[str, np.ndarray] | None:
    """A party's trained piece as named arrays (None: a party or protocol with no model file)."""
    if isinstance(result, SplitNNResult):
        out = {f"bottom/{k}": v for k, v in (result.bottom or {}).items()}
        return out | {f"top/{k}": v for k, v in (result.top or {}).items()}
    if isinstance(result, PartyWeights):
        return {"weights": result.weights, "intercept": np.array([result.intercept])}
    if isinstance(result, SecureBoostModel):  # the trees, base score and the guest's bin edges
        trees = guest_arrays(list(result.trees), result.train_score, [], {})
        out = {k: v for k, v in trees.items() if k.startswith("tree/")}
        out["base"] = np.array([result.base])
        out["edges"] = np.concatenate([np.asarray(e, dtype=np.float64) for e in result.edges])
        out["edges/count"] = np.array([len(e) for e in result.edges], dtype=np.int64)
        return out
    if isinstance(result, SecureBoostHostModel):  # split id -> its feature and threshold
        return {
            "feature": np.array(result.feature, dtype=np.int64),
            "threshold": np.array(result.threshold, dtype=np.float64),
        }
    return None


def _progress(
    task: VerticalTask, protocol: Recorded, run_dir: Path, party: str, fingerprint: str, start: int
) -> RunProgress:
    from fedfleet.runs import RunDir  # the horizontal runs' metrics.jsonl writer

    metrics = RunDir(run_dir, fresh=False) if party == task.names[0] else None
    return RunProgress(
        run_dir, party, fingerprint, resume_from=start, epochs=protocol.epochs, metrics=metrics
    )


def _save_model(run_dir: Path | None, party: str, result: Any, fingerprint: str) -> None:
    if run_dir is None:
        return
    arrays = model_arrays(result)
    if arrays:
        path = save_party_model(run_dir, party, arrays, fingerprint)
        party_logger(party).info("%s saved its model to %s", party, path)


def simulate(
    task: VerticalTask, run_dir: str | Path | None = None, *, resume: bool = False
) -> dict[str, Any]:
    """Every party in this process: PSI (``align = "psi"``), then the protocol, on
    :class:`LocalNetwork`\\ s. Returns the run's summary: the guest's metrics, the rows each
    stage saw, the bytes each party sent (PSI included) and the wall time. With ``run_dir``
    each party checkpoints and saves its model there and the guest writes ``metrics.jsonl``;
    ``resume`` continues from the last epoch every party completed."""
    out = Path(run_dir) if run_dir is not None else None
    start_time = time.perf_counter()
    tables = held_tables(task)
    own_rows = len(tables[0].ids)
    sent: dict[str, int] = {}
    if task.align == "psi":
        tables, psi_network = psi_align(tables, seed=task.seed)
        sent = {t.name: psi_network.bytes_sent(t.name) for t in tables}
        party_logger(tables[0].name).info(
            "%s: PSI aligned %d of its %d records", tables[0].name, len(tables[0].ids), own_rows
        )
    protocol = task.build()
    roster = [t.name for t in tables]
    fingerprint = _fingerprint(task, protocol, len(tables[0].ids))
    programs: Mapping[str, Callable[[Channel], Any]]
    if out is not None and isinstance(protocol, RECORDED):
        recorded = cast(Recorded, protocol)
        start = common_epoch(out, roster) if resume else 0
        progress = {t: _progress(task, recorded, out, t, fingerprint, start) for t in roster}
        programs = recorded.programs({t.name: t for t in tables}, progress)
    else:
        if resume:
            raise ConfigError(
                f"protocol {task.protocol!r} keeps no per-epoch checkpoints, so its runs cannot "
                "be resumed; start it again without --resume"
            )
        programs = protocol.programs({t.name: t for t in tables})
    network = LocalNetwork(list(programs))
    results = run_parties(network, programs)
    for party, result in results.items():
        _save_model(out, party, result, fingerprint)
    for party in programs:
        sent[party] = sent.get(party, 0) + network.bytes_sent(party)
    return _summary(task, own_rows, len(tables[0].ids), results[roster[0]], sent, start_time)


def _summary(
    task: VerticalTask,
    own_rows: int,
    rows: int,
    guest_result: Any,
    sent: dict[str, int],
    start_time: float,
) -> dict[str, Any]:
    """The run's summary (``summary.json``): the guest's records before and after alignment,
    its metrics, the bytes each party sent and the wall time since ``start_time``."""
    return {
        "protocol": task.protocol,
        "dataset": task.dataset,
        "align": task.align,
        "own_rows": own_rows,
        "rows": rows,
        "metrics": guest_metrics(guest_result),
        "bytes_sent": sent,
        "wall_s": time.perf_counter() - start_time,
    }


def _agreed_start(channel: Channel, party: str, data_parties: list[str], mine: int) -> int:
    """The epoch every data party resumes after: each tells the guest the last epoch it has a
    checkpoint of; the guest answers with the smallest (the last one all completed)."""
    guest, hosts = data_parties[0], data_parties[1:]
    if party != guest:
        channel.send(guest, Message("resume-epoch", {"epoch": mine}))
        return int(channel.recv(guest, "resume-from").body["epoch"])
    start = min([mine] + [int(channel.recv(h, "resume-epoch").body["epoch"]) for h in hosts])
    for h in hosts:
        channel.send(h, Message("resume-from", {"epoch": start}))
    return start


def run_party(
    task: VerticalTask,
    party: str,
    channel: Channel,
    run_dir: str | Path | None = None,
    *,
    resume: bool = False,
) -> tuple[Any, dict[str, Any] | None]:
    """One deployed party over ``channel``: PSI with the other data parties
    (``align = "psi"``), then its program of the protocol. Returns its result and, at the
    guest, the run's summary (as :func:`simulate`'s, bytes this party sent only). With
    ``run_dir`` the party checkpoints and saves its own piece there; the guest writes the
    metrics too. ``resume`` (every data party must be given it): the data parties agree over
    the channel on the last epoch all of them completed and go on from there."""
    out = Path(run_dir) if run_dir is not None else None
    log = party_logger(party)
    start_time = time.perf_counter()
    protocol = task.build()
    if not isinstance(protocol, Deployable):
        raise FedfleetError(
            f"protocol {task.protocol!r} runs in simulation only (it has no "
            "program(data, roster)); use fedfleet vertical run"
        )
    if resume and not (out is not None and isinstance(protocol, RECORDED)):
        raise ConfigError(
            f"a deployed {task.protocol!r} party keeps no per-epoch checkpoints, so it cannot "
            "be resumed; start the run again without --resume"
        )
    tables = held_tables(task)
    data_parties = [t.name for t in tables]
    if party in data_parties:
        (table,) = [t for t in tables if t.name == party]
    else:  # a party the protocol adds without data (an arbiter): no records to align
        (table,) = party_tables(task, only=party)
    own_rows = len(table.ids)
    if task.align == "psi" and party in data_parties:
        table = psi_align_party(channel, table, data_parties)
        log.info("%s: PSI aligned %d of its %d records", party, len(table.ids), own_rows)
    fingerprint = _fingerprint(task, protocol, len(table.ids))
    if out is not None and isinstance(protocol, RECORDED):
        recorded = cast(RecordedDeployed, protocol)
        start = 0
        if resume and party in data_parties:
            mine = max(saved_epochs(out, party), default=0)
            start = _agreed_start(channel, party, data_parties, mine)
        progress = _progress(task, recorded, out, party, fingerprint, start)
        result = recorded.program(table, task.names, progress)(channel)
    else:
        result = protocol.program(table, task.names)(channel)
    _save_model(out, party, result, fingerprint)
    if party != task.names[0]:
        return result, None
    sent = {party: getattr(channel, "bytes_sent", 0)}
    return result, _summary(task, own_rows, len(table.ids), result, sent, start_time)
