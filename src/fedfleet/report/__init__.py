"""Plots and an HTML page comparing runs: what ``fedfleet report RUN [RUN...]`` writes.

Needs matplotlib (the ``report`` extra: ``pip install 'fedfleet[report]'``), imported only when a
report is drawn.

Example:
    >>> from fedfleet.report import write_report
    >>> page = write_report(["runs/lr-0.2", "runs/lr-0.05"], "report")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fedfleet.errors import ConfigError
from fedfleet.report._plots import COLOURS, DPI, FIGSIZE, Plot, draw_plots
from fedfleet.report._runs import Run, config_differences, load_run, load_runs

__all__ = [
    "DPI",
    "FIGSIZE",
    "Plot",
    "Run",
    "config_differences",
    "load_run",
    "load_runs",
    "write_report",
]

PAGE_NAME = "index.html"


def write_report(runs: Sequence[str | Path], out: str | Path) -> Path:
    """Read the run directories ``runs``, write their PNG figures and ``index.html`` (the
    comparison page, figures embedded) into ``out`` (created if missing; earlier report files
    there are replaced), and return the page's path."""
    loaded = load_runs(runs)  # errors about the runs come before the one about matplotlib
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError(
            "fedfleet report draws with matplotlib, which is not installed: "
            "pip install 'fedfleet[report]'"
        ) from None
    from fedfleet.report._html import render_html

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plots = draw_plots(loaded, out)
    page = out / PAGE_NAME
    page.write_text(render_html(loaded, plots, COLOURS), encoding="utf-8")
    return page
