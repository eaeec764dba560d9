"""Cohort jobs and their results as bytes: a JSON header plus raw little-endian arrays.

What the process and Ray executors send between processes, in place of pickle. A frame is

    b"FFJ1" | uint32 header length | header (UTF-8 JSON) | array bytes, back to back

where the header holds the message (client ids, seeds, instruction scalars, metrics, ...) with
every array replaced by its index into ``header["arrays"]`` (dtype string and shape). Only
numeric and boolean dtypes are accepted and every declared size is checked against the frame's
length before anything is read, so a frame can describe numbers and nothing else. NumPy scalars
keep their type through the round trip (``{"np": "<f4", "v": 0.5}``): a float32 loss must stay
float32 for the arithmetic downstream to match the in-process run bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from fedfleet.client.protocol import FitInstructions, FitResult
from fedfleet.data.base import ArrayDataset
from fedfleet.errors import FedfleetError
from fedfleet.sim.cohort import ClientJob
from fedfleet.strategies.base import ClientResult

__all__ = [
    "attach_data",
    "decode_jobs",
    "decode_results",
    "encode_error",
    "encode_jobs",
    "encode_results",
    "pack",
    "unpack",
]

_MAGIC = b"FFJ1"
_HEAD = struct.Struct("<4sI")
_KINDS = frozenset("biuf")  # bool, signed, unsigned, float: numbers only, never objects


def pack(header: Mapping[str, Any], arrays: Sequence[np.ndarray]) -> bytes:
    """One frame: ``header`` (JSON-able, arrays referenced by index) and the raw arrays."""
    raw = [np.ascontiguousarray(a) for a in arrays]
    for a in raw:
        if a.dtype.kind not in _KINDS:
            raise FedfleetError(f"cannot send an array of dtype {a.dtype}; numbers only")
    specs = [{"dtype": a.dtype.newbyteorder("<").str, "shape": list(a.shape)} for a in raw]
    text = json.dumps({"message": header, "arrays": specs}).encode()
    body = [a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes() for a in raw]
    return b"".join([_HEAD.pack(_MAGIC, len(text)), text, *body])


def unpack(frame: bytes) -> tuple[dict[str, Any], list[np.ndarray]]:
    """The header and the (writable, copied) arrays of a frame made by :func:`pack`."""
    if len(frame) < _HEAD.size:
        raise FedfleetError(f"truncated frame: {len(frame)} bytes")
    magic, n = _HEAD.unpack_from(frame)
    if magic != _MAGIC or _HEAD.size + n > len(frame):
        raise FedfleetError("not a fedfleet job frame (bad magic or header length)")
    head = json.loads(frame[_HEAD.size : _HEAD.size + n])
    offset = _HEAD.size + n
    arrays = []
    for spec in head["arrays"]:
        dtype = np.dtype(spec["dtype"])
        shape = tuple(int(s) for s in spec["shape"])
        if dtype.kind not in _KINDS or any(s < 0 for s in shape):
            raise FedfleetError(f"frame declares an array of dtype {dtype}, shape {shape}")
        count = int(np.prod(shape, dtype=np.int64))
        if offset + count * dtype.itemsize > len(frame):
            raise FedfleetError(
                f"frame declares an array of {count} x {dtype} but only "
                f"{len(frame) - offset} bytes remain"
            )
        a = np.frombuffer(frame, dtype=dtype, count=count, offset=offset).reshape(shape)
        arrays.append(a.astype(dtype.newbyteorder("="), copy=True))
        offset += count * dtype.itemsize
    if offset != len(frame):
        raise FedfleetError(f"frame has {len(frame) - offset} bytes past its declared arrays")
    return head["message"], arrays


def _scalar(v: Any) -> Any:
    if isinstance(v, np.generic):
        return {"np": v.dtype.str, "v": v.item()}
    if isinstance(v, bool | int | float | str) or v is None:
        return v
    raise FedfleetError(f"cannot send {type(v).__name__} {v!r}; plain numbers and strings only")


def _unscalar(v: Any) -> Any:
    if isinstance(v, dict):
        dtype = np.dtype(v["np"])
        if dtype.kind not in _KINDS:
            raise FedfleetError(f"frame declares a scalar of dtype {dtype}")
        return dtype.type(v["v"])
    return v


class _Arrays:
    """Collects arrays while a header is built, replacing each by its index."""

    def __init__(self) -> None:
        self.items: list[np.ndarray] = []

    def ref(self, a: np.ndarray) -> int:
        self.items.append(np.asarray(a))
        return len(self.items) - 1

    def refs(self, named: Mapping[str, np.ndarray] | None) -> dict[str, int] | None:
        return None if named is None else {k: self.ref(v) for k, v in named.items()}


def _named(
    refs: Mapping[str, int] | None, arrays: list[np.ndarray]
) -> dict[str, np.ndarray] | None:
    return None if refs is None else {k: arrays[i] for k, i in refs.items()}


def encode_jobs(vector: np.ndarray | None, jobs: Sequence[ClientJob], with_data: bool) -> bytes:
    """The global vector (None: sent separately) and a chunk of jobs; each job's data goes
    along when ``with_data`` (the receiver rebuilds it from the client id otherwise)."""
    arrays = _Arrays()
    out = []
    for job in jobs:
        ins = job.instructions
        out.append(
            {
                "client_id": int(job.client_id),
                "seed": int(job.seed),
                "num_samples": len(job.data),
                "instructions": {
                    "epochs": _scalar(ins.epochs),
                    "batch_size": _scalar(ins.batch_size),
                    "lr": _scalar(ins.lr),
                    "max_steps": _scalar(ins.max_steps),
                    "config": {k: _scalar(v) for k, v in ins.config.items()},
                    "payload": arrays.refs(ins.payload),
                },
                "state": arrays.refs(job.state),
                "data": [arrays.ref(job.data.x), arrays.ref(job.data.y)] if with_data else None,
            }
        )
    head = {"vector": None if vector is None else arrays.ref(vector), "jobs": out}
    return pack(head, arrays.items)


def decode_jobs(
    frame: bytes,
) -> tuple[np.ndarray | None, list[dict[str, Any]], list[ClientJob]]:
    """The vector (if sent), the raw job headers, and the jobs; a job sent without data gets
    an empty dataset, for the receiver to replace with the client's own data."""
    head, arrays = unpack(frame)
    vector = None if head["vector"] is None else arrays[head["vector"]]
    jobs = []
    for j in head["jobs"]:
        i = j["instructions"]
        instructions = FitInstructions(
            epochs=_unscalar(i["epochs"]),
            batch_size=_unscalar(i["batch_size"]),
            lr=_unscalar(i["lr"]),
            max_steps=_unscalar(i["max_steps"]),
            config={k: _unscalar(v) for k, v in i["config"].items()},
            payload=_named(i["payload"], arrays) or {},
        )
        data = (
            ArrayDataset(arrays[j["data"][0]], arrays[j["data"][1]])
            if j["data"] is not None
            else ArrayDataset(np.zeros((0,), np.float32), np.zeros(0, np.int64))
        )
        jobs.append(
            ClientJob(
                int(j["client_id"]), data, instructions, int(j["seed"]), _named(j["state"], arrays)
            )
        )
    return vector, head["jobs"], jobs


