"""The progress bar ``Simulation.run`` shows: rounds (with the last round's losses, accuracy
and epsilon) and the round's clients, drawn by rich in a terminal or a Jupyter notebook.

Shown only where someone watches: ``progress=None`` (the default) turns it on when stderr is a
terminal or the code runs in Jupyter (rich detects both), and off in scripts whose output goes
to a file or a pipe, in CI and in tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

__all__ = ["RoundProgress", "round_progress"]


class RoundProgress:
    """The callbacks that advance the bars."""

    def __init__(self, progress: Progress, rounds_bar: TaskID, clients_bar: TaskID) -> None:
        self._progress, self._rounds, self._clients = progress, rounds_bar, clients_bar

    def on_round(self, record: dict[str, Any]) -> None:
        self._progress.update(self._rounds, advance=1, status=status_of(record))

    def on_client(self, done: int, total: int) -> None:
        self._progress.update(self._clients, completed=done, total=total)


def status_of(record: dict[str, Any]) -> str:
    """The round's headline numbers in a few words."""
    parts = []
    if record.get("train_loss") is not None:
        parts.append(f"train loss {record['train_loss']:.4f}")
    if record.get("test_accuracy") is not None:
        parts.append(f"test acc {record['test_accuracy']:.4f}")
    if record.get("dp_epsilon") is not None:
        parts.append(f"eps {record['dp_epsilon']:.3f}")
    return "  ".join(parts)


@contextmanager
def round_progress(show: bool | None, rounds: int, done: int = 0) -> Iterator[RoundProgress | None]:
    """Bars for a run of ``rounds`` rounds, ``done`` of them already run (a resumed run), or
    None where none is shown; ``show`` None decides by where the output goes (a terminal or
    Jupyter: shown)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if show is None:
        show = console.is_terminal or console.is_jupyter
    if not show:
        yield None
        return
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        rounds_bar = progress.add_task("rounds", total=rounds, completed=done, status="")
        clients_bar = progress.add_task("clients", total=1, status="")
        yield RoundProgress(progress, rounds_bar, clients_bar)
