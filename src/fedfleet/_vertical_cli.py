"""``fedfleet vertical``: run a vertical task in simulation, or deployed (a relay + parties).

    fedfleet vertical run --config task.toml                     all parties in this process
    fedfleet vertical run --resume runs/vertical-split-nn-...      continue a killed run
    fedfleet vertical relay --config task.toml --certs-dir certs   the relay (mutual TLS)
    fedfleet vertical party --config task.toml --party guest --certs-dir certs

The config's ``[vertical]`` section is :class:`fedfleet.vertical._task.VerticalTask`. Only
typer is imported here, so ``fedfleet --help`` stays light; each command imports what it needs.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from fedfleet.errors import FedfleetError

__all__ = ["app"]

app = typer.Typer(
    name="vertical",
    help="Vertical federated learning: parties holding different columns of the same rows.",
    no_args_is_help=True,
)

Config = Annotated[Path, typer.Option(help="TOML with a [vertical] section.")]
Out = Annotated[
    Path | None, typer.Option(help="Run directory (default: runs/vertical-<protocol>-<time>).")
]


def _fail(err: Exception) -> typer.Exit:
    typer.echo(f"error: {err}", err=True)
    return typer.Exit(2)


def _logging() -> None:
    """One line per record on stderr, INFO and up (each party's epochs, PSI, files), as the
    horizontal server and clients log; ``force``: ``fedfleet``'s main installed a WARNING
    handler first."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )


def _new_run(out: Path | None, config: Path, name: str) -> Path:
    """The run directory (``--out``, or a new ``runs/<name>-<time>``) with the config copied."""
    from fedfleet._atomic import atomic_write_bytes
    from fedfleet.runs._rundir import check_new_run, new_run_dir

    if out is not None:
        check_new_run(out)
    path = out if out is not None else new_run_dir("runs", name)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path / "config.toml", config.read_bytes())
    (path / "metrics.jsonl").touch()
    return path


def _write_summary(path: Path, summary: dict[str, Any]) -> None:
    from fedfleet._atomic import atomic_write_bytes

    atomic_write_bytes(path / "summary.json", (json.dumps(summary, indent=1) + "\n").encode())


def _print_summary(summary: dict[str, Any], path: Path) -> None:
    m = summary["metrics"]
    shown = ", ".join(f"{k} {m[k]:.4f}" for k in ("accuracy", "auc", "rmse", "r2") if k in m)
    rows = f"{summary.get('rows', '?')} rows"
    if summary.get("align") == "psi":
        rows += f" aligned by PSI, of the guest's {summary['own_rows']}"
    typer.echo(f"{summary['protocol']}: {shown or 'no metrics'} ({rows})")
    for party, n in summary["bytes_sent"].items():
        typer.echo(f"  {party} sent {n:,} bytes")
    typer.echo(f"run directory {path}")


@app.command()
def run(
    config: Annotated[Path | None, typer.Option(help="TOML with a [vertical] section.")] = None,
    out: Out = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue the run in this directory (its config.toml, checkpoints)."),
    ] = None,
) -> None:
    """Simulate: every party in this process, messages encoded as they would travel."""
    _logging()
    try:
        from fedfleet.vertical import simulate
        from fedfleet.vertical._task import VerticalTask

        if (config is None) == (resume is None):
            raise FedfleetError("give either --config (a new run) or --resume DIR")
        if resume is not None:
            path = resume
            task = VerticalTask.from_toml(resume / "config.toml")
        else:
            assert config is not None
            task = VerticalTask.from_toml(config)
            path = _new_run(out, config, f"vertical-{task.protocol}")
        summary = simulate(task, path, resume=resume is not None)
        _write_summary(path, summary)
    except FedfleetError as e:
        raise _fail(e) from None
    _print_summary(summary, path)


@app.command()
def relay(
    config: Config,
    certs_dir: Annotated[Path, typer.Option(help="ca.pem, server.pem and server.key.")],
    port: Annotated[int | None, typer.Option(help="Override the port of [vertical] relay.")] = None,
    timeout_s: Annotated[float, typer.Option(help="Stop after this long.")] = 24 * 3600.0,
) -> None:
    """Forward the parties' messages until every party is done."""
    try:
        from fedfleet.vertical._net import Relay
        from fedfleet.vertical._task import VerticalTask

        task = VerticalTask.from_toml(config)
        host, _, configured = task.relay.rpartition(":")
        server = Relay(
            task.names,
            certs_dir=certs_dir,
            host=host or "127.0.0.1",
            port=int(configured) if port is None else port,
        )
        bound = server.start()
    except (FedfleetError, ValueError) as e:
        raise _fail(e) from None
    typer.echo(f"relay listening on {server.host}:{bound} for {', '.join(task.names)}", err=True)
    try:
        finished = server.wait(timeout_s)
    finally:
        server.stop()
    for party, n in server.bytes_sent.items():
        typer.echo(f"  {party} sent {n:,} bytes")
    if not finished or server.failures:
        why = "; ".join(f"{p}: {w}" for p, w in server.failures.items()) or "timed out"
        typer.echo(f"error: the task did not finish ({why})", err=True)
        raise typer.Exit(1)
    typer.echo("all parties done")


@app.command()
def party(
    party: Annotated[str, typer.Option(help="This party's name (its certificate's CN).")],
    certs_dir: Annotated[Path, typer.Option(help="ca.pem and <party>.pem/.key.")],
    config: Annotated[Path | None, typer.Option(help="TOML with a [vertical] section.")] = None,
    relay: Annotated[str | None, typer.Option(help="host:port (default [vertical] relay).")] = None,
    out: Out = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue this party's run in this directory (every party resumes)."),
    ] = None,
) -> None:
    """Take part as one party: PSI with the other parties, then the protocol; each party
    writes its own piece of the model and its checkpoints to its run directory, the guest the
    metrics and summary too."""
    _logging()
    try:
        from fedfleet.vertical import run_party
        from fedfleet.vertical._net import RelayChannel
        from fedfleet.vertical._task import VerticalTask

        if (config is None) == (resume is None):
            raise FedfleetError("give either --config (a new run) or --resume DIR")
        task = VerticalTask.from_toml(config or (resume or Path()) / "config.toml")
        if party not in task.names:
            raise FedfleetError(f"party {party!r} is not one of this task's parties {task.names}")
        if resume is not None:
            path = resume
        else:
            assert config is not None
            path = _new_run(out, config, f"vertical-{task.protocol}-{party}")
        channel = RelayChannel(
            relay or task.relay, party=party, parties=task.names, certs_dir=certs_dir
        )
        start = time.perf_counter()
        try:
            _, summary = run_party(task, party, channel, path, resume=resume is not None)
        except BaseException as err:
            channel.close(failure=f"{type(err).__name__}: {err}")
            raise
        channel.close()
        wall = time.perf_counter() - start
    except FedfleetError as e:
        raise _fail(e) from None
    typer.echo(f"{party} done: sent {channel.bytes_sent:,} bytes in {wall:.1f} s")
    if summary is not None:
        _write_summary(path, summary)
        _print_summary(summary, path)
