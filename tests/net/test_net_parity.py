"""Network runs against the in-memory ``Simulation`` (sequential executor) on the same config:
a ``fedfleet.net`` server and client processes on 127.0.0.1 must end on the simulation's global
model bit for bit (float32, ``np.array_equal``) and, apart from the timings, with its round
records.

Where each strategy's parity over gRPC is tested (this file is the index):

- FedAvg: test_net_training.py::test_tls_server_and_three_clients_match_simulation_bit_for_bit
  (TLS, 3 rounds); also test_net_training.py::
  test_server_killed_while_writing_a_checkpoint_resumes_to_identical_model (server killed and
  resumed) and test_net_walkthrough.py::test_a_client_with_its_own_data_file_trains_the_same_model.
- FedAdam: test_fedadam_matches_simulation (here).
- SCAFFOLD: test_net_client_state.py::
  test_scaffold_client_restarted_from_state_dir_matches_simulation (a client killed and
  restarted from its --state-dir; federated evaluation compared too).
- FedPer: test_fedper_with_federated_evaluation_matches_simulation (here).
- DPFedAvg: test_dpfedavg_with_seeded_testing_noise_matches_simulation (here); a round whose
  Poisson draw is empty: test_dpfedavg_round_that_samples_nobody_matches_simulation (in-process
  server).
- SecAgg without dropouts: test_secagg_net.py::
  test_tls_secagg_with_central_dp_matches_simulation_bit_for_bit (with central DP).
- SecAgg with a dropout: test_secagg_client_dropping_mid_protocol_matches_simulated_dropout
  (here, against ``Simulation`` with ``drop_rates``; the round counters too:
  test_secagg_dropout_counts_the_same_clients_as_the_simulation); and
  test_secagg_net.py::test_killed_client_and_malformed_messages_leave_an_exact_sum (against
  ``SecAggFedAvg.aggregate_fit`` over the survivors, one survivor driven by hand).
- Paillier HE: test_he_net.py::test_paillier_over_tls_equals_in_memory_he_fedavg_exactly
  (against ``run_he_fedavg``, a ``Simulation`` of ``HEFedAvg`` with its key holder).
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

import fedfleet.sim._secure as secagg_strategy
from conftest import (
    HERE,
    Procs,
    final_vector,
    free_port,
    read_task,
    simulate_run,
    wait_for,
    write_config,
)
from fedfleet._proto import fedfleet_pb2 as pb
from fedfleet._proto import fedfleet_pb2_grpc as pb_grpc
from fedfleet.net import FederatedServer, ServerSettings
from fedfleet.net._checkpoint import load_checkpoint
from fedfleet.net._cli import read_config
from fedfleet.net._wire import PROTOCOL_VERSION
from fedfleet.sim._engine import TIMING_KEYS, _sampling_rng


def _config(tmp: Path, strategy: str, extra: str = "", rounds: int = 2) -> Path:
    """The conftest run (3 clients, 2 a round) with a tiny MLP and ``strategy``, on Synthetic
    data (generated with NumPy: each process skips the seconds sklearn's import of the digits
    costs); ``extra`` is appended (whole TOML sections)."""
    config = write_config(tmp / "run.toml", rounds=rounds, hidden=16)
    text = config.read_text().replace("[strategy]\n", f'[strategy]\nname = "{strategy}"\n')
    text = text.replace("[data]\n", '[data]\nname = "synthetic"\nnum_devices = 6\n')
    config.write_text(text + extra)
    return config


def _start(
    procs: Procs, config: Path, *security: str, port: int | None = None, skip: int = -1
) -> tuple[Path, list]:
    """A CLI server on ``port`` (default a free one; writing to tmp/run) and the CLI clients
    0-2 but ``skip``, all started at once (a client that finds no server yet retries within a
    second or so); ``security`` is ``--insecure`` or ``--certs-dir DIR`` for both sides.
    Returns the run directory and the clients."""
    run_dir, port = procs.tmp / "run", port or free_port()
    procs.cli(
        "server", "server", "--config", str(config), *security, "--out", str(run_dir),
        "--port", str(port), "--min-clients", "3", "--round-timeout", "120",
    )  # fmt: skip
    clients = [
        procs.cli(f"client{c}", "client", "--server", f"127.0.0.1:{port}", "--config",
                  str(config), "--client-id", str(c), *security)
        for c in range(3) if c != skip
    ]  # fmt: skip
    return run_dir, clients


def _finish(procs: Procs, clients: list, run_dir: Path, config: Path):
    """Wait for the server and the clients to exit cleanly; the model and round records."""
    assert procs.wait(procs.procs[0], 300) == 0, procs.log("server")
    for p in clients:
        assert procs.wait(p, 300) == 0, procs.log(p.name)
    return final_vector(run_dir, config), load_checkpoint(run_dir).history


def _same_model(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(got, want), f"max diff {np.abs(got - want).max()}"


def _records(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Round records without the machine's timings (the checkpoint stores them as JSON)."""
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in history]


