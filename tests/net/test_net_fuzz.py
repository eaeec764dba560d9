"""Fuzz a live server with >= 10,000 malformed or hostile messages over a real socket.

The server (in this process, so its aggregation inputs can be inspected) keeps running rounds
while the fuzzer, posing as the registered clients 0-2, sends random bytes to every method,
hostile headers (wrong shapes, dtypes, fingerprints, huge declared sizes, too many arrays,
codec headers that are not JSON, of another kind, with unknown fields, aliased or swapped
arrays, client state), out-of-order, oversized and truncated chunk streams, NaN/Inf vectors and
metrics, inflated sample and step counts, stale task ids and replays of accepted uploads. Now
and then it sends a valid update. Asserts: the server never crashes or hangs, and every update
that reached ``aggregate_fit`` is one of the valid ones, bit for bit.
"""

from __future__ import annotations

import json
import threading
import time

import grpc
import numpy as np

from conftest import read_task, write_config
from fedfleet._proto import fedfleet_pb2 as pb
from fedfleet._proto import fedfleet_pb2_grpc as pb_grpc
from fedfleet.client import FitResult
from fedfleet.net import FederatedServer, ServerSettings
from fedfleet.net._cli import read_config
from fedfleet.net._wire import PROTOCOL_VERSION, chunk_messages, reply_to_header
from fedfleet.strategies import ClientResult
from fedfleet.validation import validate_update

METHODS = ("Register", "GetTask", "SubmitUpdate", "SubmitEvaluation")
SAMPLES = 100


