"""Command-line entry points: ``server``, ``client`` and ``certs``, as a typer sub-app.

``fedfleet``'s main app registers them (commands ``fedfleet server``, ``fedfleet client``,
``fedfleet certs``); ``python -m fedfleet.net --help`` runs them alone. The module lives outside
:mod:`fedfleet.net` so that ``fedfleet --help`` lists them without importing the deployment
(gRPC, the ``deploy`` extra) or torch; each command imports what it needs when it runs.
:mod:`fedfleet.net._cli` re-exports it.

A config file is a run config (the same TOML ``fedfleet run`` reads: seed, data, model,
strategy, client training) plus an optional ``[deploy]`` section with this process's network
settings; command-line options override the ``[deploy]`` values.
"""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fedfleet.errors import FedfleetError

if TYPE_CHECKING:
    from fedfleet.runs import RunConfig

__all__ = ["CLIENT_KEYS", "SERVER_KEYS", "app", "certs", "client", "read_config", "server"]

app = typer.Typer(help="Deploy a federation over gRPC: server, clients, credentials.")

SERVER_KEYS = {
    "host", "port", "min_clients", "min_accept", "round_timeout_s", "heartbeat_timeout_s",
    "poll_wait_s", "chunk_size", "max_message_bytes", "certs_dir", "revoked_path", "insecure",
    "run_dir", "rejoin_grace_s", "upload_idle_timeout_s", "max_concurrent_rpcs",
    "max_rejections_kept",
}  # fmt: skip
CLIENT_KEYS = {
    "server", "client_id", "certs_dir", "cert", "key", "ca", "insecure", "server_name",
    "chunk_size", "max_message_bytes", "backoff_initial_s", "backoff_max_s", "give_up_after_s",
    "state_dir",
}  # fmt: skip


def read_config(
    path: Path | None, valid: set[str] | None = None
) -> tuple[RunConfig, dict[str, Any]]:
    """The run config in ``path`` and its ``[deploy]`` section (checked against ``valid``)."""
    from fedfleet.runs._config import validate_config

    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise FedfleetError(f"cannot read config {str(path)!r}: {e}") from None
    deploy = dict(raw.pop("deploy", {}))
    valid = valid if valid is not None else SERVER_KEYS | CLIENT_KEYS
    unknown = set(deploy) - valid
    if unknown:
        raise FedfleetError(
            f"unknown key(s) {sorted(unknown)} in [deploy]; valid keys: {', '.join(sorted(valid))}"
        )
    return validate_config(raw), deploy


