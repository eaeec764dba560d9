"""The codec's messages in protobuf envelopes: a header message, then the arrays in chunks.

What a task, an upload or an evaluation report holds is the codec's business
(:mod:`fedfleet._codec`, shared with the process pool and Ray): the envelope's ``bytes`` field
(``TaskHeader.job``, ``UpdateHeader.reply``, ``EvaluationResult.report``) carries the codec's
header, and the arrays it declares follow as :class:`Chunk` messages of at most ``chunk_size``
bytes each, so a model of any size passes gRPC's per-message limit. The envelope itself keeps
only what routes a message: kind, round, task id, layout fingerprint, applied round.

No pickle and no arbitrary deserialisation: a receiver checks every declared array (float32, the
layout's size, at most ``1 + MAX_EXTRAS``) *before* allocating, accepts chunks only in order and
within the declared size, and refuses a stream that ends early (:class:`ArrayReceiver`).

The Python modules ``fedfleet._proto.fedfleet_pb2`` and ``fedfleet_pb2_grpc`` are generated
from ``src/fedfleet/_proto/fedfleet.proto`` (all generated code lives in ``fedfleet/_proto``, a
package that imports nothing else); regenerate them from the repository root with::

    .venv/bin/python -m grpc_tools.protoc -I src --python_out=src --pyi_out=src \
        --grpc_python_out=src src/fedfleet/_proto/fedfleet.proto

(run from the repository root, the generated modules import each other as
``fedfleet._proto.*``). The proto ``package`` stays ``fedfleet.net``, so the gRPC method paths
(``/fedfleet.net.FedFleet/SubmitUpdate``) do not depend on where the files live.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from fedfleet._codec import (
    ArrayReceiver,
    CodecError,
    Header,
    Job,
    decode_header,
    decode_jobs,
    encode_evaluation,
    encode_header,
    encode_jobs,
    encode_results,
)
from fedfleet._proto import fedfleet_pb2 as pb
from fedfleet.client import FitInstructions
from fedfleet.errors import clip_text
from fedfleet.evaluation import ClientEvaluation
from fedfleet.net._protocol import PROTOCOL_VERSION
from fedfleet.strategies import ClientResult

__all__ = [
    "DTYPE",
    "MAX_EXTRAS",
    "PROTOCOL_VERSION",
    "WireError",
    "chunk_messages",
    "evaluation_to_pb",
    "instructions_from_header",
    "instructions_to_header",
    "receiver",
    "reply_to_header",
]

DTYPE = "<f4"
"""The only array dtype on the wire: little-endian float32."""

MAX_EXTRAS = 8
"""Most strategy-specific vectors one message may carry besides the model."""

WireError = CodecError
"""A message does not follow the wire format (the codec's error, under the name the network
code and ``net/secure`` raise and catch)."""


def _float32(named: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every vector as float32, the wire's only dtype (no copy when it already is)."""
    return {k: np.asarray(v, dtype=np.float32) for k, v in named.items()}


def chunk_messages(
    arrays: Sequence[np.ndarray], chunk_size: int, start: int = 0
) -> Iterator[pb.Chunk]:
    """Each array's little-endian float32 bytes as chunks of at most ``chunk_size`` bytes;
    the first array is array ``start`` of its message."""
    for i, arr in enumerate(arrays, start=start):
        data = np.ascontiguousarray(arr, dtype=DTYPE).data.cast("B")
        for off in range(0, len(data), chunk_size):
            yield pb.Chunk(tensor=i, offset=off, data=bytes(data[off : off + chunk_size]))


def receiver(
    raw: bytes,
    source: str,
    *,
    kind: str,
    size: int,
    out: Mapping[int, np.ndarray] | None = None,
) -> ArrayReceiver:
    """The receiver of the arrays that an envelope's codec header ``raw`` declares, refused
    before anything is allocated unless it is a ``kind`` message whose arrays are float32
    vectors of ``size`` (the layout's), at most ``1 + MAX_EXTRAS``. Feed it
    ``add(chunk.tensor, chunk.offset, chunk.data)``; ``out`` as for :class:`ArrayReceiver`."""
    head = decode_header(raw, source)
    if head.kind != kind:
        raise WireError(f"{source}: expected a {kind!r} message, got {clip_text(head.kind)!r}")
    return ArrayReceiver(head, size=size, most=1 + MAX_EXTRAS, out=out)


def instructions_to_header(
    ins: FitInstructions | None,
    header: pb.TaskHeader,
    vector: np.ndarray,
    *,
    seed: int = 0,
    client_id: int = 0,
) -> list[np.ndarray]:
    """Write a task's job into ``header.job``: the codec's jobs message with ``vector`` as
    array 0 and one job (``ins`` with its payload, ``seed``), none for an EVALUATE task
    (``ins`` None). Returns the arrays after the vector (the payload), which the task's chunks
    carry from index 1; the vector's chunks are the round's, built once."""
    jobs = []
    if ins is not None:
        jobs.append(Job(client_id, seed, dataclasses.replace(ins, payload=_float32(ins.payload))))
    message = encode_jobs(np.asarray(vector, dtype=np.float32), jobs)
    header.job = encode_header(message)
    return list(message.arrays[1:])


def instructions_from_header(
    head: Header, arrays: Sequence[np.ndarray]
) -> tuple[np.ndarray, Job | None]:
    """The global vector and the job (None in an EVALUATE task) of a task whose header
    decoded to ``head`` and whose chunks brought ``arrays``."""
    vector, jobs = decode_jobs(head.with_arrays(arrays))
    if vector is None or len(jobs) > 1:
        raise WireError(f"{head.source}: a task holds the global vector and at most one job")
    return vector, (jobs[0] if jobs else None)


def reply_to_header(result: ClientResult, header: pb.UpdateHeader) -> list[np.ndarray]:
    """Write a deployed client's reply into ``header.reply`` (never its private state); returns
    the arrays its chunks carry: the trained vector (array 0), then the extras, as float32."""
    fit = dataclasses.replace(result.fit, vector=np.asarray(result.fit.vector, np.float32))
    message = encode_results([ClientResult(fit, _float32(result.extras))], with_state=False)
    header.reply = encode_header(message)
    return list(message.arrays)


def evaluation_to_pb(report: ClientEvaluation, request: pb.EvaluationResult) -> None:
    """Write ``report`` into ``request.report`` (the codec's evaluation message)."""
    request.report = encode_header(encode_evaluation(report))