def test_fuzzed_server_never_crashes_and_aggregates_only_valid_updates(tmp_path):
    cfg, _ = read_config(write_config(tmp_path / "run.toml", rounds=1))
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"every": 0})})
    settings = ServerSettings(
        insecure=True, min_clients=1, min_accept=1, round_timeout_s=2.0, poll_wait_s=0.05,
        chunk_size=4096, max_message_bytes=1 << 16,
    )  # fmt: skip
    server = FederatedServer.from_config(cfg, settings)
    layout, fp = server.layout, server.fingerprint
    valid_sent: dict[tuple[int, int], np.ndarray] = {}
    aggregated: list[tuple[int, int]] = []
    problems: list[str] = []

    def check(rnd, updates):
        for u in updates:
            aggregated.append((rnd, u.client_id))
            try:
                validate_update(u, layout, rnd, {0, 1, 2}, max_samples=SAMPLES)
                want = valid_sent.get((rnd, u.client_id))
                assert want is not None, f"round {rnd} client {u.client_id}: never sent valid"
                assert np.array_equal(u.delta, want), "aggregated delta differs from the valid one"
            except Exception as e:
                problems.append(repr(e))

    server.on_aggregate = check
    port = server.start()
    died: list[BaseException] = []

    def serve() -> None:
        try:
            server.run(rounds=10**6)
        except BaseException as e:
            died.append(e)
            raise

    runner = threading.Thread(target=serve, daemon=True)
    runner.start()
    rng = np.random.default_rng(0)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.FedFleetStub(channel)
    raw = {
        "Register": channel.unary_unary("/fedfleet.net.FedFleet/Register"),
        "GetTask": channel.unary_stream("/fedfleet.net.FedFleet/GetTask"),
        "SubmitUpdate": channel.stream_unary("/fedfleet.net.FedFleet/SubmitUpdate"),
        "SubmitEvaluation": channel.unary_unary("/fedfleet.net.FedFleet/SubmitEvaluation"),
    }
    sent = 0
    outcomes: dict[str, int] = {}

    def note(kind: str) -> None:
        outcomes[kind] = outcomes.get(kind, 0) + 1

    def call(fn, *args):
        try:
            return fn(*args, timeout=5)
        except grpc.RpcError as e:
            assert e.code() != grpc.StatusCode.DEADLINE_EXCEEDED, "the server hung"
            return None

    def random_bytes() -> None:
        nonlocal sent
        method = METHODS[rng.integers(len(METHODS))]
        blobs = [rng.bytes(int(rng.integers(0, 300))) for _ in range(int(rng.integers(1, 120)))]
        if method == "SubmitUpdate":
            call(raw[method], iter(blobs))
            sent += len(blobs)
        elif method == "GetTask":
            try:
                list(raw[method](blobs[0], timeout=5))
            except grpc.RpcError as e:
                assert e.code() != grpc.StatusCode.DEADLINE_EXCEEDED
            sent += 1
        else:
            call(raw[method], blobs[0])
            sent += 1

    def hostile_upload(cid: int, h: pb.TaskHeader, vector: np.ndarray) -> None:
        """One upload for a real task, valid or broken in one random way."""
        nonlocal sent
        trained = vector + np.float32(0.001) * rng.standard_normal(layout.size, dtype=np.float32)
        extras = {}
        kind = ["valid", "nan", "inf", "shape", "dtype", "huge", "extras", "order", "truncate",
                "overflow", "samples", "steps", "metric", "fingerprint", "taskid", "header2",
                "badextra", "json", "kind", "unknown", "alias", "swap", "state"
                ][int(rng.integers(23)) if rng.random() < 0.7 else 0]  # fmt: skip
        if kind == "nan":
            trained[rng.integers(layout.size)] = np.nan
        elif kind == "inf":
            trained[rng.integers(layout.size)] = -np.inf
        elif kind in ("badextra", "swap", "state"):
            extras["c"] = np.full(layout.size, np.nan if kind == "badextra" else 0, np.float32)
        header = pb.UpdateHeader(client_id=cid, round=h.round, task_id=h.task_id,
                                 layout_fingerprint=fp)  # fmt: skip
        fit = FitResult(trained, SAMPLES, 1, {"train_loss": 0.5})
        arrays = reply_to_header(ClientResult(fit, extras), header)
        head = json.loads(header.reply)  # the codec's header, edited as a hostile client would
        spec, body = head["arrays"][0], head["body"]["results"][0]
        if kind == "shape":
            spec["shape"] = [layout.size - 1]
        elif kind == "dtype":
            spec["dtype"] = "<f8"
        elif kind == "huge":
            spec["shape"] = [2**62]
        elif kind == "extras":
            for i in range(12):
                head["arrays"].append({"name": f"x{i}", "shape": [layout.size], "dtype": "<f4"})
                body["extras"][f"x{i}"] = i + 1
        elif kind == "samples":
            body["num_samples"] = SAMPLES + int(rng.integers(1, 10**9))
        elif kind == "steps":
            body["num_steps"] = 10**6 if rng.random() < 0.5 else -1
        elif kind == "metric":
            body["metrics"]["train_loss"] = float("nan")
        elif kind == "fingerprint":
            header.layout_fingerprint = "0" * 16
        elif kind == "taskid":
            header.task_id = rng.bytes(16).hex()
        elif kind == "kind":
            head["kind"] = "error"
        elif kind == "unknown":
            body["delta"] = 0
        elif kind == "alias":  # an extra that is the vector's own array (the server's row)
            body["extras"]["c"] = 0
        elif kind == "swap":  # the vector as array 1: array 0 is written into the row
            body["vector"], body["extras"]["c"] = 1, 0
        elif kind == "state":  # a client's private state never leaves it
            body["state"], body["extras"] = {"c_i": 1}, {}
        header.reply = json.dumps(head).encode()
        if kind == "json":
            header.reply = header.reply[: int(rng.integers(0, len(header.reply)))] + b"\xff{"
        chunks = [pb.UpdateMessage(chunk=c) for c in chunk_messages(arrays, 4096)]
        if kind == "order":
            chunks = chunks[::-1]
        elif kind == "truncate":
            chunks = chunks[: int(rng.integers(0, len(chunks)))]
        elif kind == "overflow":
            chunks.append(pb.UpdateMessage(chunk=pb.Chunk(tensor=0, offset=layout.size * 4,
                                                          data=b"\0" * 8)))  # fmt: skip
        elif kind == "header2":
            chunks.insert(1, pb.UpdateMessage(header=header))
        msgs = [pb.UpdateMessage(header=header), *chunks]
        if kind == "valid":
            valid_sent[(int(h.round), cid)] = trained - vector
        reply = call(stub.SubmitUpdate, iter(msgs))
        sent += len(msgs)
        if reply is not None:
            assert reply.accepted == (kind == "valid"), (kind, reply.reason)
            note(f"{kind}:{'accepted' if reply.accepted else 'rejected'}")
            if reply.accepted:  # replay it: must be refused
                again = call(stub.SubmitUpdate, iter(msgs))
                sent += len(msgs)
                assert again is not None and not again.accepted
                note("replay:rejected")

    try:
        for cid in range(3):
            stub.Register(
                pb.RegisterRequest(
                    client_id=cid,
                    layout_fingerprint=fp,
                    num_samples=SAMPLES,
                    protocol_version=PROTOCOL_VERSION,
                ),
                timeout=5,
            )
        reply = stub.Register(
            pb.RegisterRequest(
                client_id=9,
                layout_fingerprint="bad",
                num_samples=SAMPLES,
                protocol_version=PROTOCOL_VERSION,
            ),
            timeout=5,
        )
        assert not reply.ok and "layout" in reply.message
        start = time.monotonic()
        while (sent < 10_000 or len(aggregated) < 5) and time.monotonic() - start < 50:
            if rng.random() < 0.5:
                random_bytes()
                continue
            cid = int(rng.integers(3))
            h, arrays, stream = read_task(stub, cid, layout.size, timeout=30)
            sent += 1
            if h.kind != pb.TaskHeader.TRAIN:
                continue
            hostile_upload(cid, h, arrays["vector"])
            stream.cancel()
        assert runner.is_alive(), f"the server's round loop died: {died!r}"
        assert sent >= 10_000, f"only {sent} messages in the time budget"
        # still serving after the barrage
        ok = stub.Register(
            pb.RegisterRequest(
                client_id=0,
                layout_fingerprint=fp,
                num_samples=SAMPLES,
                protocol_version=PROTOCOL_VERSION,
            ),
            timeout=5,
        )
        assert ok.ok
    finally:
        channel.close()
        server.stop(grace=0.5, linger_s=0)
        runner.join(10)
    assert not problems, problems[:5]
    assert len(aggregated) >= 5, f"too few rounds aggregated ({len(aggregated)}): {outcomes}"
    assert server.aggregated_updates == len(aggregated)
    assert len(server.rejected) > 100
    print(f"{sent} messages, {len(aggregated)} aggregated, outcomes {sorted(outcomes.items())}")
