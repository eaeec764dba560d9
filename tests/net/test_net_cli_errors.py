"""The deployment command line says what went wrong and stops (issue 14, item 8).

Every case runs the real ``fedfleet`` command (its console script's ``main``) in a process of its
own against real servers on 127.0.0.1: a client that cannot connect logs each attempt's reason in
plain words and ends with a one-line error (exit 2, no traceback); ``fedfleet server`` logs each
round; ``fedfleet certs`` keeps its keys out of git.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Procs, free_port, start_server, wait_for, write_config
from fedfleet.net import create_test_federation

REPO = Path(__file__).resolve().parents[2]


def fedfleet(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``fedfleet ARGS`` to completion (a client that never gives up fails on the timeout)."""
    return subprocess.run(
        [sys.executable, "-m", "fedfleet", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )


def one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    """The process failed with exit 2 and exactly one ``error:`` line holding ``words``."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for w in words:
        assert w in errors[0], errors[0]
    return errors[0]


def client_config(path: Path, give_up_after_s: float) -> Path:
    write_config(path, rounds=1)
    path.write_text(path.read_text() + f"[deploy]\ngive_up_after_s = {give_up_after_s}\n")
    return path


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, certs_dir: Path) -> Iterator[dict[str, int]]:
    """A TLS server (``certs_dir``'s CA) and a plaintext one; neither starts a round."""
    procs = Procs(tmp_path_factory.mktemp("servers"))
    try:
        config = write_config(procs.tmp / "run.toml")
        ports = {
            "tls": start_server(
                procs, config, "--certs-dir", str(certs_dir), "--min-clients", "99", name="tls"
            ),
            "plain": start_server(procs, config, "--insecure", "--min-clients", "99", name="plain"),
        }
        yield ports
    finally:
        procs.kill_all()


@pytest.fixture
def other_ca(tmp_path: Path) -> Path:
    """Credentials from another CA, as a second `fedfleet certs` would make."""
    return create_test_federation(tmp_path / "other", 2)


def test_a_client_with_no_server_says_nothing_listens_and_gives_up(tmp_path):
    config = client_config(tmp_path / "client.toml", give_up_after_s=2)
    port = free_port()  # bound, then closed: nothing listens there
    args = ["client", "--config", str(config), "--client-id", "0", "--insecure"]
    proc = fedfleet(tmp_path, *args, "--server", f"127.0.0.1:{port}")
    one_line_error(proc, f"nothing listens at 127.0.0.1:{port}", "giving up after")
    warnings = [line for line in proc.stderr.splitlines() if "retrying in" in line]
    assert warnings and all("WARNING" in w and "nothing listens at" in w for w in warnings)


def test_a_client_whose_credentials_come_from_another_ca_stops_with_the_reason(
    tmp_path, servers, other_ca
):
    """Its ca.pem did not sign the server's certificate: the handshake fails on the client."""
    config = client_config(tmp_path / "client.toml", give_up_after_s=60)
    proc = fedfleet(
        tmp_path,
        *("client", "--config", str(config), "--client-id", "0", "--certs-dir", str(other_ca)),
        *("--server", f"127.0.0.1:{servers['tls']}"),
    )
    one_line_error(proc, "does not trust the server", "different CAs", "retrying will not fix this")
    assert "WARNING" in proc.stderr and "retrying in" in proc.stderr


def test_a_client_certificate_from_another_ca_is_reported_as_refused(
    tmp_path, servers, certs_dir, other_ca
):
    """It trusts the server, but the server hangs up on its certificate."""
    config = client_config(tmp_path / "client.toml", give_up_after_s=60)
    cert = other_ca / "client-0.pem"
    proc = fedfleet(
        tmp_path,
        *("client", "--config", str(config), "--client-id", "0", "--certs-dir", str(certs_dir)),
        *("--cert", str(cert), "--key", str(other_ca / "client-0.key")),
        *("--server", f"127.0.0.1:{servers['tls']}"),
    )
    one_line_error(
        proc, f"refused this client's certificate '{cert}'", "retrying will not fix this"
    )


def test_an_insecure_client_against_a_tls_server_is_told_the_server_speaks_tls(tmp_path, servers):
    config = client_config(tmp_path / "client.toml", give_up_after_s=60)
    proc = fedfleet(
        tmp_path,
        *("client", "--config", str(config), "--client-id", "0", "--insecure"),
        *("--server", f"127.0.0.1:{servers['tls']}"),
    )
    one_line_error(proc, "speaks TLS", "drop --insecure", "retrying will not fix this")


def test_a_tls_client_against_a_plaintext_server_is_told_it_does_not_speak_tls(
    tmp_path, servers, certs_dir
):
    config = client_config(tmp_path / "client.toml", give_up_after_s=60)
    proc = fedfleet(
        tmp_path,
        *("client", "--config", str(config), "--client-id", "0", "--certs-dir", str(certs_dir)),
        *("--server", f"127.0.0.1:{servers['plain']}"),
    )
    one_line_error(proc, "does not speak TLS", "retrying will not fix this")


@pytest.mark.parametrize(
    ("present", "what", "missing"),
    [
        ([], "CA certificate", "ca.pem"),
        (["ca.pem"], "client key", "client-0.key"),
        (["ca.pem", "client-0.key"], "client certificate", "client-0.pem"),
    ],
)
def test_a_missing_certificate_file_is_one_line_naming_it(
    tmp_path, certs_dir, present, what, missing
):
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in present:
        shutil.copy(certs_dir / name, mine / name)
    config = client_config(tmp_path / "client.toml", give_up_after_s=60)
    proc = fedfleet(
        tmp_path,
        *("client", "--config", str(config), "--client-id", "0", "--certs-dir", str(mine)),
        *("--server", f"127.0.0.1:{free_port()}"),
    )
    one_line_error(proc, f"{what} '{mine / missing}' does not exist")
    assert "retrying" not in proc.stderr  # before any connection attempt


def test_a_missing_cert_given_instead_of_a_client_id_is_one_line_naming_it(tmp_path):
    config = client_config(tmp_path / "client.toml", give_up_after_s=60)
    proc = fedfleet(
        tmp_path,
        *("client", "--config", str(config), "--cert", str(tmp_path / "nope.pem")),
        *("--server", f"127.0.0.1:{free_port()}"),
    )
    one_line_error(proc, f"client certificate '{tmp_path / 'nope.pem'}' does not exist")


@pytest.mark.parametrize("cid", ["3", "-1"])
def test_a_client_id_outside_the_federation_is_one_line_naming_it(tmp_path, cid):
    config = client_config(tmp_path / "client.toml", give_up_after_s=60)  # num_clients = 3
    proc = fedfleet(
        tmp_path,
        *("client", "--config", str(config), "--client-id", cid, "--insecure"),
        *("--server", f"127.0.0.1:{free_port()}"),
    )
    one_line_error(proc, f"client id {cid} is not in this federation", "ids 0..2")
    assert "retrying" not in proc.stderr  # before any connection attempt


def test_fedfleet_server_and_client_log_each_round(procs):
    """`fedfleet server` (not only `python -m fedfleet.net server`) shows the INFO log."""
    config = write_config(procs.tmp / "run.toml", rounds=1)
    port_file = procs.tmp / "server.port"
    server = procs.start(
        "server",
        *("-m", "fedfleet", "server", "--config", str(config), "--insecure"),
        *("--port", "0", "--port-file", str(port_file), "--min-clients", "2"),
    )
    wait_for(port_file.exists, 120, "the server to listen", alive=(server,))
    address = f"127.0.0.1:{port_file.read_text()}"
    for cid in ("0", "1"):
        procs.start(
            f"client{cid}",
            *("-m", "fedfleet", "client", "--config", str(config), "--insecure"),
            *("--client-id", cid, "--server", address),
        )
    assert procs.wait(server, 300) == 0, procs.log("server")
    log = procs.log("server")
    assert "INFO fedfleet.net.server: round 1: 2 connected" in log, log
    wait_for(lambda: "client 0 registered" in procs.log("client0"), 300, "the client's log")


def test_fedfleet_certs_keeps_its_keys_out_of_git(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("needs git")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    proc = fedfleet(tmp_path, "certs", "--out-dir", "certs", "--num-clients", "2")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "certs" / "ca.key").exists()
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "certs" not in status.stdout, status.stdout
    assert "private" in proc.stdout + proc.stderr


def test_the_deploy_walkthrough_outputs_are_ignored_by_the_repository():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout")
    written = [
        "examples/deploy/certs/ca.key",
        "examples/deploy/runs/deploy/model.safetensors",
        "examples/deploy/state/client-0.safetensors",
    ]
    check = subprocess.run(
        ["git", "check-ignore", "--no-index", *written], cwd=REPO, capture_output=True, text=True
    )
    assert check.stdout.split() == written, check.stdout + check.stderr
