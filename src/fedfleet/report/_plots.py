"""The report's figures as PNG files, every run overlaid in one colour of its own.

    rounds.png          test accuracy | test loss (solid) and train loss (dashed), by round
    sim_time.png        the same against simulated time (runs with client profiles)
    wall_time.png       the same against wall-clock time
    bytes.png           the same against bytes sent (records with ``bytes_sent``, cumulative,
                        or per-round ``uplink_bytes``/``downlink_bytes``, as every round record has)
    client_accuracy.png per-client accuracy: mean, a +-1 std band, worst 10% (federated eval)
    epsilon.png         the privacy spent, epsilon at the run's delta, by round (DP runs)

A figure is drawn only when at least one run has its metric. Figures are drawn on
``matplotlib.figure.Figure`` objects, not through pyplot, so no global backend or figure state
is touched (the Agg renderer writes the PNG) and reports can be made from any thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedfleet.report._runs import Run

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["COLOURS", "DPI", "FIGSIZE", "Plot", "draw_plots"]

FIGSIZE = (10.0, 4.0)
"""Every figure's size in inches: 1000 x 400 pixels at :data:`DPI`."""
DPI = 100

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
            "#17becf", "#7f7f7f", "#bcbd22")  # fmt: skip


@dataclass(frozen=True)
class Plot:
    """A figure written for the report: its file and what it shows."""

    path: Path
    title: str


@dataclass(frozen=True)
class _Axis:
    """An x axis: its label and, per run, each record's x value (None where it has none)."""

    name: str
    label: str
    values: Callable[[Run], list[float | None]]


def _key(key: str) -> Callable[[Run], list[float | None]]:
    def values(run: Run) -> list[float | None]:
        return [_number(r.get(key)) for r in run.records]

    return values


def _bytes_sent(run: Run) -> list[float | None]:
    if run.has("bytes_sent"):
        return _key("bytes_sent")(run)
    total, out = 0.0, list[float | None]()
    for r in run.records:
        up, down = _number(r.get("uplink_bytes")), _number(r.get("downlink_bytes"))
        if up is None and down is None:
            out.append(None)
            continue
        total += (up or 0.0) + (down or 0.0)
        out.append(total)
    return out


_AXES = (
    _Axis("rounds", "round", _key("round")),
    _Axis("sim_time", "simulated time", _key("sim_time_s")),
    _Axis("wall_time", "wall-clock time", _key("wall_time_s")),
    _Axis("bytes", "bytes sent", _bytes_sent),
)
_NAMES = {f"{a.name}.png" for a in _AXES} | {"client_accuracy.png", "epsilon.png"}
_TITLES = {
    "rounds": "Accuracy and loss by round",
    "sim_time": "Accuracy and loss against simulated time",
    "wall_time": "Accuracy and loss against wall-clock time",
    "bytes": "Accuracy and loss against bytes sent",
}


def draw_plots(runs: Sequence[Run], out: Path) -> list[Plot]:
    """Write every figure that at least one run has data for into ``out``; the figures
    written, in the order the report shows them."""
    plots = []
    for axis in _AXES:
        xs = [axis.values(run) for run in runs]
        if any(x is not None for values in xs for x in values):
            fig = _metric_figure(runs, xs, axis)
            plots.append(_save(fig, out / f"{axis.name}.png", _TITLES[axis.name]))
    if any(run.has("client_accuracy_mean") for run in runs):
        fig = _client_figure(runs)
        plots.append(_save(fig, out / "client_accuracy.png", "Per-client accuracy"))
    if any(run.has("dp_epsilon") for run in runs):
        fig = _epsilon_figure(runs)
        plots.append(_save(fig, out / "epsilon.png", "Privacy spent (epsilon) by round"))
    drawn = {plot.path.name for plot in plots}
    for name in _NAMES - drawn:  # an earlier report's figure these runs have no data for
        (out / name).unlink(missing_ok=True)
    return plots


def _metric_figure(runs: Sequence[Run], xs: list[list[float | None]], axis: _Axis) -> Figure:
    fig = _figure()
    acc, loss = fig.subplots(1, 2)
    scale, unit = _scale(axis.name, [x for values in xs for x in values if x is not None])
    shown = []
    for i, (run, x) in enumerate(zip(runs, xs, strict=True)):
        colour = _colour(i)
        drawn = _line(acc, run, x, "test_accuracy", scale, color=colour)
        drawn |= _line(loss, run, x, "test_loss", scale, color=colour)
        drawn |= _line(loss, run, x, "train_loss", scale, color=colour, linestyle="--", alpha=0.8)
        if drawn:
            shown.append(i)
    xlabel = f"{axis.label} ({unit})" if unit else axis.label
    rounds = axis.name == "rounds"
    _style(acc, "test accuracy", xlabel, "test accuracy", integer_x=rounds)
    _style(loss, "loss", xlabel, "loss (solid: test, dashed: train)", integer_x=rounds)
    _legend(fig, runs, shown)
    return fig


