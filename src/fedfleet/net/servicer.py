"""The server's gRPC handlers: identity, Register, GetTask, SubmitUpdate, SubmitEvaluation.

This is the half of :class:`fedfleet.net.server.FederatedServer` that answers clients; the
round loop that opens and closes tasks is in ``server.py``. Both share ``_cond`` (one
condition variable guarding ``_clients``, ``_round``, ``_applied`` and ``_done``).

An open round (``_Round``) is either a TRAIN round (selected clients download the model, train
and upload through ``SubmitUpdate``) or an EVALUATE round (connected clients with a held-out
split download the model, evaluate it and report through ``SubmitEvaluation``). Every task has
a random id, so stale or replayed answers are refused.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from fedfleet.client.protocol import FitInstructions
from fedfleet.errors import UpdateRejected
from fedfleet.net import fedfleet_pb2 as pb
from fedfleet.net import fedfleet_pb2_grpc as pb_grpc
from fedfleet.net.certs import client_id_from_cn
from fedfleet.net.wire import (
    MAX_EXTRAS,
    TensorReceiver,
    WireError,
    chunk_messages,
    scalar_from_pb,
    scalar_to_pb,
    tensor_infos,
)
from fedfleet.params import Layout
from fedfleet.strategies.base import ClientUpdate
from fedfleet.validation import validate_update

if TYPE_CHECKING:
    from fedfleet.net.server import ServerSettings

__all__ = ["Servicer", "instructions_from_header", "instructions_to_header"]

log = logging.getLogger("fedfleet.net.server")

TRAIN, EVALUATE = pb.TaskHeader.TRAIN, pb.TaskHeader.EVALUATE


def instructions_to_header(ins: FitInstructions, header: pb.TaskHeader) -> None:
    header.epochs = ins.epochs
    header.batch_size = ins.batch_size
    header.lr = ins.lr
    header.max_steps = -1 if ins.max_steps is None else ins.max_steps
    for k, v in ins.config.items():
        header.config[k].CopyFrom(scalar_to_pb(v))


def instructions_from_header(
    header: pb.TaskHeader, payload: dict[str, np.ndarray]
) -> FitInstructions:
    return FitInstructions(
        epochs=int(header.epochs),
        batch_size=int(header.batch_size),
        lr=float(header.lr),
        max_steps=None if header.max_steps < 0 else int(header.max_steps),
        config={k: scalar_from_pb(v) for k, v in header.config.items()},
        payload=payload,
    )


@dataclass
class _Client:
    num_samples: int
    last_seen: float
    num_test_samples: int = 0


@dataclass
class _Task:
    rnd: int
    task_id: str
    instructions: FitInstructions | None
    seed: int
    kind: pb.TaskHeader.Kind = TRAIN


@dataclass
class _Round:
    rnd: int
    vector: np.ndarray
    tasks: dict[int, _Task]
    selected: set[int]
    accepted: dict[int, tuple[ClientUpdate, int]] = field(default_factory=dict)
    answered: set[int] = field(default_factory=set)
    evaluations: dict[int, pb.EvaluationResult] = field(default_factory=dict)
    broadcast: list[pb.TaskMessage] = field(default_factory=list)
    """The model's chunk messages, built once when the round opens and sent to every client."""
    rows: np.ndarray | None = None
    """``[len(tasks), P]`` float32: row i receives the upload of the i-th task (plan order) and
    becomes its delta in place, so ``weighted_mean`` reads the matrix without stacking."""
    uploading: set[int] = field(default_factory=set)
    """Clients whose upload stream is being received (one at a time per task)."""


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class Servicer(pb_grpc.FedFleetServicer):
    """RPC handlers over the state the round loop keeps (attributes set by the server)."""

    settings: ServerSettings
    layout: Layout
    fingerprint: str
    _cond: threading.Condition
    _clients: dict[int, _Client]
    _round: _Round | None
    _applied: dict[int, int]
    _done: bool
    _told_done: set[int]
    rejected: list[UpdateRejected]

    # ----- identity --------------------------------------------------------------------------

    def _revoked(self) -> set[str]:
        path = self.settings.revoked_path
        if path is None and self.settings.certs_dir is not None:
            path = str(Path(self.settings.certs_dir) / "revoked.txt")
        if path is None:
            return set()
        try:
            lines = Path(path).read_text().splitlines()
        except FileNotFoundError:
            return set()
        return {ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")}

    def _identify(self, context: grpc.ServicerContext, claimed: int) -> int:
        """The caller's client id: from its certificate under TLS, as claimed when insecure."""
        if self.settings.insecure:
            if claimed < 0:
                raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "client_id must be >= 0")
            return claimed
        auth = context.auth_context()
        cns = auth.get("x509_common_name") or []
        cn = cns[0].decode(errors="replace") if cns else ""
        cid = client_id_from_cn(cn)
        if cid is None:
            log.warning("refused peer %s: certificate CN %r names no client", context.peer(), cn)
            raise _Refused(
                grpc.StatusCode.PERMISSION_DENIED,
                f"certificate CN {cn!r} is not a client certificate (expected client-<id>)",
            )
        revoked = self._revoked()
        if cn in revoked or str(cid) in revoked:
            log.warning("refused revoked client %s (CN %r) from %s", cid, cn, context.peer())
            raise _Refused(
                grpc.StatusCode.PERMISSION_DENIED, f"the credential of {cn} has been revoked"
            )
        return cid

    def caller(self, context: grpc.ServicerContext) -> str:
        """Who is calling, for a refusal that comes before the message names its sender:
        ``client N`` from its certificate under TLS, else the peer's address."""
        if not self.settings.insecure:
            try:
                return f"client {self._identify(context, -1)}"
            except _Refused:
                pass
        return f"peer {context.peer()}"

    def refuse_headless(self, context: grpc.ServicerContext, rpc: str) -> str:
        """Log and return the reason for a stream that does not start with its header."""
        reason = f"{rpc} from {self.caller(context)}: the stream must start with a header"
        log.warning("refused %s", reason)
        return reason

    # ----- RPCs ------------------------------------------------------------------------------

    def Register(self, request: pb.RegisterRequest, context: grpc.ServicerContext) -> Any:
        try:
            cid = self._identify(context, request.client_id)
        except _Refused as r:
            context.abort(r.code, r.message)
        if request.layout_fingerprint != self.fingerprint:
            log.warning(
                "refused client %d: model layout %s, the server's is %s",
                cid,
                request.layout_fingerprint,
                self.fingerprint,
            )
            return pb.RegisterReply(
                ok=False,
                client_id=cid,
                layout_fingerprint=self.fingerprint,
                message=(
                    f"client {cid} runs model layout {request.layout_fingerprint!r} but the "
                    f"server's is {self.fingerprint!r}; use the server's model config"
                ),
            )
        if request.num_samples <= 0 or request.num_test_samples < 0:
            return pb.RegisterReply(
                ok=False,
                client_id=cid,
                message="num_samples must be positive and num_test_samples non-negative",
            )
        with self._cond:
            self._clients[cid] = _Client(
                int(request.num_samples), time.monotonic(), int(request.num_test_samples)
            )
            self._cond.notify_all()
        log.info(
            "client %d registered from %s (%d samples, %d held out)",
            cid,
            context.peer(),
            request.num_samples,
            request.num_test_samples,
        )
        return pb.RegisterReply(ok=True, client_id=cid, layout_fingerprint=self.fingerprint)

    def GetTask(self, request: pb.TaskRequest, context: grpc.ServicerContext) -> Any:
        try:
            cid = self._identify(context, request.client_id)
        except _Refused as r:
            context.abort(r.code, r.message)
        deadline = time.monotonic() + self.settings.poll_wait_s
        with self._cond:
            if cid not in self._clients:
                context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION, f"client {cid}: register before GetTask"
                )
            while True:
                self._clients[cid].last_seen = time.monotonic()
                self._cond.notify_all()
                rnd = self._round
                applied = self._applied.get(cid, -1)
                if self._done:
                    self._told_done.add(cid)
                    self._cond.notify_all()
                    done = pb.TaskHeader(kind=pb.TaskHeader.DONE, applied_round=applied)
                    yield pb.TaskMessage(header=done)
                    return
                if rnd is not None and cid in rnd.tasks and cid not in rnd.answered:
                    task, current = rnd.tasks[cid], rnd
                    break
                left = deadline - time.monotonic()
                if left <= 0 or not context.is_active():
                    yield pb.TaskMessage(header=pb.TaskHeader(kind=pb.TaskHeader.WAIT))
                    return
                self._cond.wait(min(left, 0.5))
        header = pb.TaskHeader(
            kind=task.kind,
            round=task.rnd,
            seed=task.seed,
            task_id=task.task_id,
            layout_fingerprint=self.fingerprint,
            applied_round=applied,
        )
        payload: dict[str, np.ndarray] = {}
        if task.instructions is not None:
            instructions_to_header(task.instructions, header)
            payload = dict(task.instructions.payload)
        header.tensors.extend(tensor_infos({"vector": current.vector, **payload}))
        yield pb.TaskMessage(header=header)
        yield from self._broadcast(current, payload)

    def _broadcast(self, current: _Round, payload: dict[str, np.ndarray]) -> Iterator[Any]:
        """The model's chunks (built once per round and shared), then the payload's."""
        yield from current.broadcast
        for chunk in chunk_messages(list(payload.values()), self.settings.chunk_size, start=1):
            yield pb.TaskMessage(chunk=chunk)

    def SubmitUpdate(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:
        try:
            first = next(request_iterator, None)
            if first is None or first.WhichOneof("body") != "header":
                reason = self.refuse_headless(context, "SubmitUpdate")
                return pb.UpdateReply(accepted=False, reason=reason)
            h = first.header
            cid = self._identify(context, h.client_id)
        except _Refused as r:
            context.abort(r.code, r.message)
        except grpc.RpcError:
            return pb.UpdateReply(accepted=False, reason="stream broken")
        claimed: _Round | None = None
        try:
            rnd, task, vector, max_samples, claimed, row = self._open_task(cid, h)
            if h.layout_fingerprint != self.fingerprint:
                raise WireError(
                    f"update is for layout {h.layout_fingerprint!r}, the server's is "
                    f"{self.fingerprint!r}"
                )
            receiver = TensorReceiver(h.tensors, self.layout.size, {"vector": row})
            if receiver.names[0] != "vector":
                raise WireError(f"the first tensor must be 'vector', got {receiver.names[0]!r}")
            for msg in request_iterator:
                if msg.WhichOneof("body") != "chunk":
                    raise WireError("a second header inside one update stream")
                receiver.add(msg.chunk)
            arrays = receiver.finish()
            delta = np.subtract(arrays.pop("vector"), vector, out=row)  # trained - global
            update = ClientUpdate(
                cid,
                delta,
                int(h.num_samples),
                int(h.num_steps),
                dict(h.metrics),
                arrays,
            )
            validate_update(
                update,
                self.layout,
                rnd,
                {cid},
                max_samples=max_samples,
                instructions=task.instructions,
            )
        except (WireError, UpdateRejected) as err:
            reason = err.reason if isinstance(err, UpdateRejected) else str(err)
            rej = UpdateRejected(cid, int(h.round), reason)
            log.warning("%s (from %s)", rej, context.peer())
            with self._cond:
                self.rejected.append(rej)
                if claimed is not None:
                    self._close_task(cid, int(h.round), h.task_id, TRAIN)
            return pb.UpdateReply(accepted=False, reason=reason)
        except grpc.RpcError:
            log.warning("client %d: upload stream broke off in round %d", cid, h.round)
            if claimed is not None:
                with self._cond:
                    claimed.uploading.discard(cid)  # it may send the upload again
            return pb.UpdateReply(accepted=False, reason="stream broken")
        with self._cond:
            current = self._round
            if current is None or current.tasks.get(cid) is not task or cid in current.answered:
                return pb.UpdateReply(accepted=False, reason="the round closed before the upload")
            current.accepted[cid] = (update, len(h.tensors))
            current.answered.add(cid)
            self._clients[cid].last_seen = time.monotonic()
            self._cond.notify_all()
        log.info(
            "round %d: accepted update from client %d (%d samples, %d steps)",
            rnd,
            cid,
            update.num_samples,
            update.num_steps,
        )
        return pb.UpdateReply(accepted=True)

    def SubmitEvaluation(self, request: pb.EvaluationResult, context: grpc.ServicerContext) -> Any:
        try:
            cid = self._identify(context, request.client_id)
        except _Refused as refused:
            context.abort(refused.code, refused.message)
        rnd, task_id = int(request.round), request.task_id
        with self._cond:
            try:
                current, _ = self._find_task(cid, rnd, task_id, EVALUATE)
                problem = _evaluation_problem(request, self._clients[cid].num_test_samples)
                if problem is not None:
                    raise WireError(problem)
            except WireError as err:
                log.warning("client %d: evaluation for round %d refused: %s", cid, rnd, err)
                self._close_task(cid, rnd, task_id, EVALUATE)
                return pb.EvaluationReply(accepted=False, reason=str(err))
            current.evaluations[cid] = request
            current.answered.add(cid)
            self._clients[cid].last_seen = time.monotonic()
            self._cond.notify_all()
        return pb.EvaluationReply(accepted=True)

    # ----- tasks -----------------------------------------------------------------------------

    def _find_task(
        self, cid: int, rnd: int, task_id: str, kind: pb.TaskHeader.Kind
    ) -> tuple[_Round, _Task]:
        """The open task of ``cid`` named by (round, task id, kind); call with ``_cond`` held."""
        if cid not in self._clients:
            raise WireError("client is not registered")
        current = self._round
        if current is None or current.rnd != rnd or cid not in current.tasks:
            raise WireError(f"no open task for client {cid} in round {rnd}")
        task = current.tasks[cid]
        if not secrets.compare_digest(task.task_id, task_id):
            raise WireError("task id does not match this round's task (stale or replayed)")
        if task.kind != kind:
            name = pb.TaskHeader.Kind.Name(task.kind)
            raise WireError(f"the open task of client {cid} in round {rnd} is a {name} task")
        if cid in current.answered:
            raise WireError("this task was already answered (replayed)")
        return current, task

    def _close_task(self, cid: int, rnd: int, task_id: str, kind: pb.TaskHeader.Kind) -> None:
        """Count a refused answer to the open task as the client's answer (it will not send
        another); an answer of the wrong kind or for another task leaves the task open."""
        current = self._round
        if current is not None and current.rnd == rnd and cid in current.tasks:
            task = current.tasks[cid]
            if task.task_id == task_id and task.kind == kind:
                current.answered.add(cid)
                self._cond.notify_all()

    def _open_task(
        self, cid: int, h: pb.UpdateHeader
    ) -> tuple[int, _Task, np.ndarray, int, _Round, np.ndarray]:
        """Claim the client's open TRAIN task for one upload stream; returns (round, task,
        global vector, registered samples, the round, the row the upload is written into)."""
        with self._cond:
            current, task = self._find_task(cid, int(h.round), h.task_id, TRAIN)
            if len(h.tensors) > 1 + MAX_EXTRAS:
                raise WireError(f"{len(h.tensors)} tensors declared, at most {1 + MAX_EXTRAS}")
            if cid in current.uploading:
                raise WireError("an upload for this task is already being received")
            if current.rows is None:
                current.rows = np.empty((len(current.tasks), self.layout.size), np.float32)
            current.uploading.add(cid)
            row = current.rows[list(current.tasks).index(cid)]
            return current.rnd, task, current.vector, self._clients[cid].num_samples, current, row


def _evaluation_problem(r: pb.EvaluationResult, registered: int) -> str | None:
    """What is wrong with an evaluation report, or None."""
    pairs = [("loss", r.loss, "accuracy", r.accuracy)]
    if r.personalized:
        pairs.append(("global_loss", r.global_loss, "global_accuracy", r.global_accuracy))
    for lname, loss, aname, acc in pairs:
        if not (math.isfinite(loss) and math.isfinite(acc)):
            return f"{lname} {loss} / {aname} {acc} must be finite"
        if not 0.0 <= acc <= 1.0:
            return f"{aname} {acc} outside [0, 1]"
        if loss < 0:
            return f"{lname} {loss} is negative"
    if not 0 <= r.num_samples <= registered:
        return (
            f"num_samples {r.num_samples} outside 0..{registered}, the held-out samples the "
            "client registered with"
        )
    return None
