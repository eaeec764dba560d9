"""The container every message travels in: a JSON header, then raw little-endian arrays.

A message has a ``kind``, a ``body`` (plain JSON: numbers, strings, lists, dicts) in which each
array stands as its index, and the arrays. Its header is

    {"kind": "results", "body": {...}, "arrays": [{"name": "vector", "dtype": "<f4",
                                                   "shape": [101770]}, ...]}

and it travels in one of two ways:

- **as one frame** (the process pool's pipes, Ray tasks): ``b"FFC1" | uint32 header length |
  header (UTF-8 JSON, padded with spaces) | each array's bytes, zero-padded`` (:func:`to_frame`,
  :func:`from_frame`); every array starts at a multiple of 8 bytes from the frame's start, so
  copying it out reads aligned memory (unaligned, NumPy's copy ran at a fifth of the speed);
- **as an envelope plus chunks** (gRPC): a protobuf message whose ``bytes`` field holds the
  header (:func:`encode_header`, :func:`decode_header`), then the arrays in chunks, which
  :class:`ArrayReceiver` writes straight into their arrays.

Every declared array is checked before a byte of it is read or allocated: its dtype is one of a
fixed list of numeric types (so a header can describe numbers and nothing else: no objects, no
pickle), its shape non-negative, and its size must fit in what remains of the frame, or, for
chunked arrays, be exactly the float32 vector the receiver expects. Errors name the sender
(``source``), the array and what was wrong.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedfleet.errors import FedfleetError, clip_text

__all__ = [
    "ArrayReceiver",
    "ArraySpec",
    "CodecError",
    "Header",
    "Message",
    "decode_header",
    "encode_header",
    "from_frame",
    "to_frame",
]

_MAGIC = b"FFC1"
_PREFIX = struct.Struct("<4sI")
_ALIGN = 8
_MAX_DIMS = 32
# the only dtypes a header may declare: numbers, little-endian ("|" for one-byte types)
DTYPES: dict[str, np.dtype[Any]] = {
    d.str: d
    for d in (
        np.dtype(t).newbyteorder("<")
        for t in ("?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8")
    )
}


class CodecError(FedfleetError, ValueError):
    """A message does not follow the codec's format (malformed, truncated, oversized, of the
    wrong kind, or declaring arrays the receiver does not accept)."""


@dataclass(frozen=True)
class ArraySpec:
    """What a header declares about one array; ``name`` says what it is, for messages only."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]

    @property
    def count(self) -> int:
        return math.prod(self.shape)  # Python ints: a huge declared shape cannot wrap around

    @property
    def nbytes(self) -> int:
        return self.count * self.dtype.itemsize

    def describe(self, index: int) -> str:
        return f"array {index} ({clip_text(self.name)!r}, {self.dtype.str} {self.shape})"


@dataclass(frozen=True)
class Message:
    """A message in memory: ``body`` refers to ``arrays`` by index; ``source`` names who sent
    it, for errors."""

    kind: str
    body: dict[str, Any]
    arrays: Sequence[np.ndarray] = ()
    names: Sequence[str] = ()
    """What each array is (``"vector"``, ``"client 3 payload 'grad_correction'"``): declared in
    the header, quoted in errors."""
    source: str = "message"


@dataclass(frozen=True)
class Header:
    """A decoded header: the message without its arrays, which arrive separately (chunks)."""

    kind: str
    body: dict[str, Any]
    specs: tuple[ArraySpec, ...]
    source: str

    def with_arrays(self, arrays: Sequence[np.ndarray]) -> Message:
        """The message, once its arrays arrived (as its specs declare them)."""
        if len(arrays) != len(self.specs):
            raise CodecError(
                f"{self.source}: {len(arrays)} arrays for a header that declares {len(self.specs)}"
            )
        names = [s.name for s in self.specs]
        return Message(self.kind, self.body, list(arrays), names, self.source)


def _wire_form(a: np.ndarray, name: str) -> np.ndarray:
    """``a`` as the bytes that go on the wire: C-contiguous, little-endian (no copy when it
    already is, as every float32 vector on a little-endian host)."""
    a = np.asarray(a)
    wire = a.dtype.newbyteorder("<")
    if wire.str not in DTYPES:
        raise CodecError(
            f"cannot send {name!r}, an array of dtype {a.dtype}: numbers only (bool, int and "
            "uint up to 64 bits, float16/32/64)"
        )
    return a.astype(wire, order="C", copy=False)  # ascontiguousarray would make 0-d arrays 1-d


