"""``fedfleet vertical``: a simulated run, and the same task deployed as a relay and three party
processes over mutual TLS on 127.0.0.1, which must end with the simulation's numbers; run
directories (metrics per epoch, each party's model), and a killed run resumed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

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
    return json.loads((tmp_path / out / "summary.json").read_text())


def _models(run_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    return {p.stem: load_file(p) for p in sorted((run_dir / "models").glob("*.safetensors"))}


def _assert_same_models(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for party in a:
        assert sorted(a[party]) == sorted(b[party]), party
        for name in a[party]:
            np.testing.assert_array_equal(a[party][name], b[party][name], err_msg=party + name)


def test_simulation_from_the_cli_writes_a_run(tmp_path: Path) -> None:
    summary = _run(tmp_path, _config(tmp_path), "sim")
    # align = "psi" by default, every party holding every person (overlap 1): all rows aligned
    assert summary["align"] == "psi" and summary["rows"] == summary["own_rows"] == 569
    assert summary["metrics"]["accuracy"] > 0.85
    assert set(summary["bytes_sent"]) == {"guest", "host-0", "host-1"}
    run = tmp_path / "sim"
    assert (run / "config.toml").read_text() == _config(tmp_path).read_text()
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4, 5]
    assert [r["loss"] for r in lines] == summary["metrics"]["loss"]
    models = _models(run)  # each party its own piece: bottoms, and the top at the guest only
    assert sorted(models) == ["guest", "host-0", "host-1"]
    assert {k.split("/")[0] for k in models["guest"]} == {"bottom", "top"}
    assert {k.split("/")[0] for k in models["host-0"]} == {"bottom"}
    assert models["host-0"]["bottom/0.weight"].shape == (8, 10)  # its 10 of the 30 columns
    again = _run(tmp_path, _config(tmp_path), "sim2")
    assert again["metrics"] == summary["metrics"]  # same seed: the same numbers
    _assert_same_models(models, _models(tmp_path / "sim2"))
    # an --out that holds a run is refused, naming it
    again_sim = ["--config", str(_config(tmp_path)), "--out", "sim"]
    proc = _fedfleet(tmp_path, "vertical", "run", *again_sim)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "already holds a run" in stderr


def test_synthetic_table_with_chosen_columns_and_no_alignment(tmp_path: Path) -> None:
    extra = 'rows = 600\nfeatures = 7\ncolumns = [[0, 1], [2, 3, 4], [5, 6]]\nalign = "none"'
    summary = _run(tmp_path, _config(tmp_path, "synthetic", extra), "syn")
    assert summary["rows"] == 600 and summary["metrics"]["test_rows"] == 150
    psi = _run(tmp_path, _config(tmp_path, "synthetic", extra.replace('"none"', '"psi"')), "psi")
    # PSI's messages come on top of the protocol's; the same people, aligned in another order
    assert psi["rows"] == 600
    assert all(psi["bytes_sent"][p] > summary["bytes_sent"][p] for p in summary["bytes_sent"])


def test_bad_config_is_named(tmp_path: Path) -> None:
    bad = _config(tmp_path, extra="colums = [[0]]")
    proc = _fedfleet(tmp_path, "vertical", "run", "--config", str(bad))
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "colums" in stderr and "valid keys" in stderr


def test_deployed_relay_and_parties_equal_the_simulation(tmp_path: Path) -> None:
    pytest.importorskip("grpc")
    config = _config(tmp_path, extra="overlap = 0.9")  # each party its own 90%: PSI aligns
    simulated = _run(tmp_path, config, "sim")
    assert simulated["own_rows"] == 512 and simulated["rows"] < 512
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
            args += ["--out", f"dep-{name}"]
            parties.append(_fedfleet(tmp_path, "vertical", "party", "--config", str(config), *args))
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
    deployed = json.loads((tmp_path / "dep-guest" / "summary.json").read_text())
    assert deployed["rows"] == simulated["rows"] and deployed["own_rows"] == 512
    assert deployed["metrics"] == simulated["metrics"]  # bit for bit: same arithmetic
    assert (tmp_path / "dep-guest" / "metrics.jsonl").read_text() == (
        tmp_path / "sim" / "metrics.jsonl"
    ).read_text()
    for name in ["guest", "host-0", "host-1"]:  # each party wrote its own piece, as simulated
        ((piece, arrays),) = _models(tmp_path / f"dep-{name}").items()
        assert piece == name
        _assert_same_models({name: arrays}, {name: _models(tmp_path / "sim")[name]})
        assert "PSI aligned" in outputs[["host-1", "guest", "host-0"].index(name)][1]
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


def _killed_before_the_guest_commits_epoch_2(tmp_path: Path, config: Path) -> Path:
    """``fedfleet vertical run`` into ``killed``, SIGKILLed while its guest pauses before
    committing its checkpoint of epoch (tree) 2; returns the run directory."""
    env = {**_env(), "FEDFLEET_TEST_PAUSE_VERTICAL": "guest:2"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedfleet", "vertical", "run", "--config", str(config), "--out",
         "killed"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # blocks until the pause is logged (or the run ends: no line)
            if "pausing before commit" in line:
                break
        else:
            pytest.fail("the run ended without pausing")
    finally:
        proc.kill()
        proc.wait(timeout=120)
    return tmp_path / "killed"


def _resumed(tmp_path: Path, run: Path) -> str:
    """``fedfleet vertical run --resume run``, which must succeed; returns its log."""
    resumed = _fedfleet(tmp_path, "vertical", "run", "--resume", str(run))
    _, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr
    return stderr


def test_a_killed_run_resumes_bit_identical(tmp_path: Path) -> None:
    extra = "rows = 400\nfeatures = 6\noverlap = 0.9"
    config = _config(tmp_path, "synthetic", extra)
    whole = _run(tmp_path, config, "whole")
    # the guest stops for good before committing its checkpoint of epoch 2, after the hosts
    # finished epoch 2: the parties are an epoch apart when the run is killed
    run = _killed_before_the_guest_commits_epoch_2(tmp_path, config)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert not (run / "summary.json").exists()
    stderr = _resumed(tmp_path, run)
    assert "guest resumes after epoch 1" in stderr and "host-0 resumes after epoch 1" in stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["metrics"] == whole["metrics"]
    assert (run / "metrics.jsonl").read_text() == (tmp_path / "whole" / "metrics.jsonl").read_text()
    _assert_same_models(_models(run), _models(tmp_path / "whole"))


def test_a_killed_secureboost_run_resumes_bit_identical(tmp_path: Path) -> None:
    pytest.importorskip("phe")
    config = tmp_path / "boost.toml"
    config.write_text(
        '[vertical]\nprotocol = "secureboost"\ndataset = "synthetic"\nparties = 3\nrows = 120\n'
        "features = 6\n\n[vertical.settings]\ntrees = 3\nmax_depth = 2\nbins = 8\n"
        "key_bits = 512\ntest_fraction = 0.25\n"
    )
    whole = _run(tmp_path, config, "whole")
    # the guest stops for good before committing its checkpoint of tree 2 (the hosts have theirs)
    run = _killed_before_the_guest_commits_epoch_2(tmp_path, config)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    stderr = _resumed(tmp_path, run)
    assert "guest resumes after epoch 1" in stderr and "host-1 resumes after epoch 1" in stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["metrics"] == whole["metrics"] and len(whole["metrics"]["loss"]) == 3
    lines = (run / "metrics.jsonl").read_text()
    assert lines == (tmp_path / "whole" / "metrics.jsonl").read_text()
    assert [json.loads(s)["loss"] for s in lines.splitlines()] == whole["metrics"]["loss"]
