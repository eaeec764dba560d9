"""A character LSTM over gRPC: a server and two clients on 127.0.0.1, each reading its role of a
text folder the test writes, match the simulation bit for bit; perplexity and bytes travel into
the server's records."""

from __future__ import annotations

import json
import math

import numpy as np

from conftest import final_vector, simulate_run, start_server

RUN_TOML = """\
seed = 3
rounds = 2
[data]
name = "text"
path = "{path}"
window = 8
[model]
name = "char-lstm"
hidden = 16
[strategy]
clients_per_round = 2
[client]
epochs = 1
batch_size = 16
lr = 1.0
[eval]
federated_every = 1
"""


def test_a_tiny_lstm_over_grpc_matches_the_simulation_bit_for_bit(procs):
    corpus = procs.tmp / "corpus"
    corpus.mkdir()
    (corpus / "ann.txt").write_text("the cat sat on the mat. " * 12)
    (corpus / "bob.txt").write_text("a dog ran to the sun. " * 12)
    config = procs.tmp / "run.toml"
    config.write_text(RUN_TOML.format(path=corpus))
    run_dir = procs.tmp / "run"
    port = start_server(
        procs, config, "--insecure", "--out", str(run_dir), "--min-clients", "2",
        "--round-timeout", "300",
    )  # fmt: skip
    clients = [
        procs.cli(f"client{c}", "client", "--server", f"127.0.0.1:{port}", "--config",
                  str(config), "--client-id", str(c), "--insecure")
        for c in range(2)
    ]  # fmt: skip
    reference = simulate_run(config)
    assert procs.wait(procs.procs[0], 300) == 0, procs.log("server")
    for p in clients:
        assert procs.wait(p, 300) == 0, procs.log(p.name)
    got = final_vector(run_dir, config)
    assert np.array_equal(got, reference.vector), f"max diff {np.abs(got - reference.vector).max()}"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    last, expected = rows[-1], reference.history[-1]
    assert last["test_perplexity"] == math.exp(last["test_loss"])
    assert last["client_perplexity"] == math.exp(last["client_loss_mean"])
    for key in ("test_loss", "client_loss_mean", "uplink_bytes", "downlink_bytes"):
        assert last[key] == expected[key], key
    assert last["uplink_bytes"] == 2 * got.nbytes
