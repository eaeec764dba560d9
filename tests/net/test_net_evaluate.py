"""Federated evaluation over a real socket: the server asks clients to evaluate the global model
and refuses reports that are not finite, out of range, or for a task that is not theirs."""

from __future__ import annotations

import threading

import grpc
import numpy as np

from conftest import read_task, write_config
from fedfleet._proto import fedfleet_pb2 as pb
from fedfleet._proto import fedfleet_pb2_grpc as pb_grpc
from fedfleet.client import FitResult
from fedfleet.evaluation import ClientEvaluation, fairness_stats
from fedfleet.net import FederatedServer, ServerSettings
from fedfleet.net._checkpoint import load_checkpoint
from fedfleet.net._cli import read_config
from fedfleet.net._wire import PROTOCOL_VERSION, chunk_messages, evaluation_to_pb, reply_to_header
from fedfleet.strategies import ClientResult

SAMPLES, HELD_OUT = 50, 10


def test_evaluation_reports_are_validated_and_summarised(tmp_path):
    cfg, _ = read_config(write_config(tmp_path / "run.toml", rounds=2))
    cfg = cfg.model_copy(
        update={
            "eval": cfg.eval.model_copy(update={"every": 0, "federated_every": 1}),
            "data": cfg.data.model_copy(update={"client_test_fraction": 0.2}),
            "strategy": cfg.strategy.model_copy(update={"clients_per_round": 3}),
        }
    )
    settings = ServerSettings(
        insecure=True, min_clients=3, round_timeout_s=20.0, poll_wait_s=0.2, chunk_size=1 << 16,
        run_dir=tmp_path / "run",
    )  # fmt: skip
    server = FederatedServer.from_config(cfg, settings)
    fp = server.fingerprint
    port = server.start()
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(server.run()), daemon=True)
    runner.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.FedFleetStub(channel)

    open_streams = []  # a task's stream stays open until the task is answered

    def task(cid: int) -> tuple[pb.TaskHeader, np.ndarray]:
        while True:
            h, arrays, stream = read_task(stub, cid, server.layout.size, timeout=120)
            if h.kind != pb.TaskHeader.WAIT:
                open_streams.append(stream)
                return h, arrays.get("vector")

    def report(cid: int, h: pb.TaskHeader, task_id=None, **fields) -> pb.EvaluationReply:
        fields = {"num_samples": HELD_OUT, "loss": 0.5, "accuracy": 0.5, **fields}
        msg = pb.EvaluationResult(client_id=cid, round=h.round, task_id=task_id or h.task_id)
        evaluation_to_pb(ClientEvaluation(**fields), msg)
        return stub.SubmitEvaluation(msg, timeout=10)

    def train(cid: int) -> None:
        h, vector = task(cid)
        assert h.kind == pb.TaskHeader.TRAIN
        wrong = report(cid, h)  # an evaluation for a TRAIN task: refused, the task stays open
        assert not wrong.accepted and "is a TRAIN task" in wrong.reason
        header = pb.UpdateHeader(
            client_id=cid, round=h.round, task_id=h.task_id, layout_fingerprint=fp
        )
        arrays = reply_to_header(ClientResult(FitResult(vector, SAMPLES, 1, {})), header)
        chunks = [pb.UpdateMessage(chunk=c) for c in chunk_messages(arrays, 1 << 16)]
        reply = stub.SubmitUpdate(iter([pb.UpdateMessage(header=header), *chunks]), timeout=10)
        assert reply.accepted, reply.reason

    def refused(reply: pb.EvaluationReply, *why: str) -> None:
        """Refused for one of the reasons ``why``."""
        assert not reply.accepted and any(w in reply.reason for w in why), reply.reason

    try:
        for cid in range(3):
            reg = pb.RegisterRequest(
                client_id=cid, layout_fingerprint=fp, num_samples=SAMPLES,
                num_test_samples=HELD_OUT, protocol_version=PROTOCOL_VERSION,
            )  # fmt: skip
            assert stub.Register(reg, timeout=10).ok
        for cid in range(3):  # a client counts as connected once it has asked for work
            read_task(stub, cid, server.layout.size, timeout=120)
        for cid in range(3):
            train(cid)
        first = {cid: task(cid)[0] for cid in range(3)}
        assert all(h.kind == pb.TaskHeader.EVALUATE for h in first.values())
        assert all(h.applied_round == 1 for h in first.values())
        # the headers let clients commit round 1's state: round 1's checkpoint, which a
        # resumed server would continue from, must already say so (or it would replay it)
        ckpt = load_checkpoint(tmp_path / "run")
        assert ckpt.round == 1
        assert {c["applied_round"] for c in ckpt.server["clients"].values()} == {1}
        refused(report(0, first[0], accuracy=1.5), "outside [0, 1]")
        refused(report(1, first[1], loss=float("nan")), "must be finite")
        assert report(2, first[2], accuracy=0.75, loss=0.25).accepted
        # a replay: refused as answered, or as of no open task once the loop closed the round
        refused(report(2, first[2]), "already answered (replayed)", "no open task")
        for cid in range(3):
            train(cid)
        second = {cid: task(cid)[0] for cid in range(3)}
        refused(report(0, second[0], num_samples=HELD_OUT + 1), f"outside 0..{HELD_OUT}")
        refused(report(1, second[1], task_id=first[1].task_id), "stale or replayed")
        assert report(1, second[1], accuracy=0.25, loss=1.0, num_samples=4).accepted
        assert report(2, second[2], accuracy=0.5, loss=0.5).accepted
        runner.join(30)
        assert not runner.is_alive()
    finally:
        channel.close()
        server.stop(grace=0.5, linger_s=0)
    one, two = result["history"]
    assert load_checkpoint(tmp_path / "run").history == result["history"]  # evaluation too
    assert one["client_accuracy_mean"] == 0.75 and one["client_loss_mean"] == 0.25
    assert {k: two[f"client_accuracy_{k}"] for k in ("mean", "min", "worst10", "std")} == (
        fairness_stats([0.25, 0.5])
    )
    assert two["client_loss_mean"] == (4 * 1.0 + HELD_OUT * 0.5) / (4 + HELD_OUT)
