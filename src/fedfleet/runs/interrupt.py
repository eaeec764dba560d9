"""Ctrl-C during a run: the first SIGINT lets the round in progress finish (its checkpoint is
written as every round's is) and stops the run there; a second one abandons the round at once
(the last finished round's checkpoint is already on disk, written atomically).

Why not Python's default ``KeyboardInterrupt``: it lands wherever the main thread happens to
be, in the middle of a cohort on worker threads or processes, and throws away a round that was
nearly done. Lightning stops the same way, at a boundary it can save at.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

__all__ = ["GracefulInterrupt"]


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
