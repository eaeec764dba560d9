"""The ``fedfleet`` command line: ``fedfleet run``, ``datasets``, ``new`` and ``algorithms``."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedfleet._extras import missing_extra
from fedfleet.errors import ConfigError, FedfleetError

if TYPE_CHECKING:
    from fedfleet.runs import RunConfig

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="fedfleet: federated learning, simulated or deployed, from the same code.",
)
console = Console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        from fedfleet._version import __version__

        typer.echo(f"fedfleet {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """fedfleet: federated learning, simulated or deployed, from the same code."""


@app.command()
def run(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML run configuration.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override a key, e.g. --set client.lr=0.1 (repeatable)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Write config.toml, metrics.jsonl, checkpoint.safetensors (every round) and "
            "model.safetensors here; default: a new runs/<data>-<strategy>-<time> directory. "
            "A directory that holds a run is refused (see --resume, --overwrite)."
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue the run in this directory from its last checkpoint, with its "
            "config.toml; ends bit-identical to a run that never stopped."
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace the run that --out DIR holds instead of refusing.")
    ] = False,
    tensorboard: Annotated[
        bool,
        typer.Option(help="TensorBoard event files in the run directory (track.tensorboard)."),
    ] = False,
    mlflow: Annotated[
        bool, typer.Option(help="Log to MLflow (track.mlflow; URI: track.mlflow_uri).")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train a model federatedly in simulation (default: digits, 20 clients, FedAvg).

    Each run gets its own directory (runs/<data>-<strategy>-<time>, or --out). Ctrl-C finishes
    the round in progress, keeps its checkpoint and prints the command that resumes the run
    (a second Ctrl-C abandons the round)."""
    from fedfleet.runs import dump_config
    from fedfleet.runs._build import build_run
    from fedfleet.runs._interrupt import GracefulInterrupt, wait_for_test_interrupt
    from fedfleet.runs._resume import load_snapshot, save_snapshot
    from fedfleet.runs._rundir import RunDir, check_new_run, new_run_dir
    from fedfleet.runs._track import check_tracking, open_trackers
    from fedfleet.sim._engine import Simulation, Snapshot
    from fedfleet.tracking._base import record_step

    overrides = [*(set_ or [])]
    overrides += ["track.tensorboard=true"] if tensorboard else []
    overrides += ["track.mlflow=true"] if mlflow else []
    run_dir: RunDir | None = None
    cfg: RunConfig | None = None
    last_round = 0
    try:
        cfg = _resumed_config(resume, config, overrides, out)
        if resume is None and out is not None:
            check_new_run(out, overwrite=overwrite)
        check_tracking(cfg.track)
        t_start = time.perf_counter()
        pieces = build_run(cfg)
        sim = pieces.simulation
        snapshot: Snapshot | None = None
        if resume is not None:
            assert isinstance(sim, Simulation)  # _resumed_config refuses FedBuff
            snapshot = load_snapshot(resume, seed=cfg.seed, layout=sim.trainer.layout)
            run_dir = RunDir(resume, fresh=False)
            run_dir.write_metrics(snapshot.history)
            last_round = snapshot.round
        else:
            path = out or new_run_dir("runs", f"{cfg.data.name}-{cfg.strategy.name}")
            run_dir = RunDir(path)
            run_dir.write_config(dump_config(cfg))
        trackers = open_trackers(cfg, run_dir.path, resume_round=last_round if resume else None)
        console.print(
            f"[bold]fedfleet[/] {cfg.data.name}: {len(pieces.task.train)} train / "
            f"{len(pieces.task.test)} test samples over {sim.federation.num_clients} clients "
            f"({cfg.data.split()}), model {cfg.model.name} "
            f"({sim.trainer.layout.size:,} params), {cfg.strategy.name}, {cfg.rounds} rounds; "
            f"clients train {pieces.executor}; run directory {escape(str(run_dir.path))}"
        )

        def on_first_interrupt() -> None:
            console.print(
                f"[yellow]Ctrl-C:[/] finishing round {last_round + 1}, then stopping "
                "(Ctrl-C again to abandon the round)"
            )

        with (
            trackers,
            GracefulInterrupt(on_first_interrupt) as stop,
            Progress(
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                console=console,
                disable=quiet,
                transient=False,
            ) as progress,
        ):
            rounds_bar = progress.add_task(
                "rounds", total=cfg.rounds, completed=last_round, status=""
            )
            clients_bar = progress.add_task("clients", total=1, status="")

            def on_client(done: int, total: int) -> None:
                progress.update(clients_bar, completed=done, total=total)
                wait_for_test_interrupt(stop, last_round + 1, done)

            def on_round(record: dict[str, Any]) -> None:
                nonlocal last_round
                assert run_dir is not None
                run_dir.append_metrics(record)
                trackers.log_round(record)
                last_round = record_step(record)
                acc = record.get("test_accuracy")
                status = f"train loss {record['train_loss']:.4f}" if record["train_loss"] else ""
                if acc is not None:
                    status += f"  test acc {acc:.4f}"
                if "dp_epsilon" in record:
                    status += f"  eps {record['dp_epsilon']:.3f}"
                progress.update(rounds_bar, advance=1, status=status)

            def stopping(record: dict[str, Any]) -> bool:
                return stop.requested

            if isinstance(sim, Simulation):
                layout, path = sim.trainer.layout, run_dir.path

                def checkpoint(snap: Snapshot) -> None:
                    save_snapshot(path, snap, seed=cfg.seed, layout=layout)

                result = sim.run(
                    cfg.rounds,
                    on_round=on_round,
                    on_client=on_client,
                    until=stopping,
                    resume=snapshot,
                    on_snapshot=checkpoint,
                    on_evaluation=trackers.log_evaluation,
                )
            else:  # FedBuff: asynchronous, no checkpoints (fedfleet.runs._resume)
                result = sim.run(cfg.rounds, on_round=on_round, on_client=on_client, until=stopping)
            if last_round < cfg.rounds and stop.requested:
                raise KeyboardInterrupt
        wall = time.perf_counter() - t_start
        run_dir.save_model(result.vector, result.layout)
        rejected = len(result.rejected)  # this process's; the checkpoint's rounds counted theirs
        if snapshot is not None:
            rejected += sum(r.get("num_rejected", 0) for r in snapshot.history)
        _summary(result.final, cfg.rounds, wall, run_dir.path, rejected)
    except FedfleetError as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        _interrupted(run_dir, last_round, resumable=resume is not None or _resumable(cfg))
        raise typer.Exit(130) from None


