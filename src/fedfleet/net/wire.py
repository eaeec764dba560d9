"""Arrays on the wire: a header naming each tensor, then raw little-endian float32 chunks.

No pickle and no arbitrary deserialisation: a receiver checks every declared shape and dtype
against what it expects *before* allocating, accepts chunks only in order and within the declared
size, and refuses a stream that ends early. The Python modules ``fedfleet._proto.fedfleet_pb2``
and ``fedfleet_pb2_grpc`` are generated from ``src/fedfleet/_proto/fedfleet.proto`` (all
generated code lives in ``fedfleet/_proto``, a package that imports nothing else); regenerate
them from the repository root with::

    .venv/bin/python -m grpc_tools.protoc -I src --python_out=src --pyi_out=src \
        --grpc_python_out=src src/fedfleet/_proto/fedfleet.proto

(run from the repository root, the generated modules import each other as
``fedfleet._proto.*``). The proto ``package`` stays ``fedfleet.net``, so the gRPC method paths
(``/fedfleet.net.FedFleet/SubmitUpdate``) do not depend on where the files live.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from fedfleet._proto import fedfleet_pb2 as pb
from fedfleet.errors import FedfleetError

__all__ = [
    "DTYPE",
    "MAX_EXTRAS",
    "TensorReceiver",
    "WireError",
    "chunk_messages",
    "scalar_from_pb",
    "scalar_to_pb",
    "tensor_infos",
]

DTYPE = "<f4"
"""The only array dtype on the wire: little-endian float32."""

MAX_EXTRAS = 8
"""Most strategy-specific vectors one message may carry besides the model."""


class WireError(FedfleetError, ValueError):
    """A message does not follow the wire format (wrong size, dtype, order, truncated)."""


def tensor_infos(arrays: Mapping[str, np.ndarray]) -> list[pb.TensorInfo]:
    return [pb.TensorInfo(name=k, shape=list(v.shape), dtype=DTYPE) for k, v in arrays.items()]


def chunk_messages(
    arrays: Sequence[np.ndarray], chunk_size: int, start: int = 0
) -> Iterator[pb.Chunk]:
    """Each array's little-endian float32 bytes as chunks of at most ``chunk_size`` bytes;
    the first array is tensor ``start``."""
    for i, arr in enumerate(arrays, start=start):
        data = np.ascontiguousarray(arr, dtype=DTYPE).data.cast("B")
        for off in range(0, len(data), chunk_size):
            yield pb.Chunk(tensor=i, offset=off, data=bytes(data[off : off + chunk_size]))


class TensorReceiver:
    """Reassembles the tensors a header declares from in-order chunks.

    ``expected_size`` is the only length a tensor may have (the layout's size): a header that
    declares another shape, another dtype or more than ``1 + MAX_EXTRAS`` tensors is refused
    before any memory is allocated. ``out`` may give the float32 array a tensor is written into
    (the server passes a row of its round's update matrix, so aggregation needs no copy).
    """

    def __init__(
        self,
        infos: Sequence[Any],
        expected_size: int,
        out: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        if not infos:
            raise WireError("the header declares no tensors")
        if len(infos) > 1 + MAX_EXTRAS:
            raise WireError(f"the header declares {len(infos)} tensors, at most {1 + MAX_EXTRAS}")
        names = [i.name for i in infos]
        if len(set(names)) != len(names):
            raise WireError(f"duplicate tensor names {names}")
        for info in infos:
            if info.dtype != DTYPE:
                raise WireError(
                    f"tensor {info.name!r} has dtype {info.dtype!r}, expected {DTYPE!r}"
                )
            if tuple(info.shape) != (expected_size,):
                raise WireError(
                    f"tensor {info.name!r} declares shape {tuple(info.shape)}, expected "
                    f"({expected_size},) for this model layout"
                )
        self.names = names
        self._nbytes = expected_size * 4
        # chunks are copied once, straight into the arrays finish() returns
        out = out or {}
        self._arrays = [
            out[n] if n in out else np.empty(expected_size, dtype=np.float32) for n in names
        ]
        for n, a in zip(names, self._arrays, strict=True):
            if a.shape != (expected_size,) or a.dtype != np.float32 or not a.flags.c_contiguous:
                raise ValueError(
                    f"destination of {n!r} must be contiguous float32 ({expected_size},)"
                )
        self._bufs = [a.data.cast("B") for a in self._arrays]
        self._filled = [0] * len(infos)

    def add(self, chunk: Any) -> None:
        i = chunk.tensor
        if i >= len(self._bufs):
            raise WireError(f"chunk for tensor {i}, but the header declares {len(self._bufs)}")
        if chunk.offset != self._filled[i]:
            raise WireError(
                f"chunk of tensor {self.names[i]!r} at byte {chunk.offset}, expected byte "
                f"{self._filled[i]} (chunks must arrive in order, without gaps or repeats)"
            )
        end = chunk.offset + len(chunk.data)
        if end > self._nbytes or not chunk.data:
            raise WireError(
                f"chunk of tensor {self.names[i]!r} covers bytes {chunk.offset}..{end}, "
                f"the tensor has {self._nbytes}"
            )
        self._bufs[i][chunk.offset : end] = chunk.data
        self._filled[i] = end

    @property
    def complete(self) -> bool:
        """Every declared tensor has all its bytes."""
        return all(filled == self._nbytes for filled in self._filled)

    def finish(self) -> dict[str, np.ndarray]:
        """The tensors as native float32 arrays; raises if any is incomplete."""
        for name, filled in zip(self.names, self._filled, strict=True):
            if filled != self._nbytes:
                raise WireError(
                    f"stream ended after {filled} of {self._nbytes} bytes of tensor {name!r}"
                )
        if np.dtype(DTYPE) != np.dtype(np.float32):  # a big-endian host
            self._arrays = [a.view(DTYPE).astype(np.float32) for a in self._arrays]
        return dict(zip(self.names, self._arrays, strict=True))


def scalar_to_pb(value: float | int | str | bool) -> pb.Scalar:
    if isinstance(value, bool):
        return pb.Scalar(b=value)
    if isinstance(value, int | np.integer):
        return pb.Scalar(i=int(value))
    if isinstance(value, float | np.floating):
        return pb.Scalar(f=float(value))
    if isinstance(value, str):
        return pb.Scalar(s=value)
    raise WireError(f"instruction config value {value!r} is not a number, string or bool")


def scalar_from_pb(msg: pb.Scalar) -> float | int | str | bool:
    kind = msg.WhichOneof("value")
    if kind is None:
        raise WireError("empty scalar")
    return getattr(msg, kind)