def _header_text(kind: str, body: Mapping[str, Any], specs: list[dict[str, Any]]) -> bytes:
    try:
        text = json.dumps({"kind": kind, "body": body, "arrays": specs}, separators=(",", ":"))
    except (TypeError, ValueError) as err:
        raise CodecError(f"cannot encode a {kind!r} message: {err}") from None
    return text.encode()


def _specs(arrays: Sequence[np.ndarray], names: Sequence[str]) -> list[dict[str, Any]]:
    return [
        {"name": n, "dtype": a.dtype.str, "shape": list(a.shape)}
        for a, n in zip(arrays, names, strict=True)
    ]


def _names(message: Message) -> Sequence[str]:
    if message.names:
        return message.names
    return [f"array {i}" for i in range(len(message.arrays))]


def encode_header(message: Message) -> bytes:
    """The header of ``message`` (for an envelope; its arrays follow as chunks, each as
    ``numpy.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))``)."""
    names = _names(message)
    arrays = [_wire_form(a, n) for a, n in zip(message.arrays, names, strict=True)]
    return _header_text(message.kind, message.body, _specs(arrays, names))


def _padding(n: int) -> int:
    return -n % _ALIGN


def to_frame(message: Message) -> bytes:
    """``message`` as one frame. The arrays are copied once, into the frame itself."""
    names = _names(message)
    arrays = [_wire_form(a, n) for a, n in zip(message.arrays, names, strict=True)]
    text = _header_text(message.kind, message.body, _specs(arrays, names))
    text += b" " * _padding(_PREFIX.size + len(text))  # JSON allows trailing whitespace
    parts: list[Any] = [_PREFIX.pack(_MAGIC, len(text)), text]
    for a in arrays:
        parts.append(a.reshape(-1).view(np.uint8).data)  # a view: join copies it once
        parts.append(bytes(_padding(a.nbytes)))
    return b"".join(parts)


def _fail(source: str, problem: str) -> CodecError:
    return CodecError(f"{source}: {problem}")


def _spec(index: int, raw: Any, source: str) -> ArraySpec:
    if not isinstance(raw, dict) or set(raw) != {"name", "dtype", "shape"}:
        raise _fail(source, f"array {index}'s description must be {{name, dtype, shape}}")
    name, dtype, shape = raw["name"], raw["dtype"], raw["shape"]
    if not isinstance(name, str):
        raise _fail(source, f"array {index}'s name must be a string")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        shown = clip_text(str(dtype))
        raise _fail(
            source,
            f"array {index} ({clip_text(name)!r}) declares dtype {shown!r}; numbers only: "
            f"{', '.join(sorted(DTYPES))}",
        )
    if (
        not isinstance(shape, list)
        or len(shape) > _MAX_DIMS
        or not all(type(s) is int and s >= 0 for s in shape)
    ):
        raise _fail(
            source,
            f"array {index} ({clip_text(name)!r}) declares shape {clip_text(str(shape))}; "
            f"expected a list of at most {_MAX_DIMS} non-negative integers",
        )
    return ArraySpec(name, DTYPES[dtype], tuple(shape))


def decode_header(raw: bytes, source: str) -> Header:
    """Parse and check a header (from an envelope, or a frame's); raises :class:`CodecError`
    naming ``source`` when it is not one."""
    try:
        head = json.loads(raw)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise _fail(source, f"the header is not JSON ({clip_text(str(err), 120)})") from None
    if not isinstance(head, dict) or set(head) != {"kind", "body", "arrays"}:
        raise _fail(source, "the header must be a JSON object {kind, body, arrays}")
    kind, body, specs = head["kind"], head["body"], head["arrays"]
    if not isinstance(kind, str) or not isinstance(body, dict) or not isinstance(specs, list):
        raise _fail(source, "the header's kind must be a string, body an object, arrays a list")
    return Header(kind, body, tuple(_spec(i, s, source) for i, s in enumerate(specs)), source)