class _HasData(Protocol):
    def train_data(self, cid: int) -> ArrayDataset: ...


def attach_data(
    heads: Sequence[Mapping[str, Any]], jobs: Sequence[ClientJob], population: _HasData
) -> list[ClientJob]:
    """Jobs sent without data, given each client's data from the receiver's own copy of the
    population; a client whose size differs from the sender's is refused by name."""
    out = []
    for head, job in zip(heads, jobs, strict=True):
        data = population.train_data(job.client_id)
        if len(data) != head["num_samples"]:
            raise FedfleetError(
                f"client {job.client_id} has {len(data)} samples here but {head['num_samples']} "
                "where the round was planned; both sides must hold the same dataset"
            )
        out.append(dataclasses.replace(job, data=data))
    return out


def encode_results(results: Sequence[ClientResult]) -> bytes:
    """Trained vectors, counts, metrics, extra uploads and new client states, in job order."""
    arrays = _Arrays()
    out = []
    for r in results:
        fit = r.fit
        out.append(
            {
                "vector": arrays.ref(fit.vector),
                "num_samples": _scalar(fit.num_samples),
                "num_steps": _scalar(fit.num_steps),
                "metrics": {k: _scalar(v) for k, v in fit.metrics.items()},
                "extras": arrays.refs(r.extras),
                "state": arrays.refs(r.state),
            }
        )
    return pack({"results": out}, arrays.items)


def encode_error(message: str) -> bytes:
    """A frame that makes :func:`decode_results` raise ``message``."""
    return pack({"error": message}, [])


def decode_results(frame: bytes) -> list[ClientResult]:
    """The results of a frame from :func:`encode_results`; an error frame raises its text."""
    head, arrays = unpack(frame)
    if "error" in head:
        raise FedfleetError(str(head["error"]))
    results = []
    for r in head["results"]:
        fit = FitResult(
            arrays[r["vector"]],
            _unscalar(r["num_samples"]),
            _unscalar(r["num_steps"]),
            {k: _unscalar(v) for k, v in r["metrics"].items()},
        )
        results.append(
            ClientResult(fit, _named(r["extras"], arrays) or {}, _named(r["state"], arrays))
        )
    return results