def test_fedadam_matches_simulation(procs):
    """FedAdam's server moments travel nowhere, but the model each round depends on them: two
    rounds over gRPC give the simulation's model and its every record (losses, accuracies,
    clients per round) exactly."""
    config = _config(procs.tmp, "fedadam")
    run_dir, clients = _start(procs, config, "--insecure")
    reference = simulate_run(config)
    got, history = _finish(procs, clients, run_dir, config)
    _same_model(got, reference.vector)
    assert _records(history) == _records(reference.history)


FEDPER_EXTRA = "[eval]\nfederated_every = 1\n"


def test_fedper_with_federated_evaluation_matches_simulation(procs):
    """FedPer: the clients keep their heads between rounds (two of three train a round, so a
    client may evaluate with no head yet) and evaluate their personalised models on held-out
    splits each round. The global model, client_accuracy_* / client_loss_mean and the global
    model's global_client_* must be the simulation's exactly, round by round."""
    config = _config(procs.tmp, "fedper", FEDPER_EXTRA)
    config.write_text(
        config.read_text().replace(
            "num_clients = 3", "num_clients = 3\nclient_test_fraction = 0.25"
        )
    )
    run_dir, clients = _start(procs, config, "--insecure")
    reference = simulate_run(config)
    got, history = _finish(procs, clients, run_dir, config)
    _same_model(got, reference.vector)
    keys = [f"{who}_{k}" for who in ("client_accuracy", "global_client_accuracy")
            for k in ("mean", "worst10", "min", "std")]  # fmt: skip
    keys += ["client_loss_mean", "global_client_loss_mean"]
    for net, sim in zip(history, reference.history, strict=True):
        assert all(k in sim for k in keys), sorted(sim)
        assert {k: net.get(k) for k in keys} == {k: sim[k] for k in keys}, net["round"]
    assert _records(history) == _records(reference.history)


DP_EXTRA = """\
[privacy]
noise_multiplier = 0.5
clip_norm = 0.5
adaptive_quantile = 0.5
noise = "seeded-testing-only"
"""


def test_dpfedavg_with_seeded_testing_noise_matches_simulation(procs):
    """DPFedAvg with Poisson sampling and adaptive clipping (the clip norm the server sends
    changes every round): with ``noise = "seeded-testing-only"`` (deployed servers refuse plain
    ``seeded``) the server draws the simulation's central noise, so the model and the dp_*
    records (epsilon, clip norm, noise std, unclipped fraction) are the simulation's exactly."""
    config = _config(procs.tmp, "dpfedavg", DP_EXTRA, rounds=3)
    run_dir, clients = _start(procs, config, "--insecure")
    reference = simulate_run(config)
    assert all(r["num_clients"] > 0 for r in reference.history), "a round sampled nobody"
    got, history = _finish(procs, clients, run_dir, config)
    _same_model(got, reference.vector)
    dp = ["dp_epsilon", "dp_delta", "dp_clip_norm", "dp_noise_std", "dp_unclipped_fraction"]
    for net, sim in zip(history, reference.history, strict=True):
        assert {k: net.get(k) for k in dp} == {k: sim[k] for k in dp}, net["round"]
    assert len({r["dp_clip_norm"] for r in history}) == 3  # adaptive clipping moved it
    assert _records(history) == _records(reference.history)


