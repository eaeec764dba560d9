"""Jobs, replies and evaluation reports as codec messages: one encoder and one decoder each,
whatever carries them (the process pool, Ray, gRPC).

Message kinds and their bodies (an array stands as its index into the message's arrays):

- ``"jobs"``: ``{vector, jobs}``: the global vector (array 0; null when it travels apart, as
  Ray's ``ray.put``) and a list of jobs ``{client_id, seed, num_samples, instructions: {epochs,
  batch_size, lr, max_steps, config, payload}, state, data}``; ``state`` (a simulated client's
  private state) and ``data`` (``[x, y]``) are null where they do not travel;
- ``"results"``: ``{results}``, each what ``Strategy.client_fit`` returned: ``{vector,
  num_samples, num_steps, metrics, extras, state}`` (the trained vector: the receiver forms the
  delta where it needs it, in place; a deployed client never sends its ``state``);
- ``"error"``: ``{error}``, a worker's exception text, raised again by :func:`decode_results`;
- ``"evaluation"``: a client's federated-evaluation report, checked on arrival.

Scalars keep their NumPy type (``{"np": "<f4", "v": 0.5}``): a float32 loss must stay float32
for the arithmetic downstream to match the in-process run bit for bit. Decoding checks each
field's type and refuses missing and unknown fields by name; every array must be referred to
exactly once (an upload cannot alias its vector as an extra). Checks of meaning (finite
vectors, sample counts against the registered ones) stay with ``validate_update``, which every
transport runs; evaluation reports have no other check, so theirs are here.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fedfleet._codec._frame import DTYPES, CodecError, Message
from fedfleet.client import FitInstructions, FitResult
from fedfleet.data import ArrayDataset
from fedfleet.errors import FedfleetError, clip_text
from fedfleet.evaluation import ClientEvaluation
from fedfleet.strategies._base import ClientResult

__all__ = [
    "Job",
    "decode_evaluation",
    "decode_jobs",
    "decode_results",
    "encode_error",
    "encode_evaluation",
    "encode_jobs",
    "encode_results",
]

_INT_MIN, _INT_END = -(2**63), 2**64  # int64 and uint64 (seeds)
_JOB = ("client_id", "seed", "num_samples", "instructions", "state", "data")
_INSTRUCTIONS = ("epochs", "batch_size", "lr", "max_steps", "config", "payload")
_RESULT = ("vector", "num_samples", "num_steps", "metrics", "extras", "state")
_EVALUATION = ("num_samples", "loss", "accuracy", "global_loss", "global_accuracy")


@dataclass(frozen=True)
class Job:
    """One client's work as decoded: who, the seed its training derives from, the
    instructions (payload included), its private state where that travels (simulation), its
    data when sent along, else ``num_samples``, the sender's count, for the receiver to check
    its own copy against (None: not sent)."""

    client_id: int
    seed: int
    instructions: FitInstructions
    state: Mapping[str, np.ndarray] | None = None
    data: ArrayDataset | None = None
    num_samples: int | None = None


class _JobLike(Protocol):
    """What :func:`encode_jobs` reads from a job (``sim.cohort.ClientJob`` or :class:`Job`)."""

    @property
    def client_id(self) -> int: ...
    @property
    def seed(self) -> int: ...
    @property
    def instructions(self) -> FitInstructions: ...
    @property
    def state(self) -> Mapping[str, np.ndarray] | None: ...
    @property
    def data(self) -> ArrayDataset | None: ...


# ----- encoding ------------------------------------------------------------------------------


def _key(k: Any, what: str) -> str:
    if not isinstance(k, str):
        raise CodecError(f"cannot send {what} named {k!r}: names must be strings")
    return k


def _scalar(v: Any, what: str) -> Any:
    if isinstance(v, np.generic):
        dtype = v.dtype.newbyteorder("<").str
        if dtype not in DTYPES:
            raise CodecError(f"cannot send {what} = {v!r} of dtype {v.dtype}: numbers only")
        return {"np": dtype, "v": v.item()}
    if isinstance(v, bool | int | float | str) or v is None:
        return v
    raise CodecError(
        f"cannot send {what} = {type(v).__name__} {clip_text(repr(v))}: plain numbers, "
        "strings and bools only"
    )


class _Table:
    """The arrays of a message being built; each field refers to its array by index."""

    def __init__(self) -> None:
        self.arrays: list[np.ndarray] = []
        self.names: list[str] = []

    def ref(self, a: np.ndarray, name: str) -> int:
        self.arrays.append(a)
        self.names.append(name)
        return len(self.arrays) - 1

    def refs(self, named: Mapping[str, np.ndarray] | None, what: str) -> dict[str, int] | None:
        if named is None:
            return None
        return {_key(k, what): self.ref(v, f"{what} {k!r}") for k, v in named.items()}

    def message(self, kind: str, body: dict[str, Any]) -> Message:
        return Message(kind, body, self.arrays, self.names)


def encode_jobs(
    vector: np.ndarray | None, jobs: Sequence[_JobLike], *, with_data: bool = False
) -> Message:
    """The global vector (array 0; None: it travels apart) and ``jobs``; each job's data goes
    along when ``with_data``, else only its sample count (the receiver has its own copy)."""
    table = _Table()
    body = {
        "vector": None if vector is None else table.ref(vector, "vector"),
        "jobs": [_job(table, job, with_data) for job in jobs],
    }
    return table.message("jobs", body)


def _job(table: _Table, job: _JobLike, with_data: bool) -> dict[str, Any]:
    cid, ins, data = int(job.client_id), job.instructions, job.data
    return {
        "client_id": cid,
        "seed": int(job.seed),
        "num_samples": None if data is None else len(data),
        "instructions": {
            "epochs": _scalar(ins.epochs, "epochs"),
            "batch_size": _scalar(ins.batch_size, "batch_size"),
            "lr": _scalar(ins.lr, "lr"),
            "max_steps": _scalar(ins.max_steps, "max_steps"),
            "config": {
                _key(k, "config"): _scalar(v, f"config[{k!r}]") for k, v in ins.config.items()
            },
            "payload": table.refs(ins.payload, f"client {cid} payload"),
        },
        "state": table.refs(job.state, f"client {cid} state"),
        "data": (
            [table.ref(data.x, f"client {cid} x"), table.ref(data.y, f"client {cid} y")]
            if with_data and data is not None
            else None
        ),
    }


def encode_results(results: Sequence[ClientResult], *, with_state: bool = True) -> Message:
    """Clients' replies in order: trained vector, counts, metrics, extra uploads and (unless
    ``with_state`` is False, as for a deployed client, whose state never leaves it) the new
    client state. A single reply's vector is array 0."""
    table = _Table()
    out = []
    for i, r in enumerate(results):
        fit = r.fit
        out.append(
            {
                "vector": table.ref(fit.vector, f"reply {i} vector"),
                "num_samples": _scalar(fit.num_samples, "num_samples"),
                "num_steps": _scalar(fit.num_steps, "num_steps"),
                "metrics": {
                    _key(k, "metric"): _scalar(v, f"metric {k!r}") for k, v in fit.metrics.items()
                },
                "extras": table.refs(r.extras, f"reply {i} extra"),
                "state": table.refs(r.state, f"reply {i} state") if with_state else None,
            }
        )
    return table.message("results", {"results": out})


