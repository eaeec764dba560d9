"""``fedfleet vertical``: run a vertical task in simulation, or deployed (a relay + parties).

    fedfleet vertical run --config task.toml                     all parties in this process
    fedfleet vertical relay --config task.toml --certs-dir certs   the relay (mutual TLS)
    fedfleet vertical party --config task.toml --party guest --certs-dir certs

The config's ``[vertical]`` section is :class:`fedfleet.vertical._task.VerticalTask`. Only
typer is imported here, so ``fedfleet --help`` stays light; each command imports what it needs.
"""

from __future__ import annotations

import json
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


def _write_run(out: Path | None, config: Path, protocol: str, summary: dict[str, Any]) -> Path:
    from fedfleet._atomic import atomic_write_bytes
    from fedfleet.runs._rundir import new_run_dir

    path = out if out is not None else new_run_dir("runs", f"vertical-{protocol}")
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path / "config.toml", config.read_bytes())
    atomic_write_bytes(path / "metrics.json", (json.dumps(summary, indent=1) + "\n").encode())
    return path


def _print_summary(summary: dict[str, Any], path: Path) -> None:
    m = summary["metrics"]
    shown = ", ".join(f"{k} {m[k]:.4f}" for k in ("accuracy", "auc", "rmse", "r2") if k in m)
    typer.echo(f"{summary['protocol']}: {shown or 'no metrics'} ({summary.get('rows', '?')} rows)")
    for party, n in summary["bytes_sent"].items():
        typer.echo(f"  {party} sent {n:,} bytes")
    typer.echo(f"run directory {path}")


@app.command()
def run(config: Config, out: Out = None) -> None:
    """Simulate: every party in this process, messages encoded as they would travel."""
    try:
        from fedfleet.vertical._task import VerticalTask, simulate

        task = VerticalTask.from_toml(config)
        summary = simulate(task)
        path = _write_run(out, config, task.protocol, summary)
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
    config: Config,
    party: Annotated[str, typer.Option(help="This party's name (its certificate's CN).")],
    certs_dir: Annotated[Path, typer.Option(help="ca.pem and <party>.pem/.key.")],
    relay: Annotated[str | None, typer.Option(help="host:port (default [vertical] relay).")] = None,
    out: Out = None,
) -> None:
    """Take part as one party; the guest writes the run directory."""
    try:
        from fedfleet.vertical._net import RelayChannel
        from fedfleet.vertical._registry import Deployable
        from fedfleet.vertical._task import VerticalTask, guest_metrics, party_tables

        task = VerticalTask.from_toml(config)
        (table,) = party_tables(task, only=party)
        protocol = task.build()
        if not isinstance(protocol, Deployable):
            raise FedfleetError(
                f"protocol {task.protocol!r} runs in simulation only (it has no "
                "program(data, roster)); use fedfleet vertical run"
            )
        program = protocol.program(table, task.names)
        channel = RelayChannel(
            relay or task.relay, party=party, parties=task.names, certs_dir=certs_dir
        )
        start = time.perf_counter()
        try:
            result = program(channel)
        except BaseException as err:
            channel.close(failure=f"{type(err).__name__}: {err}")
            raise
        channel.close()
        wall = time.perf_counter() - start
    except FedfleetError as e:
        raise _fail(e) from None
    typer.echo(f"{party} done: sent {channel.bytes_sent:,} bytes in {wall:.1f} s")
    if party == task.names[0]:
        summary = {
            "protocol": task.protocol,
            "dataset": task.dataset,
            "rows": len(table.ids),
            "metrics": guest_metrics(result),
            "bytes_sent": {party: channel.bytes_sent},
            "wall_s": wall,
        }
        _print_summary(summary, _write_run(out, config, task.protocol, summary))
