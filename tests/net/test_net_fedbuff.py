"""FedBuff over gRPC: the asynchronous loop simulated FedBuff runs, with the server as its
transport. Replayed in simulation in the order the server took the arrivals, it ends with the
very same model."""

from __future__ import annotations

import threading
from typing import Any

import grpc
import numpy as np

import fedfleet as ff
from conftest import read_task, wait_for
from fedfleet._proto import fedfleet_pb2 as pb
from fedfleet._proto import fedfleet_pb2_grpc as pb_grpc
from fedfleet.net import FederatedServer, RunSpec, ServerSettings
from fedfleet.net._cli import read_config
from fedfleet.net._wire import PROTOCOL_VERSION
from fedfleet.rounds import TIMING_KEYS, Dispatch
from fedfleet.runs._build import build_federation, build_strategy, build_trainer, load_task_for
from fedfleet.sim import FedBuffSimulation

FEDBUFF_TOML = """\
seed = 5
rounds = {versions}
[data]
num_clients = 3
[model]
hidden = [16]
[strategy]
name = "fedbuff"
buffer_size = 2
concurrency = 3
[client]
epochs = 1
batch_size = 32
lr = 0.1
"""


def _replay(config_path, order: list[tuple[int, int]], versions: int):
    """The simulation with arrivals in ``order`` (dispatch numbers, as the server took them)."""
    cfg, _ = read_config(config_path)
    task = load_task_for(cfg)
    fed = build_federation(cfg, task)
    trainer = build_trainer(cfg, task)
    strategy = build_strategy(cfg, trainer, fed.num_clients)
    rank = {number: i for i, (number, _) in enumerate(order)}
    sim = FedBuffSimulation(
        trainer,
        fed,
        local=strategy.local,
        buffer_size=strategy.buffer_size,
        concurrency=strategy.concurrency,
        staleness_weight=strategy.staleness_weight,
        seed=cfg.seed,
        eval_every=cfg.eval.every,
        # dispatches that never came back before the end go last, in dispatch order
        arrival_time=lambda job, now: float(rank.get(job.number, len(rank) + job.number)),
    )
    return sim.run(versions)


def test_fedbuff_over_grpc_equals_the_simulation_in_the_same_arrival_order(procs):
    versions = 4
    config = procs.tmp / "fedbuff.toml"
    config.write_text(FEDBUFF_TOML.format(versions=versions))
    cfg, _ = read_config(config)
    task = load_task_for(cfg)
    trainer = build_trainer(cfg, task)
    # fedfleet.net takes a trainer, a strategy and settings (no run config needed)
    server = FederatedServer(
        trainer,
        build_strategy(cfg, trainer, cfg.data.num_clients),
        ServerSettings(insecure=True, min_clients=3, round_timeout_s=600.0),
        RunSpec(seed=cfg.seed, rounds=versions, test_data=task.test),
    )
    port = server.start()
    result: dict[str, Any] = {}
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            result.update(server.run())
        except BaseException as err:  # reported by the assertion below
            errors.append(err)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    clients = [
        procs.cli(f"client{c}", "client", "--server", f"127.0.0.1:{port}", "--config",
                  str(config), "--client-id", str(c), "--insecure")
        for c in range(3)
    ]  # fmt: skip
    try:
        wait_for(lambda: not thread.is_alive(), 300, "the FedBuff server run", tuple(clients))
    finally:
        server.stop()
    assert not errors, errors
    for p in clients:
        assert procs.wait(p, 300) == 0, procs.log(p.name)

    history = result["history"]
    assert [r["version"] for r in history] == list(range(1, versions + 1))
    assert all(r["num_clients"] == 2 and r["staleness_max"] >= 0 for r in history)
    order = server.arrival_order
    assert len(order) >= 2 * versions and len({n for n, _ in order}) == len(order)

    replay = _replay(config, order, versions)
    assert np.array_equal(result["vector"], replay.vector), (
        f"max diff {np.abs(result['vector'] - replay.vector).max()}"
    )

    def strip(records):
        return [
            {k: v for k, v in r.items() if k not in TIMING_KEYS and k != "sim_time_s"}
            for r in records
        ]

    assert strip(history) == strip(replay.history)


def test_a_client_dispatched_again_before_its_old_task_stream_ended_gets_that_stream_ended():
    """The race that hung a CI run: the client answered, the loop took the answer and dispatched
    the same client again before the old task's GetTask stream looked at its answer. The client
    reads that stream to its end before it polls again, so the stream must end (it is no
    longer the client's task) rather than wait for an answer to the new task."""
    trainer = ff.NumpyLogisticRegression((4,), 2)
    strategy = ff.FedBuff(buffer_size=1, concurrency=1)
    settings = ServerSettings(insecure=True, min_clients=1, poll_wait_s=0.2)
    server = FederatedServer(trainer, strategy, settings)
    server.start()
    try:
        vector = trainer.init_vector(0)
        server._open_asynchronous(vector)
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.FedFleetStub(channel)
            reply = stub.Register(
                pb.RegisterRequest(
                    client_id=0,
                    layout_fingerprint=server.fingerprint,
                    num_samples=10,
                    protocol_version=PROTOCOL_VERSION,
                ),
                timeout=60,
            )
            assert reply.ok, reply.message
            server.dispatch([Dispatch(1, 0, 0, vector, strategy.local, 11)])
            header, arrays, old = read_task(stub, 0, trainer.layout.size, timeout=120)
            assert header.kind == pb.TaskHeader.TRAIN
            assert np.array_equal(arrays["vector"], vector)
            # dispatched again (as after a taken answer) while the old stream is still open
            server.dispatch([Dispatch(2, 0, 1, vector + 1, strategy.local, 12)])
            assert list(old) == []  # the old stream ends (it blocked forever before the fix)
            header2, arrays2, new = read_task(stub, 0, trainer.layout.size, timeout=120)
            assert header2.kind == pb.TaskHeader.TRAIN and header2.task_id != header.task_id
            assert np.array_equal(arrays2["vector"], vector + 1)
            new.cancel()
    finally:
        server.stop(linger_s=0)
