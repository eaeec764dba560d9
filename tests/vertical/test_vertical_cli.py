"""``fedfleet vertical``: a simulated run, and the same task deployed as a relay and three party
processes over mutual TLS on 127.0.0.1, which must end with the simulation's numbers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[2] / "src")
CONFIG = """
[vertical]
protocol = "split-nn"
dataset = "{dataset}"
parties = 3
{extra}

[vertical.settings]
epochs = 5
batch_size = 32
lr = 0.3
bottom_widths = [8, 4]
top_widths = [8]
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _fedfleet(cwd: Path, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fedfleet", *args],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _config(tmp_path: Path, dataset: str = "breast-cancer", extra: str = "") -> Path:
    path = tmp_path / "task.toml"
    path.write_text(CONFIG.format(dataset=dataset, extra=extra))
    return path


def _run(tmp_path: Path, config: Path, out: str) -> dict:
    proc = _fedfleet(tmp_path, "vertical", "run", "--config", str(config), "--out", out)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    assert "host-1 sent" in stdout and "accuracy" in stdout
    return json.loads((tmp_path / out / "metrics.json").read_text())


def test_simulation_from_the_cli_writes_a_run(tmp_path: Path) -> None:
    summary = _run(tmp_path, _config(tmp_path), "sim")
    assert summary["rows"] == 569 and summary["metrics"]["accuracy"] > 0.85
    assert set(summary["bytes_sent"]) == {"guest", "host-0", "host-1"}
    assert (tmp_path / "sim" / "config.toml").read_text() == _config(tmp_path).read_text()
    again = _run(tmp_path, _config(tmp_path), "sim2")
    assert again["metrics"] == summary["metrics"]  # same seed: the same numbers


def test_synthetic_table_with_chosen_columns(tmp_path: Path) -> None:
    extra = "rows = 600\nfeatures = 7\ncolumns = [[0, 1], [2, 3, 4], [5, 6]]"
    summary = _run(tmp_path, _config(tmp_path, "synthetic", extra), "syn")
    assert summary["rows"] == 600 and summary["metrics"]["test_rows"] == 150


def test_bad_config_is_named(tmp_path: Path) -> None:
    bad = _config(tmp_path, extra="colums = [[0]]")
    proc = _fedfleet(tmp_path, "vertical", "run", "--config", str(bad))
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "colums" in stderr and "valid keys" in stderr


def test_deployed_relay_and_parties_equal_the_simulation(tmp_path: Path) -> None:
    pytest.importorskip("grpc")
    config = _config(tmp_path)
    simulated = _run(tmp_path, config, "sim")
    certs = _fedfleet(
        tmp_path,
        "certs",
        "--out-dir",
        "certs",
        "--num-clients",
        "1",
        "--party",
        "guest",
        "--party",
        "host-0",
        "--party",
        "host-1",
    )
    assert certs.wait(timeout=300) == 0
    relay = _fedfleet(
        tmp_path,
        "vertical",
        "relay",
        "--config",
        str(config),
        "--certs-dir",
        "certs",
        "--port",
        "0",
    )
    parties: list[subprocess.Popen] = []
    try:
        assert relay.stderr is not None
        line = relay.stderr.readline()  # blocks until the relay listens (or dies: "")
        found = re.search(r"listening on (\S+:\d+)", line)
        assert found, line + relay.stderr.read()
        address = found.group(1)
        for name in ["host-1", "guest", "host-0"]:
            args = ["--party", name, "--certs-dir", "certs", "--relay", address]
            parties.append(
                _fedfleet(
                    tmp_path, "vertical", "party", "--config", str(config), *args, "--out", "dep"
                )
            )
        outputs = [p.communicate(timeout=600) for p in parties]
        assert all(p.returncode == 0 for p in parties), outputs
        out, err = relay.communicate(timeout=120)
        assert relay.returncode == 0, err
        assert "all parties done" in out
    finally:
        for p in [relay, *parties]:
            if p.poll() is None:
                p.kill()
                p.wait()
    deployed = json.loads((tmp_path / "dep" / "metrics.json").read_text())
    assert deployed["metrics"] == simulated["metrics"]  # bit for bit: same arithmetic
    assert deployed["bytes_sent"]["guest"] == simulated["bytes_sent"]["guest"]
    for name in ["host-0", "host-1"]:
        assert f"{name} sent {simulated['bytes_sent'][name]:,} bytes" in out


def test_a_party_cannot_take_another_partys_certificate(tmp_path: Path) -> None:
    pytest.importorskip("grpc")
    config = _config(tmp_path)
    certs = _fedfleet(
        tmp_path, "certs", "--out-dir", "certs", "--num-clients", "1", "--party", "host-1"
    )
    assert certs.wait(timeout=300) == 0
    # host-0 given host-1's credentials: refused before anything is sent, naming both
    (tmp_path / "certs" / "host-0.pem").write_bytes(
        (tmp_path / "certs" / "host-1.pem").read_bytes()
    )
    (tmp_path / "certs" / "host-0.key").write_bytes(
        (tmp_path / "certs" / "host-1.key").read_bytes()
    )
    proc = _fedfleet(
        tmp_path, "vertical", "party", "--config", str(config), "--party", "host-0",
        "--certs-dir", "certs", "--relay", "127.0.0.1:9",
    )  # fmt: skip
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert "certificate of 'host-1'" in stderr and "'host-0'" in stderr


def test_certs_refuses_a_party_named_like_the_server(tmp_path: Path) -> None:
    pytest.importorskip("cryptography")
    proc = _fedfleet(tmp_path, "certs", "--out-dir", "certs", "--party", "server")
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "party name 'server'" in stderr
    assert not (tmp_path / "certs" / "server.pem").exists()
