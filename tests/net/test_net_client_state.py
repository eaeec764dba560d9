"""Client-private state over the network: the two-phase state file, and SCAFFOLD with a client
killed and restarted from its --state-dir, with federated evaluation on the clients."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest

from conftest import final_vector, free_port, simulate_run, wait_for, write_config
from fedfleet.errors import FedfleetError
from fedfleet.net._checkpoint import load_checkpoint
from fedfleet.net._client_state import ClientStateFile


def test_state_file_is_two_phase_and_survives_a_restart(tmp_path):
    a = {"c_local": np.arange(4, dtype=np.float32)}
    b = {"c_local": np.arange(4, dtype=np.float32) * 2}
    s = ClientStateFile(5, tmp_path)
    assert s.get(5) is None and len(s) == 0
    s.stage(1, a)
    assert s.get(5) is None, "staged state is not in effect before the server applies it"
    restarted = ClientStateFile(5, tmp_path)  # a crash after staging keeps the pending state
    assert restarted.pending_round == 1
    assert restarted.resolve(1) is True
    assert np.array_equal(ClientStateFile(5, tmp_path).get(5)["c_local"], a["c_local"])
    restarted.stage(2, b)
    assert restarted.resolve(1) is False, "round 2 was not aggregated: drop its state"
    again = ClientStateFile(5, tmp_path)
    assert again.pending_round == -1 and np.array_equal(again.get(5)["c_local"], a["c_local"])
    # a torn write of the next file leaves the committed one readable
    (tmp_path / "client-5.safetensors.tmp").write_bytes(b"\x00torn")
    assert np.array_equal(ClientStateFile(5, tmp_path).get(5)["c_local"], a["c_local"])
    with pytest.raises(FedfleetError, match="client 5, not of client 6"):
        (tmp_path / "client-5.safetensors").rename(tmp_path / "client-6.safetensors")
        ClientStateFile(6, tmp_path)
    with pytest.raises(FedfleetError, match="asked for client 7"):
        again.get(7)


SCAFFOLD_EXTRA = """\
[eval]
federated_every = 1
[deploy]
poll_wait_s = 0.5
rejoin_grace_s = 300.0
"""


def _scaffold_config(path: Path) -> Path:
    config = write_config(path, rounds=3)
    text = config.read_text()
    text = text.replace("clients_per_round = 2", 'clients_per_round = 3\nname = "scaffold"')
    text = text.replace("num_clients = 3", "num_clients = 3\nclient_test_fraction = 0.25")
    config.write_text(text + SCAFFOLD_EXTRA)
    return config


def test_scaffold_client_restarted_from_state_dir_matches_simulation(procs):
    """Client 0 is SIGKILLed while training round 2 and restarted with its --state-dir: it must
    retrain round 2 from its round-1 control variate (a client without it would send another
    update), so the run ends bit-identical to the simulation, and the clients' federated
    evaluation gives the simulation's client_accuracy_* exactly."""
    config = _scaffold_config(procs.tmp / "run.toml")
    reference = simulate_run(config)
    run_dir, states = procs.tmp / "run", procs.tmp / "states"
    port = free_port()
    server = procs.cli(
        "server", "server", "--config", str(config), "--out", str(run_dir), "--insecure",
        "--min-clients", "3", "--round-timeout", "90", "--port", str(port),
    )  # fmt: skip
    addr = f"127.0.0.1:{port}"
    marker = procs.tmp / "slow.marker"
    common = ["--insecure", "--state-dir", str(states)]
    slow = procs.worker(
        "slow", str(config), addr, "0", *common, "--slow-file", str(marker), "--slow-after", "1"
    )
    others = [procs.worker(f"w{c}", str(config), addr, str(c), *common) for c in (1, 2)]
    wait_for(marker.exists, 300, "client 0 to start training round 2", (slow, server))
    assert (states / "client-0.safetensors").exists()
    slow.send_signal(signal.SIGKILL)
    slow.wait(10)
    restarted = procs.worker("w0", str(config), addr, "0", *common)
    assert procs.wait(server, 300) == 0, procs.log("server")
    for p in [restarted, *others]:
        assert procs.wait(p, 300) == 0, procs.log(p.name)
    assert "client 0 done: rounds [2, 3]" in procs.log("w0")
    got = final_vector(run_dir, config)
    assert np.array_equal(got, reference.vector), f"max diff {np.abs(got - reference.vector).max()}"
    history = load_checkpoint(run_dir).history
    keys = ["client_accuracy_mean", "client_accuracy_worst10", "client_accuracy_min",
            "client_accuracy_std", "client_loss_mean"]  # fmt: skip
    for net, sim in zip(history, reference.history, strict=True):
        assert all(k in sim for k in keys)
        assert {k: net[k] for k in keys} == {k: sim[k] for k in keys}, net["round"]
