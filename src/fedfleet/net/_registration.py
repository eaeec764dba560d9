"""Registration and liveness: Register, which clients count as connected, and waking the calls
that wait on the server's state.

A client registers (``Register``: its layout must be the server's, its sample counts sane), then
polls with ``GetTask``. It is connected, and may be sampled, once it has polled since it
registered, while it has a ``GetTask`` call open or its last call ended less than
``heartbeat_timeout_s`` ago, and not after it hung up. Waiting calls are coroutines that hold
no thread: each waits on its call's event, which :meth:`_Registration._wake` sets from any thread
whenever the state it waits on may have changed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc

from fedfleet._proto import fedfleet_pb2 as pb
from fedfleet.errors import clip_text
from fedfleet.net._identity import _Identity
from fedfleet.net._protocol import PROTOCOL_VERSION, protocol_mismatch
from fedfleet.net._state import _Call, _Client

__all__ = ["_Registration"]

log = logging.getLogger("fedfleet.net.server")


class _Registration(_Identity):
    """``Register``, who is connected, and waking waiting calls (mixed into ``FederatedServer``)."""

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

    def _connected(self) -> list[int]:
        """Clients that can be given a task now (call with ``_cond`` held): they asked for a
        task since registering, and have a GetTask call open or their last call ended within
        ``heartbeat_timeout_s``; not one that hung up."""
        now = time.monotonic()
        limit = self.settings.heartbeat_timeout_s
        return sorted(
            c
            for c, info in self._clients.items()
            if info.polled and not info.gone and (info.waiting or now - info.last_seen <= limit)
        )

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
