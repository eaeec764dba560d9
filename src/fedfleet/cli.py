"""The ``fedfleet`` command line: ``fedfleet run``, ``datasets`` and ``algorithms``."""

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
    from fedfleet.runs.config import RunConfig

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
            "model.safetensors here."
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue the run in this --out directory from its last checkpoint, with its "
            "config.toml; ends bit-identical to a run that never stopped."
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train a model federatedly in simulation (default: digits, 20 clients, FedAvg)."""
    from fedfleet.runs.build import build_run
    from fedfleet.runs.checkpoint import CHECKPOINT_NAME
    from fedfleet.runs.config import dump_config
    from fedfleet.runs.resume import load_snapshot, save_snapshot
    from fedfleet.runs.rundir import RunDir
    from fedfleet.sim.engine import Simulation, Snapshot

    try:
        cfg = _resumed_config(resume, config, set_ or [], out)
        t_start = time.perf_counter()
        pieces = build_run(cfg)
        sim = pieces.simulation
        out = resume or out
        snapshot: Snapshot | None = None
        run_dir = RunDir(out, fresh=resume is None) if out is not None else None
        if resume is not None:
            assert isinstance(sim, Simulation)  # _resumed_config refuses FedBuff
            snapshot = load_snapshot(resume, seed=cfg.seed, layout=sim.trainer.layout)
            assert run_dir is not None
            run_dir.write_metrics(snapshot.history)
        elif run_dir is not None:
            # a kill before round 1 ends must not leave an earlier run's checkpoint beside
            # this run's config for --resume to find
            (run_dir.path / CHECKPOINT_NAME).unlink(missing_ok=True)
            run_dir.write_config(dump_config(cfg))
        console.print(
            f"[bold]fedfleet[/] {cfg.data.name}: {len(pieces.task.train)} train / "
            f"{len(pieces.task.test)} test samples over {sim.federation.num_clients} clients "
            f"({cfg.data.split()}), model {cfg.model.name} "
            f"({sim.trainer.layout.size:,} params), {cfg.strategy.name}, {cfg.rounds} rounds; "
            f"clients train {pieces.executor}"
        )
        with Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
            disable=quiet,
            transient=False,
        ) as progress:
            done = snapshot.round if snapshot is not None else 0
            rounds_bar = progress.add_task("rounds", total=cfg.rounds, completed=done, status="")
            clients_bar = progress.add_task("clients", total=1, status="")

            def on_client(done: int, total: int) -> None:
                progress.update(clients_bar, completed=done, total=total)

            def on_round(record: dict[str, Any]) -> None:
                if run_dir is not None:
                    run_dir.append_metrics(record)
                acc = record.get("test_accuracy")
                status = f"train loss {record['train_loss']:.4f}" if record["train_loss"] else ""
                if acc is not None:
                    status += f"  test acc {acc:.4f}"
                if "dp_epsilon" in record:
                    status += f"  eps {record['dp_epsilon']:.3f}"
                progress.update(rounds_bar, advance=1, status=status)

            if isinstance(sim, Simulation):
                layout = sim.trainer.layout
                path = run_dir.path if run_dir is not None else None

                def checkpoint(snap: Snapshot) -> None:
                    assert path is not None
                    save_snapshot(path, snap, seed=cfg.seed, layout=layout)

                result = sim.run(
                    cfg.rounds,
                    on_round=on_round,
                    on_client=on_client,
                    resume=snapshot,
                    on_snapshot=checkpoint if path is not None else None,  # no --out: none
                )
            else:  # FedBuff: asynchronous, no checkpoints (fedfleet.runs.resume)
                result = sim.run(cfg.rounds, on_round=on_round, on_client=on_client)
        wall = time.perf_counter() - t_start
        if run_dir is not None:
            run_dir.save_model(result.vector, result.layout)
        rejected = len(result.rejected)  # this process's; the checkpoint's rounds counted theirs
        if snapshot is not None:
            rejected += sum(r.get("num_rejected", 0) for r in snapshot.history)
        _summary(result.final, cfg.rounds, wall, out, rejected)
    except FedfleetError as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(2) from None


def _resumed_config(
    resume: Path | None, config: Path | None, overrides: list[str], out: Path | None
) -> RunConfig:
    """The run's config: from ``--config``/``--set``, or, with ``--resume DIR``, from
    ``DIR/config.toml``, which ``--config``/``--set`` may repeat but not change."""
    from fedfleet.runs.config import load_config
    from fedfleet.runs.resume import check_resumable, config_changes

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


def _summary(
    final: dict[str, Any], rounds: int, wall: float, out: Path | None, rejected: int
) -> None:
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
    if out is not None:
        table.add_row("outputs", str(out))
    Console().print(table)


@app.command()
def datasets() -> None:
    """List the datasets fedfleet can load and where each is read from."""
    from fedfleet.data.registry import describe

    table = Table(title="datasets")
    table.add_column("name", no_wrap=True)
    table.add_column("description")
    table.add_column("source")
    for row in describe():
        table.add_row(*row)
    # lazily generated populations (fedfleet.sim.population), not loadable datasets
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


def _register_deployment() -> None:
    """``fedfleet server``, ``fedfleet client`` and ``fedfleet certs`` (the gRPC deployment)."""
    from fedfleet._deploy_cli import app as net_app  # not fedfleet.net: no gRPC to start

    app.add_typer(net_app)


_register_deployment()


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
