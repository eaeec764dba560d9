"""HE rounds on a :class:`~fedfleet.net.FederatedServer` whose strategy is
:class:`~fedfleet.strategies.HEFedAvg`: the server sums ciphertexts it cannot read.

A round: the cohort is sampled and trains as usual (``GetTask``); each client uploads
``n_k * delta_k`` encrypted under the federation's public key (``SubmitEncrypted``; the bytes of
an :class:`~fedfleet.privacy.EncryptedVector`, checked for scheme, key and length on arrival)
and waits in ``AwaitAggregate``. When every selected client uploaded, hung up, or
``round_timeout_s`` passed, the server multiplies/adds the ciphertexts
(``HEFedAvg.aggregate_encrypted``) and streams the encrypted sum to one waiting client, the
round's key holder (the lowest id), which decrypts the aggregate only and returns the mean delta
(``SubmitMean``, float64). ``HEFedAvg.apply`` then takes the server optimizer's step. If no
upload is usable or the key holder does not answer in time the model is kept
(``he_aborted = 1``). The server's ``HEFedAvg`` holds the public key only; one with a secret key
is refused.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

import fedfleet.net._server as net_server
import fedfleet.net.secure._rounds as _rounds
from fedfleet._proto import he_pb2 as hpb
from fedfleet._proto import he_pb2_grpc as hpb_grpc
from fedfleet.errors import FedfleetError
from fedfleet.net._loop import SharedCondition
from fedfleet.net._wire import WireError
from fedfleet.privacy import EncryptedVector, HEError
from fedfleet.rounds import Aggregate, FitJob, FitReplies
from fedfleet.strategies import ClientUpdate, HEFedAvg, StrategyState

__all__ = ["HERounds", "blob_messages"]

log = logging.getLogger("fedfleet.net.secure")


def blob_messages(ref: hpb.HERef, data: bytes, chunk_size: int) -> Iterator[hpb.BlobMessage]:
    """A header declaring ``len(data)``, then the bytes in chunks."""
    yield hpb.BlobMessage(header=hpb.BlobHeader(ref=ref, size=len(data)))
    for off in range(0, len(data), chunk_size):
        yield hpb.BlobMessage(chunk=hpb.BlobChunk(offset=off, data=data[off : off + chunk_size]))


async def _read_blob(
    fs: net_server.FederatedServer, first: hpb.BlobHeader, rest: Any, limit: int, what: str
) -> bytes:
    if first.size > limit:
        raise HEError(f"{what} declares {first.size} bytes, at most {limit} expected")
    buf = bytearray()
    while True:
        try:
            message = await fs._next_message(rest, what)
        except WireError as err:
            raise HEError(str(err)) from None
        if message is None:
            break
        chunk = message.chunk
        if message.WhichOneof("body") != "chunk" or chunk.offset != len(buf):
            raise HEError(f"{what}: chunk out of order at byte {chunk.offset}")
        if len(buf) + len(chunk.data) > first.size:
            raise HEError(f"{what} runs past its declared {first.size} bytes")
        buf += chunk.data
    if len(buf) != first.size:
        raise HEError(f"{what} ended after {len(buf)} of {first.size} bytes")
    return bytes(buf)


@dataclass
class _HERound:
    rnd: int
    task_ids: dict[int, str]
    uploads: dict[int, bytes] = field(default_factory=dict)
    weights: dict[int, int] = field(default_factory=dict)
    closed: bool = False
    gone: set[int] = field(default_factory=set)
    waiting: set[int] = field(default_factory=set)
    holder: int | None = None
    aggregate: bytes | None = None
    ended: str | None = None  # why no client will get the aggregate (set once a holder is out)
    mean: np.ndarray | None = None


class HERounds(_rounds.ServerPhases, hpb_grpc.HEAggregationServicer):
    """The HE service and round runner of one ``FederatedServer`` running ``HEFedAvg``."""

    def __init__(self, server: net_server.FederatedServer, strategy: HEFedAvg) -> None:
        if strategy.key_holder is not None:
            raise FedfleetError(
                "the server's HEFedAvg holds a secret key; give the server only the public key "
                "(HEFedAvg(public=load_public(...))), the key holders are clients"
            )
        self.fs, self.strategy = server, strategy
        self._lock = SharedCondition(server._loop)
        self._round: _HERound | None = None
        self._limit = 0
        self._length = 0

    def register(self, grpc_server: grpc.aio.Server) -> None:
        hpb_grpc.add_HEAggregationServicer_to_server(self, grpc_server)

    # ----- the round runner ------------------------------------------------------------------

    def _wait(self, until: Any, deadline: float) -> None:
        with self._lock:
            while not until() and not self.fs._done:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._lock.wait(min(left, 0.5))

    def fit(self, job: FitJob) -> FitReplies | None:
        """Hand out the tasks, sum the encrypted uploads, have a key holder decrypt the sum;
        the replies are receipts (no deltas: the server never sees one) and the server's step
        on the decrypted mean (``HEFedAvg.apply``)."""
        fs, rnd, vector = self.fs, job.round, job.vector
        if self._length != vector.size:  # the largest upload a client may declare
            zero = self.strategy.public.encrypt(np.zeros(vector.size), 1).to_bytes()
            self._length, self._limit = vector.size, 2 * len(zero) + (1 << 16)
        opened: list[_HERound] = []

        def prepare(task_ids: dict[int, str]) -> None:
            with self._lock:
                self._round = _HERound(rnd, task_ids)
                opened.append(self._round)

        timeout = fs.settings.round_timeout_s
        try:
            _rounds.open_training(fs, job, prepare)
            r = opened[0]
            expected = set(r.task_ids)
            self._wait(lambda: expected <= set(r.uploads) | r.gone, time.monotonic() + timeout)
            _rounds.close_training(fs)
            with self._lock:
                r.closed = True
                uploads = dict(r.uploads)
            aggregate, bad = self.strategy.aggregate_encrypted(rnd, vector.size, uploads)
            with fs._cond:
                fs.rejected.extend(bad)
            if aggregate is not None:
                # every uploader calls AwaitAggregate right away: wait for all of them, so the
                # key holder is the lowest id that uploaded (the same client run after run)
                waiting = set(uploads)
                self._wait(lambda: waiting <= r.waiting | r.gone, time.monotonic() + timeout)
                with self._lock:
                    candidates = sorted(r.waiting - r.gone)
                    if candidates:
                        r.holder, r.aggregate = candidates[0], aggregate
                    self._lock.notify_all()
                if r.holder is not None:
                    log.info("round %d: client %d decrypts the sum", rnd, r.holder)
                    holder = r.holder
                    self._wait(
                        lambda: r.mean is not None or holder in r.gone,
                        time.monotonic() + timeout,
                    )
        finally:
            _rounds.close_training(fs)
            with self._lock:
                for each in opened:
                    each.ended = each.ended or "the round is over"
                self._round = None
                self._lock.notify_all()
        if fs._done:
            return None
        included = sorted(set(uploads) - {u.client_id for u in bad})
        metrics = {
            "he_aborted": float(r.mean is None),
            "he_bytes_per_client": float(np.mean([len(b) for b in uploads.values()] or [0])),
        }
        if r.mean is None:
            log.warning("round %d: no decrypted sum (uploads from %s); model kept", rnd, included)
        receipts = [ClientUpdate(c, np.zeros(0, np.float32), r.weights[c], 0) for c in included]
        return FitReplies(receipts, aggregate=self._step(r.mean, metrics))

    def _step(self, mean: np.ndarray | None, metrics: dict[str, float]) -> Aggregate:
        def aggregate(
            rnd: int, vector: np.ndarray, state: StrategyState, updates: Sequence[ClientUpdate]
        ) -> tuple[np.ndarray, StrategyState, dict[str, float]]:
            """``HEFedAvg.apply`` on the mean the key holder decrypted (None: keep the model)."""
            self.fs.aggregated(rnd, updates)
            new, new_state = self.strategy.apply(vector, state, mean)
            return new, new_state, metrics

        return aggregate

    # ----- RPCs ------------------------------------------------------------------------------

    async def _open(self, context: Any, ref: hpb.HERef) -> tuple[int, _HERound]:
        cid = await _rounds.identify(self.fs, context, ref.client_id)
        with self._lock:
            r = self._round
        if r is None or r.rnd != ref.round or cid not in r.task_ids:
            await _rounds.reject(
                self.fs,
                context,
                cid,
                ref.round,
                f"no HE aggregation open for client {cid} in round {ref.round}",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        if not secrets.compare_digest(r.task_ids[cid], ref.task_id):
            await _rounds.reject(
                self.fs, context, cid, r.rnd, "task id does not match this round's task (stale)"
            )
        _rounds.taken(self.fs, r.rnd, cid)
        return cid, r

    async def _first(self, request_iterator: Any, context: Any, rpc: str) -> tuple[Any, Any]:
        """The stream's messages and its header; refuses a stream that does not start with
        one (or stays silent for ``upload_idle_timeout_s``)."""
        messages = aiter(request_iterator)
        try:
            first = await self.fs._next_message(messages, f"{self.fs.caller(context)}'s {rpc}")
        except WireError as err:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(err))
        if first is None or first.WhichOneof("body") != "header":
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, self.fs.refuse_headless(context, rpc)
            )
        return messages, first

    def _gone(self, r: _HERound, cid: int) -> None:
        with self._lock:
            r.gone.add(cid)
            self._lock.notify_all()

    async def SubmitEncrypted(self, request_iterator: Any, context: Any) -> Any:
        messages, first = await self._first(request_iterator, context, "SubmitEncrypted")
        cid, r = await self._open(context, first.header.ref)
        try:
            data = await _read_blob(
                self.fs, first.header, messages, self._limit, "encrypted update"
            )
            vec = await asyncio.to_thread(EncryptedVector.from_bytes, data)
            await asyncio.to_thread(self.strategy.public.validate, vec, self._length)
            with self.fs._cond:
                info = self.fs._clients.get(cid)
                registered = 0 if info is None else info.num_samples
            if not 0 < vec.weight <= registered:
                raise HEError(
                    f"its weight {vec.weight} is not a sample count in 1..{registered}, the "
                    "samples this client registered"
                )
        except HEError as err:
            await _rounds.reject(self.fs, context, cid, r.rnd, f"encrypted update unusable: {err}")
        except asyncio.CancelledError:
            self._gone(r, cid)
            raise
        problem = None
        with self._lock:
            if cid in r.uploads:
                problem = "already uploaded (replayed)"
            elif r.closed:
                return hpb.HEReply(accepted=False, reason="the upload deadline passed")
            else:
                r.uploads[cid], r.weights[cid] = data, vec.weight
                self._lock.notify_all()
        if problem is not None:
            await _rounds.reject(self.fs, context, cid, r.rnd, problem)
        return hpb.HEReply(accepted=True)

    async def AwaitAggregate(self, request: hpb.HERef, context: Any) -> AsyncIterator[Any]:
        cid, r = await self._open(context, request)
        with self._lock:
            uploaded = cid in r.uploads
            if uploaded:
                r.waiting.add(cid)
                self._lock.notify_all()
        if not uploaded:
            await _rounds.reject(
                self.fs, context, cid, r.rnd, "no accepted upload from this client"
            )
        try:
            await self._lock.wait_for(lambda: r.holder is not None or r.ended is not None, None)
        except asyncio.CancelledError:
            self._gone(r, cid)
            raise
        with self._lock:
            aggregate = r.aggregate if r.holder == cid else None
        if aggregate is None:
            reason = r.ended or f"client {r.holder} decrypts this round"
            yield hpb.AggregateMessage(header=hpb.AggregateHeader(decrypt=False, reason=reason))
            return
        yield hpb.AggregateMessage(header=hpb.AggregateHeader(decrypt=True, size=len(aggregate)))
        chunk = self.fs.settings.chunk_size
        for off in range(0, len(aggregate), chunk):
            data = aggregate[off : off + chunk]
            yield hpb.AggregateMessage(chunk=hpb.BlobChunk(offset=off, data=data))

    async def SubmitMean(self, request_iterator: Any, context: Any) -> Any:
        messages, first = await self._first(request_iterator, context, "SubmitMean")
        cid, r = await self._open(context, first.header.ref)
        if r.holder != cid or r.mean is not None:
            await _rounds.reject(
                self.fs, context, cid, r.rnd, f"client {cid} is not this round's key holder"
            )
        size = 8 * self._length
        try:
            data = await _read_blob(self.fs, first.header, messages, size, "decrypted mean")
            if len(data) != size:
                raise HEError(f"decrypted mean is {len(data)} bytes, expected {size}")
            mean = np.frombuffer(data, dtype="<f8").astype(np.float64)
            if not np.isfinite(mean).all():
                raise HEError("decrypted mean has non-finite values")
        except HEError as err:
            await _rounds.reject(self.fs, context, cid, r.rnd, str(err))
        with self._lock:
            r.mean = mean
            self._lock.notify_all()
        return hpb.HEReply(accepted=True)
