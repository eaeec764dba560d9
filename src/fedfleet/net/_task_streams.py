"""``GetTask``: the long poll that hands a client its task and holds the task's stream open.

One live ``GetTask`` call per client (a newer one ends the older). It waits, holding no thread,
for a task of the open round (TRAIN or EVALUATE), DONE, or ``poll_wait_s`` (WAIT); a task is its
header, then the model's chunk messages (built once per round, or per version, and shared) and
the task's payload. The stream then stays open until the client answers the task or the round
closes: a client that dies while training hangs up the stream, and the round stops waiting for
it at once (it may call back within ``rejoin_grace_s``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np

from fedfleet._proto import fedfleet_pb2 as pb
from fedfleet.net._registration import _Registration
from fedfleet.net._state import _Call, _Client, _Round
from fedfleet.net._wire import chunk_messages, instructions_to_header

__all__ = ["_TaskStreams"]


class _TaskStreams(_Registration):
    """``GetTask`` of ``FederatedServer`` (mixed into it)."""

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
            task_id = header.task_id
            await self._wait_poll(
                info, call, lambda: self._task_settled(current, cid, task_id) or None, None
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

    def _task_settled(self, current: _Round | None, cid: int, task_id: str) -> bool:
        """The stream of task ``task_id`` of ``cid`` in ``current`` can end (``_cond`` held):
        answered, or no longer its task. In an asynchronous round the client may be dispatched
        again as soon as its answer is taken, before this stream looked: the new task (another
        id) settles the old stream, which the client reads to its end before it polls again."""
        if self._done or current is None or self._round is not current:
            return True
        task = current.tasks.get(cid)
        return cid in current.answered or task is None or task.task_id != task_id

    def _broadcast(self, current: _Round, cid: int, payload: list[np.ndarray]) -> Iterator[Any]:
        """The model's chunks (built once per round, or per version, and shared), then the
        payload's."""
        yield from current.broadcast_of(current.tasks[cid])
        for chunk in chunk_messages(payload, self.settings.chunk_size, start=1):
            yield pb.TaskMessage(chunk=chunk)
