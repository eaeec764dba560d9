"""End to end over real sockets: bit-identical to simulation; client and server crashes."""

from __future__ import annotations

import signal

import numpy as np
import pytest

from conftest import final_vector, free_port, simulate, start_server, wait_for, write_config
from fedfleet.net._checkpoint import (
    CHECKPOINT_NAME,
    PAUSE_ENV,
    load_checkpoint,
    save_checkpoint,
)


def test_tls_server_and_three_clients_match_simulation_bit_for_bit(procs, certs_dir):
    config = write_config(procs.tmp / "run.toml", rounds=3)
    run_dir = procs.tmp / "run"
    port = start_server(
        procs, config, "--certs-dir", str(certs_dir), "--out", str(run_dir),
        "--min-clients", "3", "--round-timeout", "60",
    )  # fmt: skip
    clients = [
        procs.cli(f"client{c}", "client", "--server", f"127.0.0.1:{port}", "--config",
                  str(config), "--client-id", str(c), "--certs-dir", str(certs_dir))
        for c in range(3)
    ]  # fmt: skip
    reference = simulate(config)
    assert procs.wait(procs.procs[0], 300) == 0, procs.log("server")
    for p in clients:
        assert procs.wait(p, 300) == 0, procs.log(p.name)
    got = final_vector(run_dir, config)
    assert got.dtype == np.float32 and got.shape == reference.shape
    assert np.array_equal(got, reference), f"max diff {np.abs(got - reference).max()}"
    assert load_checkpoint(run_dir).round == 3


def test_client_killed_mid_round_is_left_out_at_once_and_never_sampled_again(procs):
    """A client SIGKILLed while it trains hangs up its task stream: the round stops waiting for
    it at once (the deadline is 600 s, longer than this test waits), and later rounds sample
    only the live clients. Every wait here is for an event (a file, a log line, an exit)."""
    config = write_config(procs.tmp / "run.toml", rounds=3)
    text = config.read_text().replace("clients_per_round = 2", "clients_per_round = 3")
    config.write_text(text + "[deploy]\nheartbeat_timeout_s = 30.0\nrejoin_grace_s = 1.0\n")
    port = start_server(
        procs, config, "--insecure", "--min-clients", "2", "--min-accept", "1",
        "--round-timeout", "600",
    )  # fmt: skip
    addr = f"127.0.0.1:{port}"
    marker = procs.tmp / "slow.marker"
    slow = procs.worker("slow", str(config), addr, "0", "--insecure", "--slow-file", str(marker))
    wait_for(
        lambda: "client 0 registered" in procs.log("server"), 120, "client 0 to register", (slow,)
    )
    others = [procs.worker(f"w{c}", str(config), addr, str(c), "--insecure") for c in (1, 2)]
    wait_for(marker.exists, 120, "client 0 to start training", (slow,))
    slow.send_signal(signal.SIGKILL)
    assert procs.wait(procs.procs[0], 300) == 0, procs.log("server")
    log = procs.log("server")
    assert "round 1: client 0 hung up before answering its task" in log
    assert "no update from clients [0] (hung up: [0])" in log
    assert "round 2: 2 connected, selected [1, 2]" in log
    assert "round 3: 2 connected, selected [1, 2]" in log
    assert "done: 3 rounds" in log
    for p in others:
        assert procs.wait(p, 300) == 0, procs.log(p.name)


def test_server_killed_while_writing_a_checkpoint_resumes_to_identical_model(procs):
    """SIGKILL between writing round 3's checkpoint and committing it (the test hook pauses
    there): --resume must start from round 2's complete checkpoint, never a torn mix, and end
    on the uninterrupted run's model bit for bit."""
    config = write_config(procs.tmp / "run.toml", rounds=4)
    reference = simulate(config)
    run_dir = procs.tmp / "run"
    port = free_port()
    common = ["--insecure", "--min-clients", "3", "--round-timeout", "60", "--port", str(port)]
    server = procs.cli(
        "server1", "server", "--config", str(config), "--out", str(run_dir), *common,
        env={PAUSE_ENV: "3"},
    )  # fmt: skip
    addr = f"127.0.0.1:{port}"
    clients = [procs.worker(f"w{c}", str(config), addr, str(c), "--insecure") for c in range(3)]
    wait_for(
        lambda: "round 3 written to" in procs.log("server1"), 300, "round 3's commit", (server,)
    )
    server.send_signal(signal.SIGKILL)
    server.wait(10)
    tmp = run_dir / (CHECKPOINT_NAME + ".tmp")
    assert tmp.exists(), "the kill should leave round 3's uncommitted file behind"
    before = load_checkpoint(run_dir)
    assert before.round == 2 and [r["round"] for r in before.history] == [1, 2]
    records = before.server["clients"]
    assert sorted(records) == ["0", "1", "2"]
    assert all(r["num_samples"] > 0 and r["applied_round"] in (1, 2) for r in records.values())
    resumed = procs.cli("server2", "server", "--resume", str(run_dir), *common)
    assert procs.wait(resumed, 300) == 0, procs.log("server2")
    assert "resuming after round 2" in procs.log("server2")
    for p in clients:
        assert procs.wait(p, 300) == 0, procs.log(p.name)
    got = final_vector(run_dir, config)
    assert np.array_equal(got, reference), f"max diff {np.abs(got - reference).max()}"
    after = load_checkpoint(run_dir)
    assert after.round == 4 and [r["round"] for r in after.history] == [1, 2, 3, 4]


def test_checkpoint_round_trips_state_and_survives_a_torn_write(tmp_path):
    vec = np.arange(5, dtype=np.float32)
    state = {"momentum": np.ones(5), "step": 3, "lr": 0.1, "nested": {"norm": 1.5, "tag": "x"}}
    save_checkpoint(tmp_path, 2, 7, "abc", vec, state, [{"round": 1, "loss": float("nan")}])
    # a crash while writing the next checkpoint leaves a partial temporary file behind
    (tmp_path / (CHECKPOINT_NAME + ".tmp")).write_bytes(b"\x00garbage")
    ck = load_checkpoint(tmp_path)
    assert ck.round == 2 and ck.seed == 7 and ck.fingerprint == "abc"
    assert np.array_equal(ck.vector, vec)
    assert np.array_equal(ck.state["momentum"], state["momentum"])
    assert ck.state["step"] == 3 and isinstance(ck.state["step"], int)
    assert ck.state["lr"] == 0.1 and ck.state["nested"] == {"norm": 1.5, "tag": "x"}
    assert ck.history == [{"round": 1, "loss": None}]
    save_checkpoint(tmp_path, 3, 7, "abc", vec, state, [])
    assert load_checkpoint(tmp_path).round == 3


@pytest.mark.parametrize("bad", [b"", b"not a safetensors file"])
def test_unreadable_checkpoint_says_how_to_recover(tmp_path, bad):
    (tmp_path / CHECKPOINT_NAME).write_bytes(bad)
    with pytest.raises(Exception, match="without --resume"):
        load_checkpoint(tmp_path)
