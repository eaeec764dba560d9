"""What the server's round loop and RPC handlers share: per-client records, tasks, the open
round. (What a task, an upload and an evaluation report hold, and their checks, is the codec's:
:mod:`fedfleet._codec`, through :mod:`fedfleet.net._wire`.)"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from fedfleet._proto import fedfleet_pb2 as pb
from fedfleet.client import FitInstructions
from fedfleet.evaluation import ClientEvaluation
from fedfleet.net._loop import ServerLoop, SharedCondition
from fedfleet.net._rejections import RejectionLog
from fedfleet.net._settings import ServerSettings
from fedfleet.params import Layout
from fedfleet.strategies import ClientUpdate

TRAIN, EVALUATE = pb.TaskHeader.TRAIN, pb.TaskHeader.EVALUATE


@dataclass
class _Client:
    num_samples: int
    last_seen: float
    """When its last call to the server ended (monotonic)."""
    num_test_samples: int = 0
    polls: int = 0
    """GetTask calls so far: the newest is the live one, an older one ends."""
    polled: bool = False
    """It has asked for a task since it registered (a client that only registers is never
    sampled: it would hold a round until its deadline)."""
    waiting: bool = False
    """It has a GetTask call open (waiting for a task, or holding its task's stream)."""
    gone: bool = False
    """Its last GetTask call ended by the client hanging up: not connected until it calls."""
    call: _Call | None = None
    """Its live GetTask call (touched on the event loop only)."""


@dataclass
class _Call:
    """One GetTask call: ``wake`` is set when something it waits for may have changed; while
    ``sending`` it is writing a task's messages (paused in flow control if the client does not
    read), so a newer call of the same client ends it by cancelling ``task``."""

    gen: int
    task: asyncio.Task[Any] | None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    sending: bool = False


@dataclass
class _Task:
    rnd: int
    task_id: str
    instructions: FitInstructions | None
    seed: int
    kind: pb.TaskHeader.Kind = TRAIN
    vector: np.ndarray | None = None
    """The model this task trains from when it is not the round's (asynchronous rounds: the
    version the client was dispatched with), and its chunk messages."""
    broadcast: list[pb.TaskMessage] | None = None
    issued: float = 0.0
    """When it was handed out (monotonic; asynchronous rounds time out each task)."""


@dataclass
class _Round:
    rnd: int
    vector: np.ndarray
    tasks: dict[int, _Task]
    selected: set[int]
    accepted: dict[int, tuple[ClientUpdate, int]] = field(default_factory=dict)
    answered: set[int] = field(default_factory=set)
    gone: dict[int, float] = field(default_factory=dict)
    """Selected clients that hung up before answering, and when (monotonic): the round waits
    ``rejoin_grace_s`` for each to call back (a restarted client picks its task up again)."""
    evaluations: dict[int, ClientEvaluation] = field(default_factory=dict)
    broadcast: list[pb.TaskMessage] = field(default_factory=list)
    """The model's chunk messages, built once when the round opens and sent to every client."""
    rows: np.ndarray | None = None
    """``[len(tasks), P]`` float32: row i receives the upload of the i-th task (plan order) and
    becomes its delta in place, so ``weighted_mean`` reads the matrix without stacking."""
    uploading: set[int] = field(default_factory=set)
    """Clients whose upload stream is being received (one at a time per task)."""
    arrived: list[int] = field(default_factory=list)
    """Clients in the order their answers came (accepted or refused)."""
    asynchronous: bool = False
    """An asynchronous round (FedBuff): tasks are added while it is open, each with its own
    model version, and a client's answered task may be replaced by a new one."""

    def vector_of(self, task: _Task) -> np.ndarray:
        return self.vector if task.vector is None else task.vector

    def broadcast_of(self, task: _Task) -> list[pb.TaskMessage]:
        return self.broadcast if task.broadcast is None else task.broadcast

    def settled(self, grace: float) -> bool:
        """Every selected client answered, or hung up more than ``grace`` seconds ago."""
        now = time.monotonic()
        return all(now - self.gone.get(c, math.inf) >= grace for c in self.selected - self.answered)


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class _ServerState:
    """The state ``FederatedServer`` sets up in its constructor and its parts (the handlers, the
    round publishing, the bookkeeping; each a class mixed into it) share. ``_cond`` guards
    ``_clients``, ``_round``, ``_applied``, ``_pending``, ``_done`` and the upload slots."""

    settings: ServerSettings
    layout: Layout
    fingerprint: str
    max_update_norm: float | None
    _loop: ServerLoop
    _cond: SharedCondition
    _clients: dict[int, _Client]
    _round: _Round | None
    _applied: dict[int, int]
    """Per client, the last round whose update from it was aggregated (checkpointed)."""
    _pending: dict[int, int]
    """``_applied`` once the round being aggregated is committed."""
    _done: bool
    _done_message: str
    """Sent to clients with DONE: empty when the run finished, else why it stopped."""
    _told_done: set[int]
    _uploads_open: set[int]
    """Clients with an upload stream open (one each)."""
    _revoked_cache: tuple[str, float, frozenset[str]] | None
    _log_counts: Counter[int | str]
    """Warnings logged per client or peer (see ``_Identity._log_refusal``)."""
    rejected: RejectionLog
