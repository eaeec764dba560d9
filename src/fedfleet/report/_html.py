"""The report's HTML page: one self-contained file comparing runs side by side.

One column per run: the runs (label, directory), their final metrics (the best run's value in
bold where higher or lower is better), their configs' differences (only the keys whose values
are not the same in every run), and the figures, embedded as base64 PNGs so the page can be
mailed or attached on its own (each also links its PNG file beside the page).
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable, Sequence
from html import escape
from typing import Any

from fedfleet.report._plots import Plot
from fedfleet.report._runs import Run, config_differences

__all__ = ["render_html"]

_Format = Callable[[float], str]


def _fixed(digits: int) -> _Format:
    return lambda v: f"{v:.{digits}f}"


def _seconds(v: float) -> str:
    return f"{v:,.1f} s"


def _bytes(v: float) -> str:
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if v >= scale:
            return f"{v / scale:,.2f} {unit}"
    return f"{v:,.0f} B"


# (key, label, format, which is best: "max", "min" or "")
_FINAL_ROWS: tuple[tuple[str, str, _Format, str], ...] = (
    ("round", "rounds run", lambda v: f"{v:.0f}", ""),
    ("test_accuracy", "test accuracy", _fixed(4), "max"),
    ("test_loss", "test loss", _fixed(4), "min"),
    ("train_loss", "train loss (last round)", _fixed(4), "min"),
    ("client_accuracy_mean", "client accuracy: mean", _fixed(4), "max"),
    ("client_accuracy_worst10", "client accuracy: worst 10%", _fixed(4), "max"),
    ("client_accuracy_std", "client accuracy: std", _fixed(4), "min"),
    ("dp_epsilon", "epsilon", _fixed(3), "min"),
    ("dp_delta", "delta", lambda v: f"{v:g}", ""),
    ("sim_time_s", "simulated time", _seconds, "min"),
    ("wall_time_s", "wall-clock time", _seconds, "min"),
    ("bytes_sent", "bytes sent", _bytes, "min"),
)

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1100px; color: #222; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
.meta { color: #666; font-size: 0.9rem; }
table { border-collapse: collapse; font-size: 0.9rem; margin: 0.5rem 0; }
th, td { padding: 0.3rem 0.8rem; border-bottom: 1px solid #eee; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { border-bottom: 2px solid #ccc; }
td.key { font-family: ui-monospace, monospace; }
td.missing { color: #aaa; }
.swatch { display: inline-block; width: 0.8em; height: 0.8em; margin-right: 0.4em;
          border-radius: 2px; vertical-align: middle; }
figure { margin: 1rem 0 2rem; }
figure img { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: 0.9rem; }
"""


def render_html(runs: Sequence[Run], plots: Sequence[Plot], colours: Sequence[str]) -> str:
    """The page for ``runs`` with ``plots`` (PNG files that exist) embedded."""
    diff = config_differences(runs)
    equal = len({k for run in runs for k in run.config}) - len(diff)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>fedfleet report: {escape(', '.join(r.label for r in runs))}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>fedfleet report</h1>",
        f'<p class="meta">{len(runs)} run{"s" if len(runs) != 1 else ""}, made {now}</p>',
        "<h2>Runs</h2>",
        _runs_table(runs, colours),
        "<h2>Final metrics</h2>",
        _final_table(runs),
        "<h2>Configuration differences</h2>",
        _diff_table(runs, diff, equal),
    ]
    if plots:
        parts.append("<h2>Plots</h2>")
        parts.extend(_figure(plot) for plot in plots)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _header(runs: Sequence[Run], first: str) -> str:
    cells = "".join(f"<th>{escape(run.label)}</th>" for run in runs)
    return f"<thead><tr><th>{escape(first)}</th>{cells}</tr></thead>"


def _runs_table(runs: Sequence[Run], colours: Sequence[str]) -> str:
    rows = [
        f'<tr><td><span class="swatch" style="background:{colours[i % len(colours)]}"></span>'
        f"{escape(run.label)}</td><td>{escape(str(run.path.resolve()))}</td>"
        f"<td>{escape(str(run.config.get('strategy.name', '')))}</td></tr>"
        for i, run in enumerate(runs)
    ]
    head = "<thead><tr><th>run</th><th>directory</th><th>strategy</th></tr></thead>"
    return f"<table>{head}<tbody>{''.join(rows)}</tbody></table>"


def _final_table(runs: Sequence[Run]) -> str:
    finals = [_with_totals(run) for run in runs]
    rows = []
    for key, label, fmt, best in _FINAL_ROWS:
        values = [f.get(key) for f in finals]
        numbers = [v for v in values if isinstance(v, int | float)]
        if not numbers:
            continue
        # bold marks the best of several runs' values, not a lone one
        top = (max if best == "max" else min)(numbers) if best and len(numbers) > 1 else None
        cells = []
        for v in values:
            if not isinstance(v, int | float):
                cells.append('<td class="missing">&ndash;</td>')
            elif v == top:
                cells.append(f"<td><b>{escape(fmt(v))}</b></td>")
            else:
                cells.append(f"<td>{escape(fmt(v))}</td>")
        rows.append(f"<tr><td>{escape(label)}</td>{''.join(cells)}</tr>")
    best_cells = "".join(f"<td>{escape(_best_accuracy(run))}</td>" for run in runs)
    rows.append(f"<tr><td>best test accuracy (round)</td>{best_cells}</tr>")
    rejected = "".join(f"<td>{f.get('num_rejected_total', 0):.0f}</td>" for f in finals)
    rows.append(f"<tr><td>rejected updates</td>{rejected}</tr>")
    return f"<table>{_header(runs, 'metric')}<tbody>{''.join(rows)}</tbody></table>"


def _with_totals(run: Run) -> dict[str, Any]:
    final = dict(run.final)
    final["num_rejected_total"] = sum(r.get("num_rejected") or 0 for r in run.records)
    if "bytes_sent" not in final:
        ups = [(r.get("uplink_bytes") or 0) + (r.get("downlink_bytes") or 0) for r in run.records]
        if any(ups):
            final["bytes_sent"] = float(sum(ups))
    return final


def _best_accuracy(run: Run) -> str:
    rounds, acc = run.series("test_accuracy")
    if not acc:
        return "\u2013"
    i = max(range(len(acc)), key=acc.__getitem__)
    return f"{acc[i]:.4f} ({rounds[i]})"


def _diff_table(runs: Sequence[Run], diff: dict[str, list[Any]], equal: int) -> str:
    if len(runs) < 2:
        return '<p class="meta">One run: nothing to compare.</p>'
    note = f'<p class="meta">{equal} keys with the same value in every run are not shown.</p>'
    if not diff:
        return '<p class="meta">The runs have identical configurations.</p>'
    rows = []
    for key, values in diff.items():
        cells = "".join(
            '<td class="missing">&ndash;</td>' if v is None else f"<td>{escape(_value(v))}</td>"
            for v in values
        )
        rows.append(f'<tr><td class="key">{escape(key)}</td>{cells}</tr>')
    table = f"<table>{_header(runs, 'key')}<tbody>{''.join(rows)}</tbody></table>"
    return table + note


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _figure(plot: Plot) -> str:
    data = base64.b64encode(plot.path.read_bytes()).decode("ascii")
    name = escape(plot.path.name)
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{escape(plot.title)}">'
        f'<figcaption>{escape(plot.title)} (<a href="{name}">{name}</a>)</figcaption></figure>'
    )
