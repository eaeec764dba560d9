"""The server's gRPC handlers: identity, Register, GetTask, SubmitUpdate, SubmitEvaluation.

This is the half of :class:`fedfleet.net.server.FederatedServer` that answers clients; the
round loop that opens and closes tasks is in ``server.py``. Both share ``_cond`` (one
:class:`~fedfleet.net._loop.SharedCondition` guarding ``_clients``, ``_round``, ``_applied`` and
``_done``).

The handlers are coroutines on the server's event loop (``grpc.aio``): a waiting call holds no
thread, so how many clients can wait on the server does not depend on a thread pool. What one
authenticated client can hold is bounded per client: one ``GetTask`` call (a newer one ends the
older), one upload stream, and an upload that stops sending for ``upload_idle_timeout_s`` is cut.

An open round (``_Round``) is either a TRAIN round (selected clients download the model, train
and upload through ``SubmitUpdate``) or an EVALUATE round (connected clients with a held-out
split download the model, evaluate it and report through ``SubmitEvaluation``). Every task has
a random id, so stale or replayed answers are refused. The ``GetTask`` stream that carried a task
stays open until the client answers it or the round closes: a client that dies while training
hangs up that stream, and the round stops waiting for it at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from fedfleet._codec import ArrayReceiver, decode_evaluation, decode_header, decode_results
from fedfleet._proto import fedfleet_pb2 as pb
from fedfleet._proto import fedfleet_pb2_grpc as pb_grpc
from fedfleet.errors import UpdateRejected, clip_text
from fedfleet.net._loop import ServerLoop, SharedCondition
from fedfleet.net._protocol import PROTOCOL_VERSION, protocol_mismatch
from fedfleet.net._rejections import RejectionLog
from fedfleet.net._state import (
    EVALUATE,
    TRAIN,
    _Call,
    _Client,
    _Refused,
    _Round,
    _Task,
)
from fedfleet.net.certs import client_id_from_cn
from fedfleet.net.settings import ServerSettings
from fedfleet.net.wire import WireError, chunk_messages, instructions_to_header, receiver
from fedfleet.params import Layout
from fedfleet.strategies.base import ClientUpdate
from fedfleet.validation import validate_update

__all__ = ["Servicer"]

log = logging.getLogger("fedfleet.net.server")


class Servicer(pb_grpc.FedFleetServicer):
    """RPC handlers over the state the round loop keeps (attributes set by the server)."""

    settings: ServerSettings
    layout: Layout
    fingerprint: str
    max_update_norm: float | None
    _loop: ServerLoop
    _cond: SharedCondition
    _clients: dict[int, _Client]
    _round: _Round | None
    _applied: dict[int, int]
    _done: bool
    _done_message: str
    _told_done: set[int]
    _uploads_open: set[int]
    """Clients with an upload stream open (one each)."""
    _revoked_cache: tuple[str, float, frozenset[str]] | None
    _log_counts: Counter[int | str]
    """Warnings logged per client or peer (see ``_log_refusal``)."""
    rejected: RejectionLog

    # ----- identity --------------------------------------------------------------------------

    def _revoked(self) -> frozenset[str]:
        """The revoked CNs and ids, re-read only when the file changes (every call checks)."""
        path = self.settings.revoked_path
        if path is None and self.settings.certs_dir is not None:
            path = str(Path(self.settings.certs_dir) / "revoked.txt")
        if path is None:
            return frozenset()
        try:
            mtime = os.stat(path).st_mtime_ns
        except FileNotFoundError:
            return frozenset()
        cached = self._revoked_cache
        if cached is not None and cached[0] == path and cached[1] == mtime:
            return cached[2]
        try:
            lines = Path(path).read_text().splitlines()
        except FileNotFoundError:
            return frozenset()
        revoked = frozenset(ln.strip() for ln in lines if ln.strip() and not ln.startswith("#"))
        self._revoked_cache = (path, mtime, revoked)
        return revoked

    def _identify(self, context: Any, claimed: int) -> int:
        """The caller's client id: from its certificate under TLS, as claimed when insecure."""
        if self.settings.insecure:
            if claimed < 0:
                raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "client_id must be >= 0")
            return claimed
        auth = context.auth_context()
        cns = auth.get("x509_common_name") or []
        cn = clip_text(cns[0].decode(errors="replace") if cns else "")
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

    async def _identify_or_abort(self, context: Any, claimed: int) -> int:
        try:
            return self._identify(context, claimed)
        except _Refused as r:
            await context.abort(r.code, r.message)
            raise AssertionError("unreachable") from None  # abort raises

    def caller(self, context: Any) -> str:
        """Who is calling, for a refusal that comes before the message names its sender:
        ``client N`` from its certificate under TLS, else the peer's address."""
        if not self.settings.insecure:
            try:
                return f"client {self._identify(context, -1)}"
            except _Refused:
                pass
        return f"peer {context.peer()}"

    def refuse_headless(self, context: Any, rpc: str) -> str:
        """Log and return the reason for a stream that does not start with its header."""
        who = self.caller(context)
        reason = f"{rpc} from {who}: the stream must start with a header"
        self._log_refusal(who, "refused %s", reason)
        return reason

    def _log_refusal(
        self, who: int | str, fmt: str, *args: Any, level: int = logging.WARNING
    ) -> None:
        """Log about ``who`` (a client id or a peer): every line while they are few, then only
        at powers of two, so a client repeating a call cannot flood the log."""
        counts = self._log_counts
        if who not in counts and len(counts) >= 100_000:
            who = "others"
        counts[who] += 1
        n = counts[who]
        if n <= 10 or n & (n - 1) == 0:
            suffix = f" [{n} such warnings about {who} so far]" if n > 10 else ""
            log.log(level, fmt + suffix, *args)

    def record_rejection(self, rej: UpdateRejected, peer: str) -> None:
        """Keep ``rej`` in the bounded log (call with ``_cond`` held); log it while the
        client's refusals are few, then only at powers of two, so a flood of refused messages
        cannot flood the log either."""
        self.rejected.append(rej)
        self._log_refusal(rej.client_id, "%s (from %s)", rej, peer)

    # ----- waking waiting calls ----------------------------------------------------------------

    def _wake(self, cids: Any = None) -> None:
        """Wake the live GetTask calls of ``cids`` (None: every client), from any thread."""
        if self._loop.in_loop():
            self._wake_now(cids)
        else:
            self._loop.call(self._wake_now, cids)

    def _wake_now(self, cids: Any) -> None:
        with self._cond:
            infos = (
                list(self._clients.values())
                if cids is None
                else [self._clients[c] for c in cids if c in self._clients]
            )
            events = [i.call.wake for i in infos if i.call is not None]
        for event in events:
            event.set()

    async def _wait_poll(
        self, info: _Client, call: _Call, ready: Any, timeout: float | None
    ) -> Any:
        """Wait, holding no thread, until ``ready()`` (called with ``_cond`` held) returns
        something other than None (returned), ``call`` is superseded by a newer GetTask of the
        same client, or ``timeout`` passes (both: None)."""
        event, gen = call.wake, call.gen
        loop = asyncio.get_running_loop()
        end = None if timeout is None else loop.time() + timeout
        while True:
            event.clear()
            with self._cond:
                if info.polls != gen:
                    return None
                value = ready()
            if value is not None:
                return value
            left = None if end is None else end - loop.time()
            if left is not None and left <= 0:
                return None
            try:
                await asyncio.wait_for(event.wait(), left)
            except TimeoutError:
                pass

    # ----- RPCs ------------------------------------------------------------------------------

    async def Register(self, request: pb.RegisterRequest, context: Any) -> Any:
        cid = await self._identify_or_abort(context, request.client_id)
        mismatch = protocol_mismatch(request.protocol_version, PROTOCOL_VERSION)
        if mismatch is not None:  # it would misread every task: refuse it here, by name
            self._log_refusal(cid, "refused client %d: %s", cid, mismatch)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, mismatch)
        if request.layout_fingerprint != self.fingerprint:
            theirs = clip_text(request.layout_fingerprint)
            self._log_refusal(
                cid,
                "refused client %d: model layout %r, the server's is %s",
                cid,
                theirs,
                self.fingerprint,
            )
            return pb.RegisterReply(
                ok=False,
                client_id=cid,
                layout_fingerprint=self.fingerprint,
                protocol_version=PROTOCOL_VERSION,
                message=(
                    f"client {cid} runs model layout {theirs!r} but the server's is "
                    f"{self.fingerprint!r}; use the server's model config"
                ),
            )
        if request.num_samples <= 0 or request.num_test_samples < 0:
            return pb.RegisterReply(
                ok=False,
                client_id=cid,
                message="num_samples must be positive and num_test_samples non-negative",
            )
        with self._cond:
            info = self._clients.get(cid)
            if info is None:
                self._clients[cid] = info = _Client(0, 0.0)
            info.num_samples, info.num_test_samples = (
                int(request.num_samples),
                int(request.num_test_samples),
            )
            info.last_seen, info.gone, info.polled = time.monotonic(), False, False
            self._cond.notify_all()
        self._log_refusal(
            f"registrations of {cid}",
            "client %d registered from %s (%d samples, %d held out)",
            cid,
            context.peer(),
            request.num_samples,
            request.num_test_samples,
            level=logging.INFO,
        )
        return pb.RegisterReply(
            ok=True,
            client_id=cid,
            layout_fingerprint=self.fingerprint,
            protocol_version=PROTOCOL_VERSION,
        )

    async def GetTask(self, request: pb.TaskRequest, context: Any) -> None:
        cid = await self._identify_or_abort(context, request.client_id)
        with self._cond:
            info = self._clients.get(cid)
            if info is not None:
                info.polls += 1
                call, older = _Call(info.polls, asyncio.current_task()), info.call
                info.call = call
                info.waiting, info.gone, info.polled = True, False, True
                info.last_seen = time.monotonic()
                if self._round is not None:
                    self._round.gone.pop(cid, None)  # it is back: wait for its answer again
                self._cond.notify_all()
        if info is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, f"client {cid}: register before GetTask"
            )
            return
        if older is not None:  # one GetTask per client: the older call ends
            older.wake.set()  # a waiting call answers WAIT (or ends its held task stream)
            if older.sending and older.task is not None:
                older.task.cancel()  # a send paused in flow control never sees the wake
        current: _Round | None = None
        try:
            found = await self._wait_poll(
                info, call, lambda: self._task_for(cid), self.settings.poll_wait_s
            )
            if found is None:
                await context.write(pb.TaskMessage(header=pb.TaskHeader(kind=pb.TaskHeader.WAIT)))
                return
            header, current, payload = found
            call.sending = True
            await context.write(pb.TaskMessage(header=header))
            if header.kind == pb.TaskHeader.DONE:
                return
            for msg in self._broadcast(current, cid, payload):
                await context.write(msg)
            call.sending = False
            # hold the stream open until the task is answered or the round closes: if the
            # client dies meanwhile, this call is cancelled and the round stops waiting for it
            await self._wait_poll(
                info, call, lambda: self._task_settled(current, cid) or None, None
            )
        except asyncio.CancelledError:
            self._hung_up(info, call, current, cid)
            raise
        finally:
            with self._cond:
                if info.polls == call.gen:
                    info.waiting, info.last_seen = False, time.monotonic()
                    self._cond.notify_all()

    def _hung_up(self, info: _Client, call: _Call, current: _Round | None, cid: int) -> None:
        """``call`` was cancelled: the client hung up, unless a newer call superseded it."""
        with self._cond:
            if info.polls != call.gen:
                return
            info.gone = True
            if current is not None and cid not in current.answered:
                current.gone[cid] = time.monotonic()
                self._log_refusal(
                    cid, "round %d: client %d hung up before answering its task", current.rnd, cid
                )
            self._cond.notify_all()

    def _task_for(self, cid: int) -> tuple[pb.TaskHeader, _Round | None, list[np.ndarray]] | None:
        """The header (and round and payload) to send ``cid`` now, None to keep waiting;
        called with ``_cond`` held."""
        applied = self._applied.get(cid, -1)
        if self._done:
            self._told_done.add(cid)
            self._cond.notify_all()
            done = pb.TaskHeader(
                kind=pb.TaskHeader.DONE, applied_round=applied, message=self._done_message
            )
            return done, None, []
        rnd = self._round
        if rnd is None or cid not in rnd.tasks or cid in rnd.answered:
            return None
        task = rnd.tasks[cid]
        header = pb.TaskHeader(
            kind=task.kind,
            round=task.rnd,
            task_id=task.task_id,
            layout_fingerprint=self.fingerprint,
            applied_round=applied,
        )
        payload = instructions_to_header(
            task.instructions, header, rnd.vector_of(task), seed=task.seed, client_id=cid
        )
        return header, rnd, payload

    def _task_settled(self, current: _Round | None, cid: int) -> bool:
        """The task stream of ``cid`` in ``current`` can end (``_cond`` held)."""
        return self._done or self._round is not current or cid in current.answered  # type: ignore[union-attr]

    def _broadcast(self, current: _Round, cid: int, payload: list[np.ndarray]) -> Iterator[Any]:
        """The model's chunks (built once per round, or per version, and shared), then the
        payload's."""
        yield from current.broadcast_of(current.tasks[cid])
        for chunk in chunk_messages(payload, self.settings.chunk_size, start=1):
            yield pb.TaskMessage(chunk=chunk)

    async def _next_message(self, messages: Any, what: str) -> Any:
        """The next message of an upload stream (None at its end); a client that sends
        nothing for ``upload_idle_timeout_s`` loses the stream."""
        try:
            return await asyncio.wait_for(anext(messages), self.settings.upload_idle_timeout_s)
        except StopAsyncIteration:
            return None
        except TimeoutError:
            raise WireError(
                f"{what} sent nothing for {self.settings.upload_idle_timeout_s:g} s "
                "(upload_idle_timeout_s); the stream is closed"
            ) from None

    async def SubmitUpdate(self, request_iterator: Any, context: Any) -> Any:
        messages = aiter(request_iterator)
        known: int | None = None  # under TLS the caller is known before it sends anything
        if not self.settings.insecure:
            known = await self._identify_or_abort(context, -1)
            refusal = self._claim_upload_slot(known)
            if refusal is not None:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
        try:
            return await self._receive_update(messages, context, known)
        finally:
            if known is not None:
                with self._cond:
                    self._uploads_open.discard(known)

    def _claim_upload_slot(self, cid: int) -> str | None:
        """Take ``cid``'s one upload slot; the reason it cannot, or None."""
        with self._cond:
            if cid in self._uploads_open:
                return f"client {cid} already has an upload stream open (one at a time)"
            self._uploads_open.add(cid)
            return None

    async def _receive_update(self, messages: Any, context: Any, known: int | None) -> Any:
        peer = context.peer()
        try:
            first = await self._next_message(messages, f"{self.caller(context)}'s update stream")
        except WireError as err:
            who = self.caller(context)
            self._log_refusal(who, "refused SubmitUpdate from %s: %s", who, err)
            return pb.UpdateReply(accepted=False, reason=str(err))
        if first is None or first.WhichOneof("body") != "header":
            reason = self.refuse_headless(context, "SubmitUpdate")
            return pb.UpdateReply(accepted=False, reason=reason)
        h = first.header
        if known is None:  # insecure: the header names the client; still one stream each
            cid = await self._identify_or_abort(context, h.client_id)
            refusal = self._claim_upload_slot(cid)
            if refusal is not None:
                return pb.UpdateReply(accepted=False, reason=refusal)
            try:
                return await self._receive_body(messages, h, cid, peer)
            finally:
                with self._cond:
                    self._uploads_open.discard(cid)
        return await self._receive_body(messages, h, known, peer)

    async def _receive_body(self, messages: Any, h: Any, cid: int, peer: str) -> Any:
        claimed: _Round | None = None
        rnd = int(h.round)
        try:
            rnd, task, vector, max_samples, claimed, row = self._open_task(cid, h)
            if h.layout_fingerprint != self.fingerprint:
                raise WireError(
                    f"update is for layout {clip_text(h.layout_fingerprint)!r}, the server's "
                    f"is {self.fingerprint!r}"
                )
            source = f"client {cid}'s update"
            rx = receiver(h.reply, source, kind="results", size=self.layout.size, out={0: row})
            while (msg := await self._next_message(messages, f"client {cid}'s upload")) is not None:
                if msg.WhichOneof("body") != "chunk":
                    raise WireError("a second header inside one update stream")
                if self._round is not claimed:
                    raise WireError(f"round {rnd} closed while the upload was arriving")
                rx.add(msg.chunk.tensor, msg.chunk.offset, msg.chunk.data)
            update = await asyncio.to_thread(self._decode_update, rx, vector, row, cid)
            await asyncio.to_thread(
                validate_update,
                update,
                self.layout,
                rnd,
                {cid},
                max_samples=max_samples,
                instructions=task.instructions,
                max_norm=self.max_update_norm,
            )
        except (WireError, UpdateRejected) as err:
            reason = err.reason if isinstance(err, UpdateRejected) else str(err)
            rej = UpdateRejected(cid, rnd, reason)
            with self._cond:
                self.record_rejection(rej, peer)
                if claimed is not None:
                    self._close_task(cid, rnd, h.task_id, TRAIN)
            return pb.UpdateReply(accepted=False, reason=rej.reason)
        except (grpc.RpcError, asyncio.CancelledError):
            self._log_refusal(cid, "client %d: upload stream broke off in round %d", cid, rnd)
            if claimed is not None:
                with self._cond:
                    claimed.uploading.discard(cid)  # it may send the upload again
            raise
        with self._cond:
            current = self._round
            if current is None or current.tasks.get(cid) is not task or cid in current.answered:
                return pb.UpdateReply(accepted=False, reason="the round closed before the upload")
            current.accepted[cid] = (update, 1 + len(update.extras))
            current.answered.add(cid)
            current.arrived.append(cid)
            self._clients[cid].last_seen = time.monotonic()
            self._cond.notify_all()
        self._wake([cid])  # its task stream can end
        log.info(
            "round %d: accepted update from client %d (%d samples, %d steps)",
            rnd,
            cid,
            update.num_samples,
            update.num_steps,
        )
        return pb.UpdateReply(accepted=True)

    @staticmethod
    def _decode_update(
        rx: ArrayReceiver, vector: np.ndarray, row: np.ndarray, cid: int
    ) -> ClientUpdate:
        results = decode_results(rx.finish())
        if len(results) != 1:
            raise WireError(f"client {cid}'s update holds {len(results)} replies, expected 1")
        fit, extras, state = results[0].fit, results[0].extras, results[0].state
        if fit.vector is not row:  # array 0 was written into the row; nothing may alias it
            raise WireError(f"client {cid}'s update: the trained vector must be array 0")
        if state is not None:
            raise WireError(f"client {cid}'s update carries client state, which never leaves it")
        delta = np.subtract(fit.vector, vector, out=row)  # trained - global
        metrics = {clip_text(k): v for k, v in fit.metrics.items()}
        return ClientUpdate(
            cid, delta, int(fit.num_samples), int(fit.num_steps), metrics, dict(extras)
        )

    async def SubmitEvaluation(self, request: pb.EvaluationResult, context: Any) -> Any:
        cid = await self._identify_or_abort(context, request.client_id)
        rnd, task_id = int(request.round), request.task_id
        with self._cond:
            try:
                current, _ = self._find_task(cid, rnd, task_id, EVALUATE)
                report = decode_evaluation(
                    decode_header(request.report, f"client {cid}'s evaluation").with_arrays([]),
                    registered=self._clients[cid].num_test_samples,
                )
            except WireError as err:
                self.record_rejection(
                    UpdateRejected(cid, rnd, f"evaluation refused: {err}"), context.peer()
                )
                self._close_task(cid, rnd, task_id, EVALUATE)
                return pb.EvaluationReply(accepted=False, reason=str(err))
            current.evaluations[cid] = report
            current.answered.add(cid)
            self._clients[cid].last_seen = time.monotonic()
            self._cond.notify_all()
        self._wake([cid])
        return pb.EvaluationReply(accepted=True)

    # ----- tasks -----------------------------------------------------------------------------

    def _find_task(
        self, cid: int, rnd: int, task_id: str, kind: pb.TaskHeader.Kind
    ) -> tuple[_Round, _Task]:
        """The open task of ``cid`` named by (round, task id, kind); call with ``_cond`` held."""
        if cid not in self._clients:
            raise WireError("client is not registered")
        current = self._round
        if current is None or cid not in current.tasks or current.tasks[cid].rnd != rnd:
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
        if current is not None and cid in current.tasks and cid not in current.answered:
            task = current.tasks[cid]
            if task.rnd == rnd and task.task_id == task_id and task.kind == kind:
                current.answered.add(cid)
                current.arrived.append(cid)
                self._cond.notify_all()
                self._wake([cid])

    def _open_task(
        self, cid: int, h: pb.UpdateHeader
    ) -> tuple[int, _Task, np.ndarray, int, _Round, np.ndarray]:
        """Claim the client's open TRAIN task for one upload stream; returns (round, task,
        global vector, registered samples, the round, the row the upload is written into)."""
        with self._cond:
            current, task = self._find_task(cid, int(h.round), h.task_id, TRAIN)
            if cid in current.uploading:
                raise WireError("an upload for this task is already being received")
            if current.asynchronous:  # tasks come and go: a row of its own
                row = np.empty(self.layout.size, np.float32)
            else:
                if current.rows is None:
                    current.rows = np.empty((len(current.tasks), self.layout.size), np.float32)
                row = current.rows[list(current.tasks).index(cid)]
            current.uploading.add(cid)
            vector = current.vector_of(task)
            return task.rnd, task, vector, self._clients[cid].num_samples, current, row