def test_dpfedavg_round_that_samples_nobody_matches_simulation(tmp_path):
    """A Poisson draw may select nobody (probability (1 - q)^N: 1/27 a round here). The
    simulation then releases a noise-only model (num_clients 0, the round's epsilon spent); the
    server must do the same. Stub clients over an in-process server's real socket suffice: no
    client trains in this round. A retried round ends the wait at once (it would repeat)."""
    seed = next(s for s in range(1000) if (_sampling_rng(s, 1).random(3) >= 2 / 3).all())
    config = _config(tmp_path, "dpfedavg", DP_EXTRA, rounds=1)
    config.write_text(config.read_text().replace("seed = 3", f"seed = {seed}"))
    reference = simulate_run(config)
    assert reference.history[0]["num_clients"] == 0
    cfg, _ = read_config(config)
    settings = ServerSettings(insecure=True, min_clients=3, poll_wait_s=0.2, round_timeout_s=60)
    server = FederatedServer.from_config(cfg, settings)
    settled, result = threading.Event(), {}

    class Retried(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "retrying the round" in record.getMessage():
                settled.set()

    def run() -> None:
        try:
            result.update(server.run())
        finally:
            settled.set()

    handler, server_log = Retried(), logging.getLogger("fedfleet.net.server")
    server_log.addHandler(handler)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.start()}")
    try:
        threading.Thread(target=run, daemon=True).start()
        stub = pb_grpc.FedFleetStub(channel)
        for cid in range(3):
            reg = pb.RegisterRequest(client_id=cid, layout_fingerprint=server.fingerprint,
                                     num_samples=50, protocol_version=PROTOCOL_VERSION)  # fmt: skip
            assert stub.Register(reg, timeout=30).ok
        for cid in range(3):  # connected once it asked for work (answered WAIT: nobody trains)
            read_task(stub, cid, server.layout.size, timeout=120)[2].cancel()
        assert settled.wait(300), "the server neither finished round 1 nor retried it"
        assert result, "the server retried round 1, whose Poisson draw is empty again"
    finally:
        server_log.removeHandler(handler)
        channel.close()
        server.stop(grace=0.5, linger_s=0)
    _same_model(result["vector"], reference.vector)
    assert _records(result["history"]) == _records(reference.history)


SECAGG_EXTRA = "[privacy]\nclip_norm = 0.5\n"


@pytest.fixture(scope="module")
def secagg_dropout(tmp_path_factory, certs_dir) -> Iterator[dict[str, Any]]:
    """One SecAgg round of three clients over mutual TLS, next to the simulation of it with
    simulated dropouts (``drop_rates={3: 1/3}``: a third of the cohort shares its keys and then
    sends no masked input). The client the simulation drops is stalled in the upload of its
    masked input over gRPC and SIGKILLed there. Shared by the two tests below (one run)."""
    procs = Procs(tmp_path_factory.mktemp("secagg_dropout"))
    try:
        config = _config(procs.tmp, "secagg", SECAGG_EXTRA, rounds=1)
        text = config.read_text().replace("clients_per_round = 2", "clients_per_round = 3")
        config.write_text(text)
        drawn: list[dict[int, set[int]]] = []
        draw = secagg_strategy.draw_dropouts

        def recorded(ids, rates, rng):
            drawn.append(draw(ids, rates, rng))
            return drawn[-1]

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(secagg_strategy, "draw_dropouts", recorded)
            reference = simulate_run(
                config, lambda s: dataclasses.replace(s, drop_rates={3: 1 / 3})
            )
        assert len(drawn) == 1 and len(drawn[0][3]) == 1, drawn
        (victim_id,) = drawn[0][3]
        assert reference.history[0]["secagg_included"] == 2.0

        port, marker = free_port(), procs.tmp / "stalled"
        addr = f"127.0.0.1:{port}"
        security = ("--certs-dir", str(certs_dir))
        run_dir, clients = _start(procs, config, *security, port=port, skip=victim_id)
        victim = procs.start(
            "victim", str(HERE / "secagg_worker.py"), str(config), addr, str(victim_id),
            str(certs_dir), str(marker),
        )  # fmt: skip
        wait_for(marker.exists, 180, "the victim to start uploading", (victim, procs.procs[0]))
        victim.send_signal(signal.SIGKILL)
        got, history = _finish(procs, clients, run_dir, config)
        yield {
            "victim": victim_id, "got": got, "history": history, "reference": reference,
            "log": procs.log("server"),
        }  # fmt: skip
    finally:
        procs.kill_all()


def test_secagg_client_dropping_mid_protocol_matches_simulated_dropout(secagg_dropout):
    """The survivors' shares of the dropped client's mask key unmask the sum of the other two:
    the model must be the simulation's bit for bit, and so must the round's record."""
    run = secagg_dropout
    victim, log = run["victim"], run["log"]
    assert f"client {victim}'s masked input broke off" in log, log
    assert f"clients [{victim}] dropped out of the secure sum" in log, log
    _same_model(run["got"], run["reference"].vector)
    (net,), (sim,) = _records(run["history"]), _records(run["reference"].history)
    assert net["secagg_included"] == 2.0 and net["secagg_aborted"] == 0.0
    # a SecAgg server gets no training loss (docs/secure_deployment.md, "What the server
    # learns"), in simulation as over the network: both sum through the same protocol code
    assert net["train_loss"] is None and sim["train_loss"] is None
    assert net == sim


def test_secagg_dropout_counts_the_same_clients_as_the_simulation(secagg_dropout):
    (net,), (sim,) = secagg_dropout["history"], secagg_dropout["reference"].history
    assert (net["num_clients"], net["num_rejected"]) == (sim["num_clients"], sim["num_rejected"])
