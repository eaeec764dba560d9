"""The server's event loop thread, and a condition both threads and coroutines can wait on.

The gRPC server runs on ``grpc.aio``: every call is a coroutine on one event loop, so a waiting
long poll, a client training with its task stream open, or a stalled upload costs a few KB of
memory and no thread. The round loop itself stays plain blocking code on the caller's thread
(it is easier to read, and tests drive it directly); the two meet in :class:`SharedCondition`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["ServerLoop", "SharedCondition"]

T = TypeVar("T")


class ServerLoop:
    """An asyncio event loop running in a daemon thread of its own."""

    def __init__(self, name: str = "fedfleet-grpc") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._started = False

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    @property
    def running(self) -> bool:
        return self._started and not self.loop.is_closed()

    def in_loop(self) -> bool:
        return threading.current_thread() is self._thread

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result (from any other thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Call ``fn(*args)`` on the loop soon (from any thread; a no-op once closed)."""
        if not self.running:
            return
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # closed between the check and the call
            pass

    def close(self, timeout: float = 10.0) -> None:
        if not self.running:
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()


class SharedCondition:
    """A ``threading.Condition`` whose ``notify_all`` also wakes coroutines on a ServerLoop.

    Threads use it as a condition (``with c: ... c.wait(t)``, ``c.notify_all()`` with the lock
    held). Coroutines call ``await c.wait_for(predicate, timeout)``: ``predicate`` is evaluated
    with the lock held, and the coroutine sleeps without holding a thread until the next
    ``notify_all`` from either side. No wake-up is lost: a coroutine takes the current wake-up
    event before it evaluates the predicate, and a notify sets that event.
    """

    def __init__(self, loop: ServerLoop) -> None:
        self._cond = threading.Condition()
        self._server_loop = loop
        self._event: asyncio.Event | None = None  # touched on the loop thread only

    def __enter__(self) -> bool:
        return self._cond.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._cond.__exit__(*exc)

    def wait(self, timeout: float | None = None) -> bool:
        return self._cond.wait(timeout)

    def notify_all(self) -> None:
        self._cond.notify_all()
        if self._event is not None:
            self._server_loop.call(self._fire)

    def _fire(self) -> None:
        event, self._event = self._event, None
        if event is not None:
            event.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        """Wait until ``predicate()`` (checked with the lock held) is true, or ``timeout``
        seconds pass; returns the predicate's last value."""
        loop = asyncio.get_running_loop()
        end = None if timeout is None else loop.time() + timeout
        while True:
            if self._event is None:
                self._event = asyncio.Event()
            event = self._event
            with self._cond:
                if predicate():
                    return True
            left = None if end is None else end - loop.time()
            if left is not None and left <= 0:
                return False
            try:
                await asyncio.wait_for(event.wait(), left)
            except TimeoutError:
                pass