def _logging(verbose: bool) -> None:
    """This process's log: one plain line per record on stderr, INFO and up with --verbose.

    ``force``: these commands own the log, whoever configured it first (``fedfleet``'s main
    installs a WARNING handler before it dispatches here), so ``fedfleet server`` and
    ``python -m fedfleet.net server`` print the same lines.
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )


def _fail(err: Exception) -> typer.Exit:
    typer.echo(f"error: {err}", err=True)
    return typer.Exit(2)


@app.command()
def server(
    config: Annotated[
        Path | None, typer.Option(help="Run config TOML (+ optional [deploy]).")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Interface to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port (0 = a free one).")] = None,
    certs_dir: Annotated[
        Path | None, typer.Option(help="ca.pem, server.pem/.key, revoked.txt.")
    ] = None,
    insecure: Annotated[bool, typer.Option(help="Plaintext, no client authentication.")] = False,
    resume: Annotated[Path | None, typer.Option(help="Continue the run in this directory.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Run directory (checkpoint, metrics, model).")
    ] = None,
    min_clients: Annotated[
        int | None, typer.Option(help="Clients needed to start a round.")
    ] = None,
    min_accept: Annotated[int | None, typer.Option(help="Valid updates to accept a round.")] = None,
    round_timeout: Annotated[float | None, typer.Option(help="Round deadline, seconds.")] = None,
    port_file: Annotated[Path | None, typer.Option(help="Write the bound port here.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose/--quiet")] = True,
) -> None:
    """Serve a federated run; clients connect with `client`."""
    _logging(verbose)
    try:
        from fedfleet.net import FederatedServer, ServerSettings
        from fedfleet.runs import RunDir, dump_config

        run_dir = resume or out
        if config is None and resume is not None and (resume / "config.toml").exists():
            config = resume / "config.toml"
        cfg, deploy = read_config(config, SERVER_KEYS)
        given = {
            "host": host, "port": port, "min_clients": min_clients, "min_accept": min_accept,
            "round_timeout_s": round_timeout, "run_dir": str(run_dir) if run_dir else None,
            "certs_dir": str(certs_dir) if certs_dir else None,
        }  # fmt: skip
        deploy.update({k: v for k, v in given.items() if v is not None})
        if insecure:
            deploy["insecure"] = True
        if insecure:
            typer.echo("WARNING: --insecure: no TLS, no client authentication", err=True)
        settings = ServerSettings(**deploy)
        run_dir = Path(settings.run_dir) if settings.run_dir else None
        srv = FederatedServer.from_config(cfg, settings)
        bound = srv.start()
        typer.echo(f"fedfleet server listening on {settings.host}:{bound}", err=True)
        if port_file is not None:
            tmp = port_file.with_name(port_file.name + ".tmp")
            tmp.write_text(str(bound))
            tmp.replace(port_file)
        rundir = None
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
            # the deployed config (noise from the OS CSPRNG), which --resume reads back
            assert srv.config is not None  # built from the config
            (run_dir / "config.toml").write_text(dump_config(srv.config))
        try:
            result = srv.run(resume=resume is not None)
        finally:
            srv.stop()
        if run_dir is not None:
            rundir = RunDir(run_dir)
            for record in result["history"]:
                rundir.append_metrics(record)
            rundir.save_model(result["vector"], result["layout"])
        final = result["history"][-1] if result["history"] else {}
        typer.echo(f"done: {len(result['history'])} rounds, final {final.get('test_accuracy')}")
    except FedfleetError as e:
        raise _fail(e) from None


@app.command()
def client(
    server_address: Annotated[str | None, typer.Option("--server", help="host:port.")] = None,
    config: Annotated[
        Path | None, typer.Option(help="Run config TOML (+ optional [deploy]).")
    ] = None,
    client_id: Annotated[
        int | None, typer.Option(help="This client's id (its data partition).")
    ] = None,
    certs_dir: Annotated[Path | None, typer.Option(help="ca.pem and client-<id>.pem/.key.")] = None,
    cert: Annotated[Path | None, typer.Option(help="Client certificate (PEM).")] = None,
    key: Annotated[Path | None, typer.Option(help="Client private key (PEM).")] = None,
    insecure: Annotated[bool, typer.Option(help="Plaintext, no authentication.")] = False,
    data: Annotated[
        Path | None,
        typer.Option(
            help="This client's own data (.npz or .safetensors with x and y); default: its "
            "partition of the config's dataset."
        ),
    ] = None,
    test_data: Annotated[
        Path | None,
        typer.Option(
            help="This client's held-out data for federated evaluation (same format as --data)."
        ),
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            help="Keep this client's private state (control variates, personal heads) here, "
            "so a restarted client continues with it."
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose/--quiet")] = True,
) -> None:
    """Join a federation: train on local data whenever the server asks."""
    _logging(verbose)
    try:
        import torch

        from fedfleet.net import ClientSettings, FederatedClient
        from fedfleet.net._certs import client_id_from_cn, read_pem

        cfg, deploy = read_config(config, CLIENT_KEYS)
        given = {
            "server": server_address,
            "certs_dir": str(certs_dir) if certs_dir else None,
            "cert": str(cert) if cert else None,
            "key": str(key) if key else None,
            "state_dir": str(state_dir) if state_dir else None,
        }
        deploy.update({k: v for k, v in given.items() if v is not None})
        if insecure:
            deploy["insecure"] = True
            typer.echo("WARNING: --insecure: no TLS, no client authentication", err=True)
        cid = client_id if client_id is not None else deploy.pop("client_id", None)
        deploy.pop("client_id", None)
        if cid is None and deploy.get("cert"):
            from cryptography import x509
            from cryptography.x509.oid import NameOID

            c = x509.load_pem_x509_certificate(read_pem(deploy["cert"], "client certificate"))
            cn = c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
            cid = client_id_from_cn(str(cn))
        if cid is None:
            raise FedfleetError("pass --client-id (or a --cert whose CN is client-<id>)")
        if "server" not in deploy:
            raise FedfleetError("pass --server HOST:PORT or set server in [deploy]")
        torch.set_num_threads(cfg.threads)
        local = local_test = None
        if data is not None or test_data is not None:
            from fedfleet.data import load_arrays
            from fedfleet.runs._build import load_task_for

            task = load_task_for(cfg)
            local = load_arrays(data, task) if data is not None else None
            local_test = load_arrays(test_data, task) if test_data is not None else None
        fc = FederatedClient.from_config(
            cfg, ClientSettings(**deploy), int(cid), data=local, test_data=local_test
        )
        rounds = fc.run()
        typer.echo(f"client {cid} done: trained in rounds {rounds}")
    except FedfleetError as e:
        raise _fail(e) from None


@app.command()
def certs(
    out_dir: Annotated[Path, typer.Option(help="Where to write the CA and certificates.")] = Path(
        "certs"
    ),
    num_clients: Annotated[int, typer.Option(help="Client certificates to issue.")] = 2,
    party: Annotated[
        list[str] | None,
        typer.Option(help="Also a certificate named PARTY (vertical FL: guest, host-0); repeat."),
    ] = None,
) -> None:
    """Create a local CA, a server certificate (localhost, 127.0.0.1) and client certificates."""
    try:
        from fedfleet.net._certs import create_test_federation, issue_certificate

        for name in party or []:
            if not name or name in ("ca", "server") or not name.replace("-", "").isalnum():
                raise FedfleetError(
                    f"party name {name!r}: use letters, digits and '-', not 'ca' or 'server'"
                )
        d = create_test_federation(out_dir, num_clients)
        for name in party or []:
            issue_certificate(d, name)
    except FedfleetError as e:
        raise _fail(e) from None
    named = f" and {len(party)} party certificates ({', '.join(party)})" if party else ""
    typer.echo(f"wrote CA, server and {num_clients} client certificates{named} to {d}")
    ignore = d / ".gitignore"
    kept_out = ignore.exists() and "*" in ignore.read_text().split()
    typer.echo(
        f"{d / 'ca.key'} and the *.key files are private"
        + (f" ({ignore} keeps them out of git)" if kept_out else "; never commit them")
        + "; give each client only ca.pem and its own client-<id>.pem/.key",
        err=not kept_out,
    )