def _resumable(cfg: RunConfig | None) -> bool:
    from fedfleet.runs._resume import check_resumable

    if cfg is None:
        return False
    try:
        check_resumable(cfg)
    except ConfigError:
        return False
    return True


def _interrupted(run_dir: Any, last_round: int, *, resumable: bool) -> None:
    """What Ctrl-C left behind and the command that continues the run."""
    from fedfleet.runs._checkpoint import CHECKPOINT_NAME

    if run_dir is not None and not resumable:
        console.print(
            f"[yellow]interrupted[/] after {last_round} rounds (versions); the metrics so far "
            f"are in {escape(str(run_dir.path))}. This run cannot be resumed (asynchronous)"
        )
        return
    if run_dir is None or not (run_dir.path / CHECKPOINT_NAME).is_file():
        where = f" ({escape(str(run_dir.path))})" if run_dir is not None else ""
        console.print(f"[yellow]interrupted[/] before a round was checkpointed{where}")
        return
    console.print(
        f"[yellow]interrupted[/] after round {last_round}; its checkpoint is in "
        f"{escape(str(run_dir.path))}. Continue with:\n  fedfleet run --resume "
        f"{escape(str(run_dir.path))}",
        soft_wrap=True,
    )


def _resumed_config(
    resume: Path | None, config: Path | None, overrides: list[str], out: Path | None
) -> RunConfig:
    """The run's config: from ``--config``/``--set``, or, with ``--resume DIR``, from
    ``DIR/config.toml``, which ``--config``/``--set`` may repeat but not change."""
    from fedfleet.runs import load_config
    from fedfleet.runs._resume import check_resumable, config_changes

    if resume is None:
        return load_config(config, overrides)
    if out is not None and out.resolve() != resume.resolve():
        raise ConfigError(
            f"--resume {resume} writes into {resume}, not --out {out}; leave out --out"
        )
    saved_path = resume / "config.toml"
    if not saved_path.is_file():
        raise ConfigError(
            f"no {saved_path}: --resume takes a directory that fedfleet run --out wrote; start "
            "the run without --resume"
        )
    saved = load_config(saved_path)
    if config is not None or overrides:
        changed = config_changes(saved, load_config(config or saved_path, overrides))
        if changed:
            raise ConfigError(
                f"--resume continues the run configured in {saved_path}, but --config/--set "
                f"change {', '.join(changed)}; leave them out, or start a new run with --out"
            )
    check_resumable(saved)
    return saved


