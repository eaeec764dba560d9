"""Ctrl-C during a run: the first SIGINT lets the round in progress finish (its checkpoint is
written as every round's is) and stops the run there; a second one abandons the round at once
(the last finished round's checkpoint is already on disk, written atomically).

Why not Python's default ``KeyboardInterrupt``: it lands wherever the main thread happens to
be, in the middle of a cohort on worker threads or processes, and throws away a round that was
nearly done. Lightning stops the same way, at a boundary it can save at.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

__all__ = ["WAIT_ENV", "GracefulInterrupt", "wait_for_test_interrupt"]

WAIT_ENV = "FEDFLEET_TEST_WAIT_IN_ROUND"
"""Test hook: ``"<round>"`` makes ``fedfleet run`` wait, after that round's first client has
trained, until Ctrl-C is requested, so a test interrupts a round in progress without a race."""

log = logging.getLogger("fedfleet.runs.interrupt")


class GracefulInterrupt:
    """A context manager: inside it the first SIGINT sets :attr:`requested` (and calls
    ``on_first``), the second raises ``KeyboardInterrupt``; the old handler is put back on
    exit. Outside the main thread (where signal handlers cannot be set) it does nothing.

    Example::

        with GracefulInterrupt() as stop:
            sim.run(rounds, until=lambda record: stop.requested)
    """

    def __init__(self, on_first: Callable[[], None] | None = None) -> None:
        self.requested = False
        self._on_first = on_first
        self._previous: Any = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self._on_first is not None:
            self._on_first()

    def __enter__(self) -> GracefulInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def wait_for_test_interrupt(stop: GracefulInterrupt, rnd: int, done: int) -> None:
    """The :data:`WAIT_ENV` hook: in round ``rnd`` after its first client (``done == 1``),
    wait for ``stop.requested`` (an hour at most)."""
    if done != 1 or os.environ.get(WAIT_ENV) != str(rnd):
        return
    log.warning("round %d: waiting for Ctrl-C (%s)", rnd, WAIT_ENV)
    deadline = time.monotonic() + 3600
    while not stop.requested and time.monotonic() < deadline:
        time.sleep(0.01)