def _client_figure(runs: Sequence[Run]) -> Figure:
    fig = _figure()
    ax = fig.subplots()
    shown = []
    for i, run in enumerate(runs):
        colour = _colour(i)
        rounds, mean = run.series("client_accuracy_mean")
        std = dict(zip(*run.series("client_accuracy_std"), strict=True))
        if not rounds:
            continue
        shown.append(i)
        ax.plot(rounds, mean, color=colour, **_markers(rounds))
        # accuracy lives in [0, 1]: a band past it would only say the spread is skewed
        lo = [max(0.0, m - std.get(r, 0.0)) for r, m in zip(rounds, mean, strict=True)]
        hi = [min(1.0, m + std.get(r, 0.0)) for r, m in zip(rounds, mean, strict=True)]
        ax.fill_between(rounds, lo, hi, color=colour, alpha=0.15, linewidth=0)
        worst_rounds, worst = run.series("client_accuracy_worst10")
        ax.plot(worst_rounds, worst, color=colour, linestyle="--", alpha=0.8)
    title = (
        "per-client accuracy (solid: mean, band: mean \u00b1 1 std, dashed: worst 10% of clients)"
    )
    _style(ax, "client accuracy", "round", title, integer_x=True)
    _legend(fig, runs, shown)
    return fig


def _epsilon_figure(runs: Sequence[Run]) -> Figure:
    fig = _figure()
    ax = fig.subplots()
    for i, run in enumerate(runs):
        rounds, eps = run.series("dp_epsilon")
        if rounds:
            delta = run.final.get("dp_delta")
            label = f"{run.label} (delta {delta:g})" if isinstance(delta, float) else run.label
            ax.plot(rounds, eps, color=_colour(i), label=label, **_markers(rounds))
    _style(ax, "epsilon", "round", "privacy spent: epsilon at the run's delta", integer_x=True)
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", frameon=False)
    return fig


def _figure() -> Figure:
    from matplotlib.figure import Figure  # the `report` extra; lazily, as fedfleet's extras are

    return Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")


def _line(
    ax: Axes,
    run: Run,
    x: list[float | None],
    key: str,
    scale: float,
    **style: Any,
) -> bool:
    """Plot ``key`` against ``x`` where both are numbers; whether anything was drawn."""
    points = [
        (xi / scale, float(y))
        for xi, r in zip(x, run.records, strict=True)
        if xi is not None and (y := _number(r.get(key))) is not None
    ]
    if points:
        px, py = zip(*points, strict=True)
        ax.plot(px, py, **_markers(px), **style)
    return bool(points)


def _markers(xs: Sequence[float]) -> dict[str, Any]:
    """Dots on each point while there are few enough to tell apart."""
    return {"marker": "o", "markersize": 3} if len(xs) <= 40 else {}


def _style(ax: Axes, ylabel: str, xlabel: str, title: str, integer_x: bool = False) -> None:
    ax.set_title(title, fontsize=10, loc="left", color="#444")
    ax.set_ylabel(ylabel)
    ax.set_xlabel(xlabel)
    ax.grid(True, alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    if integer_x:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _legend(fig: Figure, runs: Sequence[Run], shown: Sequence[int]) -> None:
    """One legend above the panels, for the runs drawn in this figure (each run keeps its
    colour in every figure)."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=_colour(i)) for i in shown]
    fig.legend(
        handles,
        [runs[i].label for i in shown],
        loc="outside upper center",
        ncols=max(1, min(len(shown), 5)),
        frameon=False,
    )


def _save(fig: Figure, path: Path, title: str) -> Plot:
    fig.savefig(path, dpi=DPI, format="png")
    return Plot(path, title)


def _scale(axis: str, values: list[float]) -> tuple[float, str]:
    """A divisor and unit that keep tick labels short: seconds, minutes or hours; bytes, kB,
    MB or GB."""
    top = max(values, default=0.0)
    if axis in ("sim_time", "wall_time"):
        for scale, unit in ((3600.0, "h"), (60.0, "min")):
            if top >= 3 * scale:
                return scale, unit
        return 1.0, "s"
    if axis == "bytes":
        for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
            if top >= scale:
                return scale, unit
        return 1.0, "B"
    return 1.0, ""


def _colour(i: int) -> str:
    return COLOURS[i % len(COLOURS)]


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None