def encode_error(text: str) -> Message:
    """A message that makes :func:`decode_results` raise ``text`` (a worker's failure)."""
    return Message("error", {"error": str(text)})


def encode_evaluation(report: ClientEvaluation) -> Message:
    """A client's evaluation report (``global_*`` set for a personalised model)."""
    return Message(
        "evaluation",
        {
            "num_samples": int(report.num_samples),
            "loss": float(report.loss),
            "accuracy": float(report.accuracy),
            "global_loss": None if report.global_loss is None else float(report.global_loss),
            "global_accuracy": (
                None if report.global_accuracy is None else float(report.global_accuracy)
            ),
        },
    )


# ----- decoding ------------------------------------------------------------------------------


def _shown(v: Any) -> str:
    return clip_text(repr(v))


class _Reader:
    """Typed access to a decoded body: each failure names the sender and the field's path;
    tracks which arrays were referred to."""

    def __init__(self, message: Message, kind: str) -> None:
        self.source = message.source
        if message.kind != kind:
            raise self.error("", f"expected a {kind!r} message, got {clip_text(message.kind)!r}")
        self.arrays = message.arrays
        self.used = [False] * len(message.arrays)

    def error(self, path: str, problem: str) -> CodecError:
        return CodecError(f"{self.source}{': ' + path if path else ''}: {problem}")

    def fields(self, obj: Any, path: str, keys: Collection[str]) -> dict[str, Any]:
        if not isinstance(obj, dict):
            raise self.error(path, f"must be an object, got {type(obj).__name__}")
        if set(obj) != set(keys):
            got = sorted(clip_text(k) for k in obj)[:20]
            raise self.error(path, f"has fields {got}; expected exactly {sorted(keys)}")
        return obj

    def mapping(self, obj: Any, path: str) -> dict[str, Any]:
        if not isinstance(obj, dict):
            raise self.error(path, f"must be an object, got {type(obj).__name__}")
        return obj

    def scalar(self, v: Any, path: str) -> Any:
        """A bool, int, float, string, or a NumPy scalar sent as ``{"np": dtype, "v": value}``."""
        if isinstance(v, dict):
            return self._numpy_scalar(v, path)
        if isinstance(v, bool | float | str):
            return v
        if isinstance(v, int):
            if not _INT_MIN <= v < _INT_END:
                raise self.error(path, f"integer {clip_text(str(v))} is outside int64/uint64")
            return v
        raise self.error(path, f"must be a number, string or bool, got {_shown(v)}")

    def _numpy_scalar(self, v: dict[str, Any], path: str) -> np.generic:
        dtype = DTYPES.get(v["np"]) if set(v) == {"np", "v"} and isinstance(v["np"], str) else None
        if dtype is None:
            raise self.error(path, f"{_shown(v)} is not a NumPy scalar {{np: dtype, v: value}}")
        value = v["v"]
        fits = {
            "b": isinstance(value, bool),
            "i": type(value) is int,
            "u": type(value) is int,
            "f": isinstance(value, int | float) and not isinstance(value, bool),
        }[dtype.kind]
        try:
            with np.errstate(over="ignore"):
                out = dtype.type(value) if fits else None
        except OverflowError:
            out = None
        if out is None or (dtype.kind == "f" and float(out) != value and value == value):
            raise self.error(path, f"{_shown(value)} is not a {dtype.str} value")
        return out

    def integer(self, v: Any, path: str) -> Any:
        out = self.scalar(v, path)
        if isinstance(out, bool | np.bool_) or not isinstance(out, int | np.integer):
            raise self.error(path, f"must be an integer, got {_shown(out)}")
        return out

    def number(self, v: Any, path: str) -> Any:
        out = self.scalar(v, path)
        if isinstance(out, bool | np.bool_ | str):
            raise self.error(path, f"must be a number, got {_shown(out)}")
        return out

    def optional(self, v: Any, path: str, read: Any) -> Any:
        return None if v is None else read(v, path)

    def array(self, v: Any, path: str) -> np.ndarray:
        if type(v) is not int or not 0 <= v < len(self.arrays):
            raise self.error(
                path, f"must be the index of one of the message's {len(self.arrays)} arrays"
            )
        if self.used[v]:
            raise self.error(path, f"refers to array {v}, which another field refers to")
        self.used[v] = True
        return self.arrays[v]

    def named_arrays(self, v: Any, path: str) -> dict[str, np.ndarray] | None:
        if v is None:
            return None
        named = self.mapping(v, path)
        return {k: self.array(i, f"{path}[{clip_text(k)!r}]") for k, i in named.items()}

    def list(self, v: Any, path: str) -> list[Any]:
        if not isinstance(v, list):
            raise self.error(path, f"must be a list, got {type(v).__name__}")
        return v

    def done(self) -> None:
        unused = [i for i, used in enumerate(self.used) if not used]
        if unused:
            raise self.error("", f"arrays {unused[:10]} are declared but nothing refers to them")