def from_frame(frame: bytes | bytearray | memoryview, source: str) -> Message:
    """The message in a frame made by :func:`to_frame`, its arrays copied out of the frame
    (writable, native byte order). Every declared size is checked against the frame's length
    before anything is read."""
    size = len(frame)
    if size < _PREFIX.size:
        raise _fail(source, f"truncated frame: {size} bytes, shorter than its 8-byte prefix")
    magic, n = _PREFIX.unpack_from(frame)
    if magic != _MAGIC:
        raise _fail(source, f"not a fedfleet frame: it starts {bytes(magic)!r}, not {_MAGIC!r}")
    offset = _PREFIX.size + n
    if offset > size:
        raise _fail(
            source,
            f"truncated frame: its header declares {n} bytes, only {size - _PREFIX.size} follow",
        )
    head = decode_header(bytes(frame[_PREFIX.size : offset]), source)
    arrays = []
    for i, spec in enumerate(head.specs):
        padded = spec.nbytes + _padding(spec.nbytes)
        if padded > size - offset:
            raise _fail(
                source,
                f"truncated frame: {spec.describe(i)} needs {padded} bytes, only "
                f"{size - offset} remain",
            )
        a = np.frombuffer(frame, dtype=spec.dtype, count=spec.count, offset=offset)
        arrays.append(a.reshape(spec.shape).astype(spec.dtype.newbyteorder("="), copy=True))
        offset += padded
    if offset != size:
        raise _fail(source, f"{size - offset} bytes past the frame's declared arrays")
    return head.with_arrays(arrays)


class ArrayReceiver:
    """Writes a header's arrays from in-order chunks; the receiver of a chunked message.

    Chunked arrays are what the network carries: each must be a float32 vector of exactly
    ``size`` elements (a layout-sized model, payload or extra), and there may be at most
    ``most``. Both are checked when the receiver is made, before any memory is allocated.
    ``out`` may give the array a chunk's bytes are written into (the server passes a row of
    its round's update matrix, so aggregation needs no copy); chunks are copied once.
    """

    def __init__(
        self,
        head: Header,
        *,
        size: int,
        most: int,
        out: Mapping[int, np.ndarray] | None = None,
    ) -> None:
        specs, source = head.specs, head.source
        if not specs:
            raise _fail(source, "the header declares no arrays")
        if len(specs) > most:
            raise _fail(source, f"the header declares {len(specs)} arrays, at most {most}")
        for i, spec in enumerate(specs):
            if spec.dtype != DTYPES["<f4"]:
                raise _fail(source, f"{spec.describe(i)}: dtype must be '<f4' (float32)")
            if spec.shape != (size,):
                raise _fail(
                    source, f"{spec.describe(i)}: expected shape ({size},) for this model layout"
                )
        self.head = head
        self._nbytes = size * 4
        out = out or {}
        self._arrays: list[np.ndarray] = []
        for i in range(len(specs)):
            self._arrays.append(out[i] if i in out else np.empty(size, np.float32))
        for i, a in enumerate(self._arrays):
            if a.shape != (size,) or a.dtype != np.float32 or not a.flags.c_contiguous:
                raise ValueError(f"destination of array {i} must be contiguous float32 ({size},)")
        self._bufs = [a.data.cast("B") for a in self._arrays]
        self._filled = [0] * len(specs)

    def add(self, index: int, offset: int, data: bytes) -> None:
        """One chunk: ``data`` for array ``index`` starting at byte ``offset``."""
        source, specs = self.head.source, self.head.specs
        if not 0 <= index < len(self._bufs):
            raise _fail(source, f"a chunk for array {index}, but the header declares {len(specs)}")
        name = specs[index].describe(index)
        if offset != self._filled[index]:
            raise _fail(
                source,
                f"a chunk of {name} at byte {offset}, expected byte {self._filled[index]} "
                "(chunks must arrive in order, without gaps or repeats)",
            )
        end = offset + len(data)
        if end > self._nbytes or not data:
            raise _fail(
                source, f"a chunk of {name} covers bytes {offset}..{end}, it has {self._nbytes}"
            )
        self._bufs[index][offset:end] = data
        self._filled[index] = end

    @property
    def complete(self) -> bool:
        """Every declared array has all its bytes."""
        return all(filled == self._nbytes for filled in self._filled)

    def finish(self) -> Message:
        """The message with its arrays (native float32); raises if any is incomplete."""
        for i, filled in enumerate(self._filled):
            if filled != self._nbytes:
                raise _fail(
                    self.head.source,
                    f"the stream ended after {filled} of {self._nbytes} bytes of "
                    f"{self.head.specs[i].describe(i)}",
                )
        arrays = self._arrays
        if sys.byteorder == "big":  # the bytes are little-endian
            arrays = [a.byteswap(inplace=True) for a in arrays]
        return self.head.with_arrays(arrays)