def _summary(final: dict[str, Any], rounds: int, wall: float, out: Path, rejected: int) -> None:
    table = Table(title="fedfleet run summary", show_header=False)
    table.add_row("rounds", str(rounds))
    table.add_row("test accuracy", f"{final.get('test_accuracy', float('nan')):.4f}")
    table.add_row("test loss", f"{final.get('test_loss', float('nan')):.4f}")
    if final.get("train_loss") is not None:
        table.add_row("train loss (last round)", f"{final['train_loss']:.4f}")
    if "client_accuracy_mean" in final:
        table.add_row(
            "client accuracy mean / worst 10% / std",
            f"{final['client_accuracy_mean']:.4f} / {final['client_accuracy_worst10']:.4f} / "
            f"{final['client_accuracy_std']:.4f}",
        )
    if "dp_epsilon" in final:
        table.add_row(
            "privacy (epsilon, delta)", f"({final['dp_epsilon']:.3f}, {final['dp_delta']:g})"
        )
    if "dpsgd_epsilon_max" in final:
        table.add_row("DP-SGD epsilon (worst client)", f"{final['dpsgd_epsilon_max']:.3f}")
    if "sim_time_s" in final:
        table.add_row("simulated time", f"{final['sim_time_s']:.1f} s")
    table.add_row("rejected updates", str(rejected))
    table.add_row("wall time", f"{wall:.1f} s")
    table.add_row("run directory", str(out))
    Console().print(table)


@app.command()
def datasets() -> None:
    """List the datasets fedfleet can load and where each is read from."""
    from fedfleet.data._registry import describe

    table = Table(title="datasets")
    table.add_column("name", no_wrap=True)
    table.add_column("description")
    table.add_column("source")
    for row in describe():
        table.add_row(*row)
    # lazily generated populations (fedfleet.sim._population), not loadable datasets
    table.add_row(
        "synthetic-population",
        "data.num_clients Synthetic(alpha, beta) devices made when sampled; tested on 50 "
        "unseen devices, at chance (each device labels by its own model)",
        "generated",
    )
    table.add_row(
        "synthetic-iid-population",
        "the same with one shared model: a global model learns",
        "generated",
    )
    Console().print(table)


@app.command()
def new(
    name: Annotated[Path, typer.Argument(help="The project's folder (new, or empty).")],
) -> None:
    """Start a project: a model, a data loader, a run config and a test, for you to edit."""
    from fedfleet.scaffold import new_project

    try:
        files = new_project(name)
    except FedfleetError as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(2) from None
    listed = ", ".join(f.name for f in files)
    Console().print(
        f"created {name}/: {listed}\n"
        f"  fedfleet run --config {name}/fedfleet.toml   # train your model on your data\n"
        f"  cd {name} && python -m pytest              # its tests"
    )


def _register_deployment() -> None:
    """``fedfleet server``, ``fedfleet client`` and ``fedfleet certs`` (the gRPC deployment)."""
    from fedfleet._deploy_cli import app as net_app  # not fedfleet.net: no gRPC to start

    app.add_typer(net_app)


_register_deployment()


def _register_vertical() -> None:
    """``fedfleet vertical run|relay|party`` (:mod:`fedfleet.vertical`); typer only, no torch."""
    from fedfleet._vertical_cli import app as vertical_app

    app.add_typer(vertical_app)


_register_vertical()


def _register_report() -> None:
    """``fedfleet report RUN [RUN...]`` (:mod:`fedfleet.report`)."""
    from fedfleet.report._cli import report

    app.command()(report)


_register_report()


def main() -> None:
    logging.basicConfig(
        level=logging.WARNING, format="%(message)s", handlers=[RichHandler(console=console)]
    )
    try:
        app()
    except ImportError as err:  # an optional package a command needs: name its extra
        missing = missing_extra(err)
        if missing is None:
            raise
        console.print(f"[bold red]error:[/] {escape(str(missing))}", soft_wrap=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()


@app.command()
def algorithms(
    name: Annotated[
        str | None, typer.Argument(help="Show the [strategy] keys of this algorithm.")
    ] = None,
) -> None:
    """List the algorithms strategy.name selects, or one algorithm's keys with their defaults."""
    from fedfleet.runs.algorithms import ALGORITHMS

    if name is None:
        table = Table(
            title="algorithms (strategy.name)", caption="fedfleet algorithms NAME: its keys"
        )
        table.add_column("name", no_wrap=True)
        table.add_column("algorithm")
        for entry in ALGORITHMS:
            table.add_row(entry.name, entry.summary)
        Console().print(table)
        return
    try:
        entry = ALGORITHMS[name]
    except ConfigError as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(2) from None
    table = Table(title=f"strategy.name = {entry.name!r}: {entry.summary}")
    table.add_column("key", no_wrap=True)
    table.add_column("default", no_wrap=True)
    table.add_column("what it does")
    for key, field in list(entry.params.model_fields.items())[1:]:
        table.add_row(key, repr(field.default), field.description or "")
    Console().print(table)
