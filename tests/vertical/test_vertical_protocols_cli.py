"""``fedfleet vertical`` with hetero-lr, hetero-linear and secureboost: simulated from the CLI,
and deployed as a relay plus one process per party (hetero-lr's arbiter one of them) over
mutual TLS on 127.0.0.1, ending with the simulation's numbers. Paillier keys are the smallest
each protocol accepts, to keep the runs short."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_vertical_cli import _fedfleet

from fedfleet.errors import ConfigError
from fedfleet.vertical import HeteroLinear, HeteroLR, PartyData, PartyError, SecureBoost, simulate
from fedfleet.vertical._net import Relay, RelayChannel
from fedfleet.vertical._registry import Deployable, build_protocol
from fedfleet.vertical._task import VerticalTask

pytest.importorskip("phe")

SETTINGS = {
    "hetero-lr": "epochs = 2\nbatch_size = 64\nlr = 0.3\nkey_bits = 1024\nstandardize = true",
    "hetero-linear": "epochs = 2\nbatch_size = 64\nlr = 0.1\nkey_bits = 1024\nstandardize = true",
    "secureboost": "trees = 2\nmax_depth = 3\nbins = 8\nkey_bits = 512",
}
CONFIG = """
[vertical]
protocol = "{protocol}"
dataset = "{dataset}"
parties = 3
{extra}

