"""The codec every transport shares: messages survive a frame or an envelope exactly, and what is
truncated, oversized, malformed or of the wrong kind is refused with the sender's name and the
field's path, before anything is allocated."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from fedfleet._codec import (
    ArrayReceiver,
    CodecError,
    Job,
    Message,
    decode_evaluation,
    decode_header,
    decode_jobs,
    decode_results,
    encode_error,
    encode_evaluation,
    encode_header,
    encode_jobs,
    encode_results,
    from_frame,
    to_frame,
)
from fedfleet.client import FitInstructions, FitResult
from fedfleet.data import ArrayDataset
from fedfleet.errors import FedfleetError
from fedfleet.evaluation import ClientEvaluation
from fedfleet.strategies import ClientResult


def _frame(kind: str, body: dict, specs: list, data: bytes = b"") -> bytes:
    """A frame built by hand, as a hostile or buggy sender might."""
    text = json.dumps({"kind": kind, "body": body, "arrays": specs}).encode()
    return struct.pack("<4sI", b"FFC1", len(text)) + text + data


def _job(cid: int = 3, data: bool = True) -> Job:
    ins = FitInstructions(
        epochs=np.int64(2), batch_size=16, lr=np.float32(0.05), max_steps=None,
        config={"prox_mu": 0.01, "k": 2, "name": "x", "flag": True, "mu32": np.float32(0.5)},
        payload={"grad_correction": np.linspace(0, 1, 5, dtype=np.float32)},
    )  # fmt: skip
    x = np.arange(12, dtype=np.uint8).reshape(3, 2, 2)
    ds = ArrayDataset(x, np.array([0, 1, 2], np.int64)) if data else None
    return Job(cid, 2**64 - 1, ins, {"c_i": np.full(5, -1.5, np.float32)}, ds)


def _result(k: int = 0) -> ClientResult:
    fit = FitResult(
        np.full(5, k, np.float32), np.int64(60), 7,
        {"train_loss": np.float32(0.25), "nan": float("nan"), "n": 3},
    )  # fmt: skip
    return ClientResult(fit, {"c": np.ones(5, np.float32)}, {"c_i": np.zeros(5, np.float32)})


# ----- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a",
    [
        np.arange(6, dtype=np.float32).reshape(2, 3),
        np.array([-0.0, 1e-45, 3.4e38, np.nan, -np.inf], np.float32),
        np.array(7, np.int64),  # 0-d
        np.zeros((0, 5), np.float64),  # empty
        np.array([True, False]),
        np.arange(5, dtype=np.uint8)[::2],  # not contiguous
        np.arange(4, dtype=">i4"),  # big-endian in memory
        np.array([1.5, -2], np.float16),
    ],
)
def test_arrays_survive_a_frame_bit_for_bit(a):
    message = from_frame(to_frame(Message("results", {"x": 1}, [a])), "test")
    (back,) = message.arrays
    assert back.shape == a.shape and back.dtype == a.dtype.newbyteorder("=")
    assert back.tobytes() == np.ascontiguousarray(a, back.dtype).tobytes()
    assert back.flags.writeable and back.dtype.isnative and message.body == {"x": 1}


def test_jobs_survive_a_frame_with_their_types():
    job = _job()
    vector = np.arange(5, dtype=np.float32)
    got_vector, (back,) = decode_jobs(
        from_frame(to_frame(encode_jobs(vector, [job], with_data=True)), "t")
    )
    assert np.array_equal(got_vector, vector)
    assert (back.client_id, back.seed, back.num_samples) == (3, 2**64 - 1, 3)
    ins = back.instructions
    # NumPy scalars keep their type: a float32 lr must stay float32 to match in-process bits
    assert type(ins.epochs) is np.int64 and type(ins.lr) is np.float32 and ins.max_steps is None
    assert ins.config == job.instructions.config
    assert [type(v) for v in ins.config.values()] == [float, int, str, bool, np.float32]
    assert np.array_equal(
        ins.payload["grad_correction"], job.instructions.payload["grad_correction"]
    )
    assert np.array_equal(back.state["c_i"], job.state["c_i"])
    assert back.data is not None and back.data.x.dtype == np.uint8
    assert np.array_equal(back.data.x, job.data.x) and np.array_equal(back.data.y, job.data.y)


def test_jobs_without_data_or_vector_carry_the_senders_sample_count():
    message = encode_jobs(None, [_job(data=True), _job(4, data=False)], with_data=False)
    vector, jobs = decode_jobs(from_frame(to_frame(message), "t"))
    assert vector is None
    assert [(j.client_id, j.data, j.num_samples) for j in jobs] == [(3, None, 3), (4, None, None)]


def test_results_survive_a_frame_with_their_types_and_nans():
    back = decode_results(from_frame(to_frame(encode_results([_result(1), _result(2)])), "t"))
    assert [float(r.fit.vector[0]) for r in back] == [1.0, 2.0]
    fit = back[0].fit
    assert type(fit.num_samples) is np.int64 and fit.num_steps == 7
    assert type(fit.metrics["train_loss"]) is np.float32 and np.isnan(fit.metrics["nan"])
    assert np.array_equal(back[1].extras["c"], np.ones(5)) and "c_i" in back[1].state
    no_state = decode_results(
        from_frame(to_frame(encode_results([_result()], with_state=False)), "t")
    )
    assert no_state[0].state is None


def test_a_frame_copies_each_array_once_and_shares_nothing_with_the_sender():
    vector = np.ones(1000, np.float32)
    frame = to_frame(encode_jobs(vector, []))
    vector[:] = 2  # the frame holds its own bytes
    back, _ = decode_jobs(from_frame(frame, "t"))
    assert np.all(back == 1) and not np.shares_memory(back, vector)


def test_an_error_message_raises_its_text():
    with pytest.raises(FedfleetError, match="ValueError: boom"):
        decode_results(from_frame(to_frame(encode_error("ValueError: boom")), "worker 1"))


def test_an_evaluation_report_round_trips_and_is_checked():
    plain = ClientEvaluation(10, 0.5, 0.75)
    raw = encode_header(encode_evaluation(plain))
    back = decode_evaluation(decode_header(raw, "c").with_arrays([]), registered=10)
    assert back == plain and not back.personalized
    own = ClientEvaluation(4, 0.25, 1.0, 0.5, 0.0)
    assert decode_evaluation(encode_evaluation(own), registered=4).personalized

    def refused(report: ClientEvaluation, registered: int = 10) -> str:
        with pytest.raises(CodecError) as info:
            decode_evaluation(
                Message("evaluation", encode_evaluation(report).body, source="client 5"),
                registered=registered,
            )
        return str(info.value)

    assert "client 5: accuracy 1.5 outside [0, 1]" in refused(ClientEvaluation(1, 0.5, 1.5))
    assert "must be finite" in refused(ClientEvaluation(1, float("nan"), 0.5))
    assert "global_loss -1.0 is negative" in refused(ClientEvaluation(1, 0.5, 0.5, -1.0, 0.5))
    assert "outside 0..3" in refused(ClientEvaluation(4, 0.5, 0.5), registered=3)
    one_only = Message("evaluation", {**encode_evaluation(plain).body, "global_loss": 0.5})
    with pytest.raises(CodecError, match="global_accuracy: must be a number"):
        decode_evaluation(one_only, registered=10)


# ----- frames refused --------------------------------------------------------------------------


def test_every_truncation_of_a_frame_is_refused():
    frame = to_frame(encode_results([_result()]))
    for n in range(len(frame)):
        with pytest.raises(CodecError, match="worker 0: "):
            from_frame(frame[:n], "worker 0")
    with pytest.raises(CodecError, match="3 bytes past the frame's declared arrays"):
        from_frame(frame + b"abc", "worker 0")
    with pytest.raises(CodecError, match="not a fedfleet frame"):
        from_frame(b"FFJ1" + frame[4:], "worker 0")


@pytest.mark.parametrize(
    "shape",
    [[2**62], [2**32, 2**32], [2**40, 2**40, 2**40], [1, 2**63]],  # 2**64: wrapped to 0 in int64
)
def test_oversized_declared_arrays_are_refused_before_reading(shape):
    frame = _frame("results", {}, [{"name": "vector", "dtype": "<f4", "shape": shape}], b"\0" * 64)
    with pytest.raises(CodecError, match=r"truncated frame: array 0 \('vector', <f4 .*\) needs"):
        from_frame(frame, "worker 2")


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"name": "v", "dtype": "|O", "shape": [1]}, "declares dtype '|O'; numbers only"),
        ({"name": "v", "dtype": "<c8", "shape": [1]}, "numbers only"),
        ({"name": "v", "dtype": "|V8", "shape": [1]}, "numbers only"),
        ({"name": "v", "dtype": ">f4", "shape": [1]}, "numbers only"),  # little-endian only
        ({"name": "v", "dtype": "<f4", "shape": [-1]}, "non-negative integers"),
        ({"name": "v", "dtype": "<f4", "shape": [True]}, "non-negative integers"),
        ({"name": "v", "dtype": "<f4", "shape": [1.0]}, "non-negative integers"),
        ({"name": "v", "dtype": "<f4", "shape": [1] * 33}, "at most 32"),
        ({"name": "v", "dtype": "<f4", "shape": 4}, "declares shape 4"),
        ({"name": "v", "dtype": "<f4"}, "must be {name, dtype, shape}"),
        ({"name": 1, "dtype": "<f4", "shape": [1]}, "name must be a string"),
    ],
)
def test_a_header_can_declare_numeric_arrays_and_nothing_else(spec, match):
    with pytest.raises(CodecError, match=match):
        from_frame(_frame("results", {}, [spec], b"\0" * 64), "worker 2")


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"not json", "the header is not JSON"),
        (b"\xff\xfe{", "the header is not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "the header is not JSON"),  # nesting bomb
        (b"[]", "must be a JSON object"),
        (b'{"kind": "jobs", "body": {}}', "must be a JSON object"),
        (b'{"kind": 1, "body": {}, "arrays": []}', "kind must be a string"),
    ],
)
def test_a_header_that_is_not_one_is_refused(raw, match):
    with pytest.raises(CodecError, match=f"client 7's update: .*{match}"):
        decode_header(raw, "client 7's update")


# ----- bodies refused --------------------------------------------------------------------------


def _body_of(message: Message) -> dict:
    return json.loads(json.dumps(message.body))


def _refuse(kind: str, body: dict, arrays: list, match: str) -> None:
    message = Message(kind, body, arrays, source="worker 3")
    decode = decode_jobs if kind == "jobs" else decode_results
    with pytest.raises(CodecError, match=match):
        decode(from_frame(to_frame(message), "worker 3"))


def test_a_reply_with_missing_unknown_or_mistyped_fields_is_refused_by_path():
    good = encode_results([_result()])
    arrays = list(good.arrays)
    cases = [
        (lambda r: r.pop("num_steps"), r"results\[0\]: has fields .*; expected exactly"),
        (lambda r: r.update(delta=0), r"results\[0\]: has fields .*'delta'"),
        (lambda r: r.update(num_steps="7"), r"results\[0\].num_steps: must be an integer"),
        (lambda r: r.update(num_steps=2**70), "outside int64/uint64"),
        (lambda r: r.update(num_steps=1.5), "must be an integer"),
        (lambda r: r.update(num_samples={"np": "|O", "v": 1}), "is not a NumPy scalar"),
        (lambda r: r.update(num_samples={"np": "|i1", "v": 300}), "is not a |i1 value"),
        (lambda r: r["metrics"].update(x="high"), r"metrics\['x'\]: must be a number"),
        (lambda r: r["metrics"].update(x=[1]), "must be a number, string or bool"),
        (lambda r: r["metrics"].update(x={"np": "<f4", "v": 1e300}), "is not a <f4 value"),
        (lambda r: r.update(vector=9), r"vector: must be the index of one of the message's 3"),
        (lambda r: r.update(vector=True), "must be the index"),
        (lambda r: r["extras"].update(c=0), r"extras\['c'\]: refers to array 0, which another"),
        (lambda r: r.update(state=None), r"arrays \[2\] are declared but nothing refers to them"),
        (lambda r: r.update(extras=[1]), r"extras: must be an object, got list"),
    ]
    for change, match in cases:
        body = _body_of(good)
        change(body["results"][0])
        _refuse("results", body, arrays, f"worker 3: .*{match}")


def test_a_job_with_mistyped_fields_is_refused_by_path():
    good = encode_jobs(np.zeros(5, np.float32), [_job()], with_data=True)
    ins = r"jobs\[0\].instructions"
    cases = [
        (lambda j: j["instructions"].update(lr="fast"), f"{ins}.lr: must be a number"),
        (lambda j: j["instructions"].update(epochs=True), f"{ins}.epochs: must be an integer"),
        (lambda j: j["instructions"]["config"].update(x=None), ins + r".config\['x'\]: must be a"),
        (lambda j: j["instructions"].pop("payload"), f"{ins}: has fields"),
        (lambda j: j.update(data=[3]), r"jobs\[0\].data: must be \[x, y\]"),
    ]
    for change, match in cases:
        body = _body_of(good)
        change(body["jobs"][0])
        _refuse("jobs", body, list(good.arrays), f"worker 3: {match}")
    arrays = list(good.arrays)  # vector, payload, state, x, y
    arrays[3] = np.zeros((5, 2, 2), np.uint8)
    _refuse("jobs", good.body, arrays, r"jobs\[0\].data: x has 5 samples but y has 3")


def test_a_message_of_another_kind_is_refused():
    frame = to_frame(encode_jobs(np.zeros(2, np.float32), []))
    with pytest.raises(CodecError, match="worker 1: expected a 'results' message, got 'jobs'"):
        decode_results(from_frame(frame, "worker 1"))


def test_what_cannot_be_sent_is_refused_when_encoding():
    with pytest.raises(CodecError, match="numbers only"):
        to_frame(Message("results", {}, [np.array([object()])], ["x"]))
    with pytest.raises(CodecError, match="numbers only"):
        to_frame(Message("results", {}, [np.zeros(2, np.complex64)], ["x"]))
    ins = FitInstructions(config={"schedule": [1, 2]})
    with pytest.raises(CodecError, match=r"config\['schedule'\] = list"):
        encode_jobs(None, [Job(0, 0, ins)])
    with pytest.raises(CodecError, match="names must be strings"):
        encode_jobs(None, [Job(0, 0, FitInstructions(payload={1: np.zeros(2)}))])  # type: ignore[dict-item]


# ----- chunked arrays --------------------------------------------------------------------------


def _chunks(a: np.ndarray, size: int, index: int = 0):
    raw = a.tobytes()
    return [(index, off, raw[off : off + size]) for off in range(0, len(raw), size)]


def test_chunked_arrays_land_in_place():
    vector = np.random.default_rng(0).standard_normal(1000, dtype=np.float32)
    message = encode_results([ClientResult(FitResult(vector, 1, 1, {}), {"c": vector * 2})])
    head = decode_header(encode_header(message), "client 1")
    row = np.empty(1000, np.float32)
    rx = ArrayReceiver(head, size=1000, most=9, out={0: row})
    for chunk in _chunks(vector, 512) + _chunks(vector * 2, 333, 1):
        assert not rx.complete
        rx.add(*chunk)
    assert rx.complete
    (result,) = decode_results(rx.finish())
    assert result.fit.vector is row and np.array_equal(row, vector)
    assert np.array_equal(result.extras["c"], vector * 2)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (
            {"name": "vector", "dtype": "<f4", "shape": [9]},
            r"expected shape \(10,\) for this model",
        ),
        ({"name": "vector", "dtype": "<f4", "shape": [2**62]}, r"expected shape \(10,\)"),
        ({"name": "vector", "dtype": "<f8", "shape": [10]}, "dtype must be '<f4'"),
        ({"name": "vector", "dtype": "<f4", "shape": []}, r"expected shape \(10,\)"),
    ],
)
def test_the_receiver_refuses_other_arrays_before_allocating(spec, match):
    head = decode_header(
        json.dumps({"kind": "results", "body": {}, "arrays": [spec]}).encode(), "client 4"
    )
    with pytest.raises(CodecError, match=f"client 4: array 0 .*{match}"):
        ArrayReceiver(head, size=10, most=9)


def test_the_receiver_refuses_out_of_order_oversized_and_truncated_streams():
    spec = {"name": "vector", "dtype": "<f4", "shape": [4]}
    head = decode_header(
        json.dumps({"kind": "results", "body": {}, "arrays": [spec]}).encode(), "client 4"
    )
    rx = ArrayReceiver(head, size=4, most=9)
    with pytest.raises(CodecError, match="in order"):
        rx.add(0, 4, b"\0" * 4)
    with pytest.raises(CodecError, match="covers bytes"):
        rx.add(0, 0, b"\0" * 20)
    with pytest.raises(CodecError, match="declares 1"):
        rx.add(5, 0, b"\0")
    rx.add(0, 0, b"\0" * 8)
    with pytest.raises(CodecError, match="client 4: the stream ended after 8 of 16 bytes"):
        rx.finish()
    many = decode_header(
        json.dumps({"kind": "results", "body": {}, "arrays": [spec] * 20}).encode(), "c"
    )
    with pytest.raises(CodecError, match="declares 20 arrays, at most 9"):
        ArrayReceiver(many, size=4, most=9)
    with pytest.raises(CodecError, match="declares no arrays"):
        ArrayReceiver(
            decode_header(b'{"kind": "results", "body": {}, "arrays": []}', "c"), size=4, most=9
        )
