"""The answers to tasks: ``SubmitUpdate`` (a trained model, in chunks) and ``SubmitEvaluation``.

An answer must name the client's open task of its kind (round, random task id), once; stale or
replayed answers are refused. An upload is identified before it sends (its certificate, under
TLS), holds the client's one upload slot, is cut after ``upload_idle_timeout_s`` of silence, is
written straight into its row of the round's ``[K, P]`` matrix, decoded and validated
(:func:`~fedfleet.validation.validate_update`, with ``max_update_norm``) off the event loop. A
refused answer counts as the client's answer (it will not send another), is logged with its
reason and kept in the rejection log; it never reaches aggregation.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

import grpc
import numpy as np

from fedfleet._codec import ArrayReceiver, decode_evaluation, decode_header, decode_results
from fedfleet._proto import fedfleet_pb2 as pb
from fedfleet.errors import UpdateRejected, clip_text
from fedfleet.net._registration import _Registration
from fedfleet.net._state import EVALUATE, TRAIN, _Round, _Task
from fedfleet.net._wire import WireError, receiver
from fedfleet.strategies import ClientUpdate
from fedfleet.validation import validate_update

__all__ = ["_Uploads"]

log = logging.getLogger("fedfleet.net.server")


class _Uploads(_Registration):
    """``SubmitUpdate`` and ``SubmitEvaluation`` of ``FederatedServer`` (mixed into it)."""

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