[vertical.settings]
test_fraction = 0.25
{settings}
"""


def _config(tmp_path: Path, protocol: str, dataset: str = "breast-cancer", extra: str = "") -> Path:
    path = tmp_path / f"{protocol}.toml"
    path.write_text(
        CONFIG.format(protocol=protocol, dataset=dataset, extra=extra, settings=SETTINGS[protocol])
    )
    return path


def _simulate(tmp_path: Path, config: Path, out: str) -> tuple[dict, str]:
    proc = _fedfleet(tmp_path, "vertical", "run", "--config", str(config), "--out", out)
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr
    return json.loads((tmp_path / out / "summary.json").read_text()), stdout


def _certs(tmp_path: Path, *names: str) -> None:
    parties = [a for name in names for a in ("--party", name)]
    proc = _fedfleet(tmp_path, "certs", "--out-dir", "certs", "--num-clients", "1", *parties)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr


@pytest.mark.parametrize("protocol", ["hetero-lr", "hetero-linear", "secureboost"])
def test_simulation_from_the_cli_reports_the_guests_metrics(tmp_path: Path, protocol: str) -> None:
    summary, stdout = _simulate(tmp_path, _config(tmp_path, protocol), "sim")
    m = summary["metrics"]
    assert summary["rows"] == 569 and (m["train_rows"], m["test_rows"]) == (427, 142)
    if protocol == "hetero-linear":  # 0/1 labels fitted by least squares
        assert 0.5 < m["r2"] < 1.0 and 0.0 < m["rmse"] < 0.4
        assert "rmse" in stdout and "r2" in stdout
    else:
        # two shallow trees (secureboost) are still close to the base score: a lower bar
        assert m["accuracy"] > (0.85 if protocol == "secureboost" else 0.9) and m["auc"] > 0.95
        assert "accuracy" in stdout and "auc" in stdout
    data_parties = {"guest", "host-0", "host-1"}
    # each data party's own piece of the model (the arbiter holds none)
    saved = sorted(p.stem for p in (tmp_path / "sim" / "models").glob("*.safetensors"))
    assert saved == sorted(data_parties)
    expected = data_parties | ({"arbiter"} if protocol.startswith("hetero") else set())
    assert set(summary["bytes_sent"]) == expected
    assert all(summary["bytes_sent"][p] > 0 for p in expected)


@pytest.mark.parametrize("protocol", ["hetero-lr", "secureboost"])
def test_deployed_relay_and_parties_equal_the_simulation(tmp_path: Path, protocol: str) -> None:
    pytest.importorskip("grpc")
    config = _config(tmp_path, protocol, "synthetic", "rows = 160\nfeatures = 6")
    simulated = simulate(VerticalTask.from_toml(config))  # in this process: one start less
    names = ["guest", "host-0", "host-1"] + (["arbiter"] if protocol == "hetero-lr" else [])
    _certs(tmp_path, *names)
    relay = _fedfleet(
        tmp_path, "vertical", "relay", "--config", str(config), "--certs-dir", "certs",
        "--port", "0",
    )  # fmt: skip
    parties: list[subprocess.Popen] = []
    try:
        assert relay.stderr is not None
        line = relay.stderr.readline()  # blocks until the relay listens (or dies: "")
        found = re.search(r"listening on (\S+:\d+) for (.*)$", line)
        assert found, line + relay.stderr.read()
        address = found.group(1)
        assert found.group(2).split(", ") == names  # the arbiter is a party of the relay
        for name in reversed(names):  # the guest is not the first to connect
            args = ["--party", name, "--certs-dir", "certs", "--relay", address]
            args += ["--out", f"dep-{name}"]  # each party its own run directory
            parties.append(_fedfleet(tmp_path, "vertical", "party", "--config", str(config), *args))
        outputs = [p.communicate(timeout=900) for p in parties]
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
    assert deployed["metrics"] == simulated["metrics"]  # bit for bit: exact fixed point
    assert deployed["metrics"]["test_rows"] == 40
    for name in names:
        assert f"{name} sent {simulated['bytes_sent'][name]:,} bytes" in out


def test_a_party_outside_the_roster_or_without_credentials_is_named(tmp_path: Path) -> None:
    pytest.importorskip("grpc")
    from fedfleet.net._certs import create_test_federation, issue_certificate

    config = _config(tmp_path, "hetero-lr")
    certs = create_test_federation(tmp_path / "certs", 1)
    for name in ("guest", "host-0", "host-1"):  # no certificate for the arbiter
        issue_certificate(certs, name)

    def party(name: str) -> str:
        proc = _fedfleet(
            tmp_path, "vertical", "party", "--config", str(config), "--party", name,
            "--certs-dir", "certs", "--relay", "127.0.0.1:9",
        )  # fmt: skip
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 2, stderr
        return stderr

    unknown = party("nobody")
    assert "'nobody'" in unknown and "'arbiter'" in unknown  # the roster, arbiter included
    missing = party("arbiter")
    assert "arbiter.pem' does not exist" in missing and "fedfleet certs" in missing


def test_a_guest_whose_arbiter_never_comes_says_so(tmp_path: Path) -> None:
    pytest.importorskip("grpc")
    from fedfleet.net._certs import create_test_federation, issue_certificate

    certs = create_test_federation(tmp_path / "certs", 1)
    issue_certificate(certs, "guest")
    roster = ["guest", "host-0", "arbiter"]
    relay = Relay(roster, certs_dir=certs)
    address = f"127.0.0.1:{relay.start()}"
    guest = PartyData("guest", np.array(["a", "b"]), np.zeros((2, 1)), np.array([0, 1]))
    program = HeteroLR(key_bits=1024).program(guest, roster)
    channel = RelayChannel(address, party="guest", parties=roster, certs_dir=certs, timeout_s=3)
    try:
        with pytest.raises(PartyError, match=r"guest waited .* 'hlr-public-key' from arbiter"):
            program(channel)
    finally:
        channel.close()
        relay.stop()


def test_programs_need_their_roster() -> None:
    guest = PartyData("guest", np.array(["a", "b"]), np.zeros((2, 1)), np.array([0, 1]))
    with pytest.raises(PartyError, match=r"arbiter 'arbiter'.*\['guest', 'host-0'\]"):
        HeteroLR().program(guest, ["guest", "host-0"])
    with pytest.raises(PartyError, match=r"guest is 'guest'.*starts with 'host-0'"):
        SecureBoost().program(guest, ["host-0", "guest"])
    with pytest.raises(PartyError, match=r"'guest' is not in the roster"):
        SecureBoost(guest="g").program(guest, ["g", "host-0"])


def test_registry_and_task_know_the_new_protocols() -> None:
    assert build_protocol("hetero-lr", {"loss": "squared"}) == HeteroLR(loss="squared")
    assert build_protocol("hetero-linear", {"epochs": 3}) == HeteroLinear(epochs=3)
    assert HeteroLinear().loss == "squared"
    with pytest.raises(ConfigError, match="hetero-linear is HeteroLR with loss='squared'"):
        build_protocol("hetero-linear", {"loss": "logistic"})
    with pytest.raises(ConfigError, match=r"\['keys'\].*valid keys"):  # key objects: not config
        build_protocol("secureboost", {"keys": [1, 2]})
    with pytest.raises(ConfigError, match="test_fraction"):
        build_protocol("secureboost", {"test_fraction": 1.0})
    for name in ("hetero-lr", "hetero-linear", "secureboost"):
        assert isinstance(build_protocol(name, {}), Deployable)
    lr = VerticalTask(protocol="hetero-lr", settings={"arbiter": "keys"})
    assert lr.names == ["guest", "host-0", "host-1", "keys"]
    assert VerticalTask(protocol="secureboost", parties=2).names == ["guest", "host-0"]
