"""The codec's messages in protobuf envelopes, without a network: a task's job, an upload's reply
and an evaluation report survive serialisation exactly; the arrays travel in chunks. (The codec
itself, and what its receivers refuse, is tested in tests/test_codec.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedfleet._codec import decode_evaluation, decode_header, decode_results
from fedfleet._proto import fedfleet_pb2 as pb
from fedfleet.client import FitInstructions, FitResult
from fedfleet.evaluation import ClientEvaluation
from fedfleet.net import ServerSettings
from fedfleet.net._wire import (
    MAX_EXTRAS,
    WireError,
    chunk_messages,
    evaluation_to_pb,
    instructions_from_header,
    instructions_to_header,
    receiver,
    reply_to_header,
)
from fedfleet.strategies import ClientResult


def _receive(raw: bytes, kind: str, size: int, chunks, out=None):
    rx = receiver(raw, "test", kind=kind, size=size, out=out)
    for c in chunks:
        rx.add(c.tensor, c.offset, c.data)
    return rx


def test_a_model_larger_than_the_message_limit_travels_in_chunks_bit_for_bit():
    limit = 4 << 20  # gRPC's default per-message limit
    vec = np.random.default_rng(0).standard_normal(3_000_000, dtype=np.float32)  # 12 MB
    vec[:3] = [np.float32(-0.0), np.float32(1e-45), np.float32(3.4e38)]
    h = pb.TaskHeader(kind=pb.TaskHeader.EVALUATE)
    assert instructions_to_header(None, h, vec) == []  # an EVALUATE task: the model alone
    h = pb.TaskHeader.FromString(h.SerializeToString())
    received = []
    for chunk in chunk_messages([vec], 1 << 20):
        msg = pb.TaskMessage(chunk=chunk).SerializeToString()
        assert len(msg) < limit
        received.append(pb.TaskMessage.FromString(msg).chunk)
    assert len(received) == 12
    rx = _receive(h.job, "jobs", vec.size, received)
    out, job = instructions_from_header(rx.head, rx.finish().arrays)
    assert job is None and out.dtype == np.float32 and out.tobytes() == vec.tobytes()


def test_a_task_header_carries_the_job_exactly():
    correction = np.arange(5, dtype=np.float64)  # the wire's only dtype is float32
    ins = FitInstructions(
        epochs=3, batch_size=np.int64(7), lr=0.1 + 1e-17, max_steps=11,
        config={"prox_mu": np.float32(0.01), "k": 2, "name": "x", "flag": True},
        payload={"grad_correction": correction},
    )  # fmt: skip
    h = pb.TaskHeader(kind=pb.TaskHeader.TRAIN, round=4)
    vec = np.ones(5, np.float32)
    payload = instructions_to_header(ins, h, vec, seed=2**64 - 1, client_id=9)
    assert [p.dtype for p in payload] == [np.float32]
    h = pb.TaskHeader.FromString(h.SerializeToString())
    chunks = list(chunk_messages([vec], 8)) + list(chunk_messages(payload, 8, start=1))
    rx = _receive(h.job, "jobs", 5, chunks)
    got, job = instructions_from_header(rx.head, rx.finish().arrays)
    assert np.array_equal(got, vec) and job is not None
    assert (job.client_id, job.seed) == (9, 2**64 - 1)
    back = job.instructions
    assert (back.epochs, back.batch_size, back.lr, back.max_steps) == (3, 7, 0.1 + 1e-17, 11)
    assert type(back.batch_size) is np.int64  # NumPy scalars keep their type, as in-process
    assert back.config == ins.config
    assert [type(v) for v in back.config.values()] == [np.float32, int, str, bool]
    assert np.array_equal(back.payload["grad_correction"], correction.astype(np.float32))
    h2 = pb.TaskHeader()
    instructions_to_header(FitInstructions(), h2, vec)
    rx = _receive(h2.job, "jobs", 5, chunk_messages([vec], 64))
    assert instructions_from_header(rx.head, rx.finish().arrays)[1].instructions.max_steps is None


def test_an_update_header_carries_the_reply_but_never_the_clients_state():
    trained = np.linspace(-1, 1, 6, dtype=np.float32)
    fit = FitResult(trained, 50, np.int64(3), {"train_loss": np.float32(0.25)})
    result = ClientResult(fit, {"c": np.ones(6, np.float64)}, state={"c_i": np.zeros(6)})
    h = pb.UpdateHeader(client_id=2, round=1, task_id="t", layout_fingerprint="fp")
    arrays = reply_to_header(result, h)
    assert [a.dtype for a in arrays] == [np.float32, np.float32]
    h = pb.UpdateHeader.FromString(h.SerializeToString())
    assert "c_i" not in json.loads(h.reply)["body"]["results"][0] and b"c_i" not in h.reply
    row = np.full(6, np.nan, np.float32)
    rx = _receive(h.reply, "results", 6, chunk_messages(arrays, 16), out={0: row})
    (back,) = decode_results(rx.finish())
    assert back.fit.vector is row and np.array_equal(row, trained)  # written in place
    assert (back.fit.num_samples, back.fit.num_steps) == (50, 3)
    assert type(back.fit.metrics["train_loss"]) is np.float32 and back.state is None
    assert np.array_equal(back.extras["c"], np.ones(6, np.float32))


def test_the_receiver_takes_only_the_expected_kind_and_at_most_one_vector_plus_extras():
    h = pb.UpdateHeader()
    fit = FitResult(np.zeros(4, np.float32), 1, 1, {})
    extras = {f"e{i}": np.zeros(4, np.float32) for i in range(MAX_EXTRAS + 1)}
    reply_to_header(ClientResult(fit, extras), h)
    with pytest.raises(WireError, match=f"declares {MAX_EXTRAS + 2} arrays, at most"):
        receiver(h.reply, "client 3's update", kind="results", size=4)
    t = pb.TaskHeader()
    instructions_to_header(None, t, np.zeros(4, np.float32))
    with pytest.raises(WireError, match="client 3's update: expected a 'results' message"):
        receiver(t.job, "client 3's update", kind="results", size=4)


def test_an_evaluation_report_travels_in_its_envelope():
    request = pb.EvaluationResult(client_id=1, round=2, task_id="t")
    evaluation_to_pb(ClientEvaluation(7, 0.5, 0.75, 0.25, 1.0), request)
    back = pb.EvaluationResult.FromString(request.SerializeToString())
    report = decode_evaluation(decode_header(back.report, "c").with_arrays([]), registered=7)
    assert report == ClientEvaluation(7, 0.5, 0.75, 0.25, 1.0) and report.personalized


def test_chunk_size_must_fit_the_message_limit():
    with pytest.raises(Exception, match="chunk_size"):
        ServerSettings(insecure=True, chunk_size=4 << 20, max_message_bytes=4 << 20)
