"""``fedfleet report RUN [RUN...]``: the command, registered by :mod:`fedfleet.cli`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from fedfleet.errors import FedfleetError

__all__ = ["report"]


def report(
    runs: Annotated[
        list[Path], typer.Argument(help="Run directories (fedfleet run --out DIR), one or more.")
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Where the PNG files and index.html go.")
    ] = Path("report"),
) -> None:
    """Plot runs and compare them on one HTML page (final metrics, config differences, plots)."""
    from fedfleet.report import write_report

    err = Console(stderr=True)
    try:
        page = write_report(runs, out)
    except FedfleetError as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(2) from None
    Console().print(f"report: {page} (open it in a browser; the PNG files are beside it)")
