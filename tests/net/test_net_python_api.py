"""``fedfleet.net`` from Python alone: a server and clients built from a trainer, a strategy and
settings (no run config, no CLI) over real gRPC on 127.0.0.1 end on the simulation's model."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch

import fedfleet as ff
from fedfleet.data.partition import iid, train_test_split_clients
from fedfleet.net import ClientSettings, FederatedClient, FederatedServer, RunSpec, ServerSettings
from fedfleet.sim import TIMING_KEYS

SEED, ROUNDS, CLIENTS = 5, 3, 3


def _federation() -> ff.Federation:
    """Synthetic data split IID over three clients, a quarter of each held out."""
    task = ff.data.synthetic(0.5, 0.5, num_devices=6, seed=SEED)
    parts = iid(len(task.train), CLIENTS, seed=SEED)
    train, test = train_test_split_clients(parts, 0.25, seed=SEED)
    return ff.Federation(task, train, test)


def _trainer(fed: ff.Federation) -> ff.TorchTrainer:
    shape, classes = fed.task.input_shape, fed.task.num_classes
    return ff.TorchTrainer(lambda: ff.models.mlp(shape, classes, hidden=(16,)))


def _strategy() -> ff.Scaffold:
    """SCAFFOLD: the clients' control variates live in the client objects between rounds."""
    local = ff.FitInstructions(epochs=1, batch_size=16, lr=0.1)
    return ff.Scaffold(num_clients=CLIENTS, clients_per_round=2, local=local)


def _records(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in history]


def test_server_and_clients_built_in_python_match_the_simulation():
    """Server and clients (each with its own trainer, as separate processes would have) are
    built from the pieces a simulation takes; over loopback gRPC they give the simulation's
    model bit for bit, and its round records, federated evaluation included."""
    torch.set_num_threads(1)
    fed = _federation()
    reference = ff.Simulation(
        _trainer(fed), fed, _strategy(), seed=SEED, federated_eval_every=1
    ).run(ROUNDS)

    run = RunSpec(seed=SEED, rounds=ROUNDS, test_data=fed.task.test, federated_every=1)
    settings = ServerSettings(insecure=True, min_clients=CLIENTS, round_timeout_s=120)
    server = FederatedServer(_trainer(fed), _strategy(), settings, run)
    port = server.start()
    errors: list[BaseException] = []
    result: dict[str, Any] = {}

    def guarded(fn: Any) -> Any:
        def call() -> None:
            try:
                fn()
            except BaseException as err:  # reported by the assertion below
                errors.append(err)

        return call

    clients = [
        FederatedClient(
            _trainer(fed),
            _strategy(),
            ClientSettings(server=f"127.0.0.1:{port}", insecure=True, backoff_max_s=1.0),
            client_id=cid,
            data=fed.train_data(cid),
            test_data=fed.test_data(cid),
        )
        for cid in range(CLIENTS)
    ]
    assert all(c.config is None for c in clients)  # no run config anywhere
    threads = [threading.Thread(target=guarded(c.run), daemon=True) for c in clients]
    threads.append(threading.Thread(target=guarded(lambda: result.update(server.run()))))
    try:
        for t in threads:
            t.start()
        threads[-1].join(300)
        assert not threads[-1].is_alive(), "the server did not finish within 300 s"
    finally:
        server.stop()
    for t in threads:
        t.join(120)
        assert not t.is_alive(), "a client did not hear that the run is over"
    assert not errors, errors

    got, want = result["vector"], reference.vector
    assert got.dtype == want.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(got, want), f"max diff {np.abs(got - want).max()}"
    assert _records(result["history"]) == _records(reference.history)
    assert "client_accuracy_mean" in result["history"][-1]
    trained = sorted(r for c in clients for r in c.rounds_done)
    assert trained == sorted([1, 1, 2, 2, 3, 3])  # two clients a round, each round accepted
