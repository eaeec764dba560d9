"""The wire format without a network: chunking, reassembly and what a receiver refuses."""

from __future__ import annotations

import numpy as np
import pytest

from fedfleet._proto import fedfleet_pb2 as pb
from fedfleet.client.protocol import FitInstructions
from fedfleet.net.server import ServerSettings, instructions_from_header, instructions_to_header
from fedfleet.net.wire import TensorReceiver, WireError, chunk_messages, tensor_infos


def test_a_model_larger_than_the_message_limit_travels_in_chunks_bit_for_bit():
    limit = 4 << 20  # gRPC's default per-message limit
    vec = np.random.default_rng(0).standard_normal(3_000_000, dtype=np.float32)  # 12 MB
    vec[:3] = [np.float32(-0.0), np.float32(1e-45), np.float32(3.4e38)]
    infos = tensor_infos({"vector": vec})
    rx = TensorReceiver(infos, vec.size)
    n = 0
    for chunk in chunk_messages([vec], 1 << 20):
        msg = pb.TaskMessage(chunk=chunk).SerializeToString()
        assert len(msg) < limit
        rx.add(pb.TaskMessage.FromString(msg).chunk)
        n += 1
    assert n == 12
    out = rx.finish()["vector"]
    assert out.dtype == np.float32 and out.tobytes() == vec.tobytes()


@pytest.mark.parametrize(
    ("shape", "dtype", "match"),
    [
        ((9,), "<f4", "shape"),
        ((2**62,), "<f4", "shape"),
        ((10,), "<f8", "dtype"),
        ((), "<f4", "shape"),
    ],
)
def test_receiver_refuses_bad_headers_before_allocating(shape, dtype, match):
    with pytest.raises(WireError, match=match):
        TensorReceiver([pb.TensorInfo(name="vector", shape=list(shape), dtype=dtype)], 10)


def test_receiver_refuses_out_of_order_oversized_and_truncated_streams():
    info = [pb.TensorInfo(name="vector", shape=[4], dtype="<f4")]
    rx = TensorReceiver(info, 4)
    with pytest.raises(WireError, match="in order"):
        rx.add(pb.Chunk(tensor=0, offset=4, data=b"\0" * 4))
    with pytest.raises(WireError, match="covers bytes"):
        rx.add(pb.Chunk(tensor=0, offset=0, data=b"\0" * 20))
    with pytest.raises(WireError, match="declares 1"):
        rx.add(pb.Chunk(tensor=5, offset=0, data=b"\0"))
    rx.add(pb.Chunk(tensor=0, offset=0, data=b"\0" * 8))
    with pytest.raises(WireError, match="ended after 8 of 16"):
        rx.finish()
    with pytest.raises(WireError, match="at most"):
        TensorReceiver([pb.TensorInfo(name=f"t{i}", shape=[4], dtype="<f4") for i in range(20)], 4)


def test_instructions_round_trip_exactly():
    ins = FitInstructions(
        epochs=3, batch_size=7, lr=0.1 + 1e-17, max_steps=11,
        config={"prox_mu": 0.01, "k": 2, "name": "x", "flag": True},
    )  # fmt: skip
    h = pb.TaskHeader()
    instructions_to_header(ins, h)
    back = instructions_from_header(pb.TaskHeader.FromString(h.SerializeToString()), {})
    assert back == ins
    assert type(back.config["k"]) is int and type(back.config["flag"]) is bool
    h2 = pb.TaskHeader()
    instructions_to_header(FitInstructions(), h2)
    assert instructions_from_header(h2, {}).max_steps is None


def test_chunk_size_must_fit_the_message_limit():
    with pytest.raises(Exception, match="chunk_size"):
        ServerSettings(insecure=True, chunk_size=4 << 20, max_message_bytes=4 << 20)