def decode_jobs(message: Message) -> tuple[np.ndarray | None, list[Job]]:
    """The vector (None when it travelled apart) and the jobs of a ``"jobs"`` message."""
    r = _Reader(message, "jobs")
    body = r.fields(message.body, "body", ("vector", "jobs"))
    vector = None if body["vector"] is None else r.array(body["vector"], "vector")
    jobs = [_read_job(r, j, f"jobs[{i}]") for i, j in enumerate(r.list(body["jobs"], "jobs"))]
    r.done()
    return vector, jobs


def _read_job(r: _Reader, raw: Any, path: str) -> Job:
    j = r.fields(raw, path, _JOB)
    ip = f"{path}.instructions"
    i = r.fields(j["instructions"], ip, _INSTRUCTIONS)
    instructions = FitInstructions(
        epochs=r.integer(i["epochs"], f"{ip}.epochs"),
        batch_size=r.integer(i["batch_size"], f"{ip}.batch_size"),
        lr=r.number(i["lr"], f"{ip}.lr"),
        max_steps=r.optional(i["max_steps"], f"{ip}.max_steps", r.integer),
        config={
            k: r.scalar(v, f"{ip}.config[{clip_text(k)!r}]")
            for k, v in r.mapping(i["config"], f"{ip}.config").items()
        },
        payload=r.named_arrays(i["payload"], f"{ip}.payload") or {},
    )
    data = None
    if j["data"] is not None:
        pair = r.list(j["data"], f"{path}.data")
        if len(pair) != 2:
            raise r.error(f"{path}.data", "must be [x, y]")
        x, y = r.array(pair[0], f"{path}.data[0]"), r.array(pair[1], f"{path}.data[1]")
        try:
            data = ArrayDataset(x, y)
        except ValueError as err:
            raise r.error(f"{path}.data", str(err)) from None
    num_samples = r.optional(j["num_samples"], f"{path}.num_samples", r.integer)
    return Job(
        int(r.integer(j["client_id"], f"{path}.client_id")),
        int(r.integer(j["seed"], f"{path}.seed")),
        instructions,
        r.named_arrays(j["state"], f"{path}.state"),
        data,
        None if num_samples is None else int(num_samples),
    )


def decode_results(message: Message) -> list[ClientResult]:
    """The replies of a ``"results"`` message, in order; an ``"error"`` message raises its
    text as a :class:`FedfleetError`."""
    if message.kind == "error":
        text = message.body.get("error")
        raise FedfleetError(str(text) if isinstance(text, str) else _shown(text))
    r = _Reader(message, "results")
    body = r.fields(message.body, "body", ("results",))
    out = []
    for i, raw in enumerate(r.list(body["results"], "results")):
        p = f"results[{i}]"
        f = r.fields(raw, p, _RESULT)
        fit = FitResult(
            r.array(f["vector"], f"{p}.vector"),
            r.integer(f["num_samples"], f"{p}.num_samples"),
            r.integer(f["num_steps"], f"{p}.num_steps"),
            {
                k: r.number(v, f"{p}.metrics[{clip_text(k)!r}]")
                for k, v in r.mapping(f["metrics"], f"{p}.metrics").items()
            },
        )
        extras = r.named_arrays(f["extras"], f"{p}.extras") or {}
        out.append(ClientResult(fit, extras, r.named_arrays(f["state"], f"{p}.state")))
    r.done()
    return out


def decode_evaluation(message: Message, *, registered: int) -> ClientEvaluation:
    """The report of an ``"evaluation"`` message, checked: finite, accuracies in [0, 1],
    losses >= 0, at most ``registered`` samples (the held-out split the client registered)."""
    r = _Reader(message, "evaluation")
    b = r.fields(message.body, "body", _EVALUATION)
    r.done()
    num_samples = int(r.integer(b["num_samples"], "num_samples"))
    loss, accuracy = _checked_pair(r, b, "loss", "accuracy")
    own: tuple[float | None, float | None] = (None, None)
    if b["global_loss"] is not None or b["global_accuracy"] is not None:
        own = _checked_pair(r, b, "global_loss", "global_accuracy")
    if not 0 <= num_samples <= registered:
        raise r.error(
            "",
            f"num_samples {num_samples} outside 0..{registered}, the held-out samples the "
            "client registered with",
        )
    return ClientEvaluation(num_samples, loss, accuracy, *own)


def _checked_pair(r: _Reader, b: dict[str, Any], lname: str, aname: str) -> tuple[float, float]:
    loss, acc = float(r.number(b[lname], lname)), float(r.number(b[aname], aname))
    if not (math.isfinite(loss) and math.isfinite(acc)):
        raise r.error("", f"{lname} {loss} / {aname} {acc} must be finite")
    if not 0.0 <= acc <= 1.0:
        raise r.error("", f"{aname} {acc} outside [0, 1]")
    if loss < 0:
        raise r.error("", f"{lname} {loss} is negative")
    return loss, acc
