"""SecAgg rounds on a :class:`~fedfleet.net.FederatedServer`: the protocol's stages as gRPC
calls on the same port, driven by a round runner used in place of the plain round.

A round: ``configure_fit`` picks the cohort exactly as in simulation; each selected client gets
its TRAIN task through ``GetTask`` as usual, trains and clips, then calls ``GetSetup`` and the
stage calls (see ``secagg.proto``). The runner opens stage s, waits until every client expected
at it has answered, has hung up, or the deadline (``round_timeout_s`` per stage) passed, and hands
what arrived to :class:`~fedfleet.privacy.secagg.SecAggServer`; whoever is missing has dropped
out and the protocol recovers around them. Below the threshold the round aborts with a
:class:`~fedfleet.privacy.secagg.SecAggAborted` naming the stage and the count; the model is then
kept, as ``SecAggFedAvg`` does in simulation. The unmasked sum goes to
``SecAggFedAvg.aggregate_sum`` (central DP noise, averaging, server transform).

Every message is checked on arrival, alone: the sender is the authenticated client (the
certificate's CN under mutual TLS), it names this round's task, arrives at its stage, once, with
fields of the right sizes (see :mod:`fedfleet.privacy.secagg._server` ``check_*``). A bad message
is refused with the reason (``INVALID_ARGUMENT``/``FAILED_PRECONDITION``), logged with client and
round, recorded in ``FederatedServer.rejected``, and never reaches the state machine.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import grpc
import numpy as np

import fedfleet.net._server as net_server
import fedfleet.net.secure._rounds as _rounds
import fedfleet.net.secure._secagg_wire as wire
from fedfleet._proto import secagg_pb2 as spb
from fedfleet._proto import secagg_pb2_grpc as spb_grpc
from fedfleet.net._loop import SharedCondition
from fedfleet.net._wire import WireError
from fedfleet.privacy.secagg import (
    AdvertiseKeys,
    MaskedInput,
    SecAggAborted,
    SecAggProtocolError,
    SecAggServer,
)
from fedfleet.privacy.secagg._strategy import SecAggFedAvg
from fedfleet.rounds import Aggregate, FitJob, FitReplies
from fedfleet.strategies import ClientUpdate, StrategyState

__all__ = ["SecAggRounds"]

log = logging.getLogger("fedfleet.net.secure")

_NAMES = {1: "public keys", 2: "encrypted shares", 3: "masked input", 4: "unmask shares"}


@dataclass
class _SecureRound:
    rnd: int
    task_ids: dict[int, str]
    machine: SecAggServer | None
    stage: int = 1  # the stage whose client messages are being collected (5 = finished)
    closing: bool = False  # the stage's deadline passed and its messages are being processed
    aborted: str | None = None
    inbox: dict[int, dict[int, Any]] = field(default_factory=lambda: {s: {} for s in range(1, 5)})
    outbox: dict[int, Mapping[int, Any]] = field(default_factory=dict)
    gone: set[int] = field(default_factory=set)
    receiving: set[int] = field(default_factory=set)
    """Clients whose masked-input stream is open (one at a time each)."""
    sent_bytes: dict[int, int] = field(default_factory=dict)


class SecAggRounds(_rounds.ServerPhases, spb_grpc.SecureAggregationServicer):
    """The SecAgg service and round runner of one ``FederatedServer`` running ``SecAggFedAvg``."""

    def __init__(self, server: net_server.FederatedServer, strategy: SecAggFedAvg) -> None:
        self.fs, self.strategy = server, strategy
        self._lock = SharedCondition(server._loop)
        self._round: _SecureRound | None = None

    def register(self, grpc_server: grpc.aio.Server) -> None:
        spb_grpc.add_SecureAggregationServicer_to_server(self, grpc_server)

    # ----- the round runner (the server's main thread) ----------------------------------------

    def fit(self, job: FitJob) -> FitReplies | None:
        """Hand out the training tasks and run the protocol. The replies are receipts (no
        delta: the server never sees one) of the clients whose input is in the sum, and the
        server's step on that sum (``SecAggFedAvg.aggregate_sum``)."""
        fs, rnd = self.fs, job.round
        opened: list[_SecureRound] = []
        try:
            _rounds.open_training(
                fs, job, lambda ids: opened.append(self._open_round(rnd, job.vector, ids))
            )
            r = opened[0]
            result = self._run_stages(r)
        finally:
            _rounds.close_training(fs)
            with self._lock:
                self._round = None
                self._lock.notify_all()
        if fs._done:
            return None
        metrics = {"secagg_aborted": float(result is None)}
        if r.sent_bytes:
            metrics["secagg_bytes_per_client"] = sum(r.sent_bytes.values()) / len(r.task_ids)
        if result is None:
            return FitReplies([], aggregate=self._step(None, [], metrics))
        if result.dropped:
            log.warning(
                "round %d: clients %s dropped out of the secure sum", rnd, list(result.dropped)
            )
        log.info("round %d: unmasked the sum of clients %s", rnd, list(result.included))
        receipts = [ClientUpdate(c, np.zeros(0, np.float32), 0, 0) for c in result.included]
        return FitReplies(receipts, aggregate=self._step(result.total, receipts, metrics))

    def _step(
        self, total: np.ndarray | None, receipts: list[ClientUpdate], metrics: dict[str, float]
    ) -> Aggregate:
        def aggregate(
            rnd: int, vector: np.ndarray, state: StrategyState, updates: Sequence[ClientUpdate]
        ) -> tuple[np.ndarray, StrategyState, dict[str, float]]:
            self.fs.aggregated(rnd, updates)
            return self.strategy.aggregate_sum(rnd, vector, state, total, len(receipts), metrics)

        return aggregate

    def _open_round(self, rnd: int, vector: np.ndarray, task_ids: dict[int, str]) -> _SecureRound:
        s, ids = self.strategy, sorted(task_ids)
        machine, aborted = None, None
        if len(ids) < 2:
            aborted = f"secure aggregation needs at least 2 clients; round {rnd} selected {ids}"
        else:
            config, graph_rng = s.round_setup(rnd, vector.size)
            machine = SecAggServer(config, ids, graph_rng)
        r = _SecureRound(rnd, task_ids, machine, aborted=aborted)
        if machine is not None:
            r.outbox[0] = machine.setup()
        with self._lock:
            self._round = r
            self._lock.notify_all()
        return r

    def _run_stages(self, r: _SecureRound) -> Any:
        m = r.machine
        if m is None:
            return None
        collect: dict[int, Callable[[list[Any]], Any]] = {
            1: m.collect_keys,
            2: m.collect_shares,
            3: m.collect_masked,
            4: m.collect_unmask,
        }
        expected = set(r.task_ids)
        for stage in (1, 2, 3, 4):
            deadline = time.monotonic() + self.fs.settings.round_timeout_s
            with self._lock:
                while not expected <= set(r.inbox[stage]) | r.gone and not self.fs._done:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._lock.wait(min(left, 0.5))
                if self.fs._done:
                    r.aborted = "the server is shutting down"
                    self._lock.notify_all()
                    return None
                arrived = list(r.inbox[stage].values())
                r.closing = True  # late messages are refused while the stage is processed
            log.info("round %d: stage %d closed, %d messages", r.rnd, stage, len(arrived))
            missing = sorted(expected - {msg.client_id for msg in arrived})
            if missing:
                log.warning(
                    "round %d: no %s from clients %s (dropped out)", r.rnd, _NAMES[stage], missing
                )
            try:
                out = collect[stage](arrived)
            except (SecAggAborted, SecAggProtocolError) as err:
                log.warning("round %d: %s", r.rnd, err)
                with self._lock:
                    r.aborted = str(err)
                    self._lock.notify_all()
                return None
            with self._lock:
                if stage < 4:
                    r.outbox[stage] = out
                    expected = set(out)
                r.stage, r.closing = stage + 1, False
                self._lock.notify_all()
            if stage == 1:  # no more task hand-outs: who has not advertised keys is out
                _rounds.close_training(self.fs)
        return out

    # ----- checks shared by the RPCs -----------------------------------------------------------

    async def _reject(
        self,
        context: Any,
        cid: int,
        rnd: int,
        reason: str,
        code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT,
    ) -> NoReturn:
        await _rounds.reject(self.fs, context, cid, rnd, reason, code)

    async def _open(self, context: Any, ref: spb.RoundRef) -> tuple[int, _SecureRound]:
        """The authenticated caller and its round; refuses other rounds and stale task ids."""
        cid = await _rounds.identify(self.fs, context, ref.client_id)
        with self._lock:
            r = self._round
        if r is None or r.rnd != ref.round or cid not in r.task_ids:
            await self._reject(
                context,
                cid,
                ref.round,
                f"no secure aggregation open for client {cid} in round {ref.round}",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        if not secrets.compare_digest(r.task_ids[cid], ref.task_id):
            await self._reject(
                context,
                cid,
                ref.round,
                "task id does not match this round's task (stale or replayed)",
            )
        _rounds.taken(self.fs, r.rnd, cid)
        return cid, r

    def _admit(self, r: _SecureRound, cid: int, stage: int) -> tuple[str, grpc.StatusCode] | None:
        """Under the lock: why ``cid`` may not send this stage's message now (None: it may):
        it sent it already, the stage is not open, or ``cid`` is not part of it."""
        if cid in r.inbox[stage]:
            reason = f"client {cid} already sent its {_NAMES[stage]} (replayed)"
            return reason, grpc.StatusCode.INVALID_ARGUMENT
        if r.stage != stage or r.closing:
            state = "has not opened yet" if r.stage < stage else "is closed"
            reason = f"{_NAMES[stage]} arrived but stage {stage} {state}"
            return reason, grpc.StatusCode.FAILED_PRECONDITION
        if stage > 1 and cid not in r.outbox[stage - 1]:
            reason = f"client {cid} is not part of stage {stage} (it missed stage {stage - 1})"
            return reason, grpc.StatusCode.FAILED_PRECONDITION
        return None

    async def _accept(
        self, context: Any, r: _SecureRound, cid: int, stage: int, check: Callable[[], Any]
    ) -> None:
        """Admit ``cid`` to ``stage``, run ``check()`` (the message, or SecAggProtocolError)
        and store the message; refuses the call otherwise."""
        problem: tuple[str, grpc.StatusCode] | None
        with self._lock:
            problem = self._admit(r, cid, stage)
            if problem is None:
                try:
                    self._store(r, stage, check())
                except SecAggProtocolError as err:
                    problem = (str(err), grpc.StatusCode.INVALID_ARGUMENT)
        if problem is not None:
            await self._reject(context, cid, r.rnd, *problem)

    def _store(self, r: _SecureRound, stage: int, message: Any) -> None:
        r.inbox[stage][message.client_id] = message
        r.sent_bytes[message.client_id] = r.sent_bytes.get(message.client_id, 0) + message.nbytes()
        self._lock.notify_all()

    def _gone(self, r: _SecureRound, cid: int) -> None:
        with self._lock:
            r.gone.add(cid)
            self._lock.notify_all()

    async def _await(self, r: _SecureRound, stage: int, cid: int) -> Any:
        """Wait (holding no thread) for ``stage`` to close; the server's next message for
        ``cid`` or an abort. A client that hangs up meanwhile is not waited for again."""
        try:
            await self._lock.wait_for(
                lambda: r.stage > stage or r.aborted is not None or self._round is not r, None
            )
        except asyncio.CancelledError:
            self._gone(r, cid)
            raise
        with self._lock:
            if r.aborted is not None:
                return spb.Status(aborted=True, reason=r.aborted)
            out = r.outbox.get(stage, {}).get(cid)
        if out is None:
            return spb.Status(aborted=True, reason=f"client {cid} was left out of round {r.rnd}")
        return out

    # ----- RPCs --------------------------------------------------------------------------------

    async def GetSetup(self, request: spb.RoundRef, context: Any) -> Any:
        cid, r = await self._open(context, request)
        if r.aborted is not None or r.machine is None:
            return spb.SetupReply(status=spb.Status(aborted=True, reason=r.aborted or ""))
        return wire.setup_to_pb(r.outbox[0][cid])

    async def AdvertiseKeys(self, request: spb.AdvertiseKeysRequest, context: Any) -> Any:
        cid, r = await self._open(context, request.ref)
        msg = AdvertiseKeys(cid, bytes(request.enc_public), bytes(request.mask_public))

        def check() -> AdvertiseKeys:
            seen = {k for m in r.inbox[1].values() for k in (m.enc_public, m.mask_public)}
            assert r.machine is not None
            r.machine.check_keys(msg, seen)
            return msg

        await self._accept(context, r, cid, 1, check)
        out = await self._await(r, 1, cid)
        if isinstance(out, spb.Status):
            return spb.PublicKeysReply(status=out)
        return wire.public_keys_to_pb(out)

    async def ShareKeys(self, request: spb.ShareKeysRequest, context: Any) -> Any:
        cid, r = await self._open(context, request.ref)

        def check() -> Any:
            assert r.machine is not None
            msg = wire.share_keys_message(cid, request, len(r.machine.graph[cid]))
            r.machine.check_shares(msg)
            return msg

        await self._accept(context, r, cid, 2, check)
        out = await self._await(r, 2, cid)
        if isinstance(out, spb.Status):
            return spb.ForwardedSharesReply(status=out)
        return spb.ForwardedSharesReply(ciphertexts=wire.ciphertexts_to_pb(out.ciphertexts))

    async def SubmitMasked(self, request_iterator: Any, context: Any) -> Any:
        messages = aiter(request_iterator)
        try:
            first = await self.fs._next_message(messages, f"{self.fs.caller(context)}'s input")
        except WireError as err:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(err))
        if first is None or first.WhichOneof("body") != "header":
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, self.fs.refuse_headless(context, "SubmitMasked")
            )
        cid, r = await self._open(context, first.header.ref)
        with self._lock:
            problem = self._admit(r, cid, 3)
            if problem is None and cid in r.receiving:
                problem = (
                    f"client {cid} already has a masked-input stream open",
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                )
            if problem is None:
                r.receiving.add(cid)
        if problem is not None:
            await self._reject(context, cid, r.rnd, *problem)
        try:
            return await self._receive_masked(context, messages, first, cid, r)
        finally:
            with self._lock:
                r.receiving.discard(cid)

    async def _receive_masked(
        self, context: Any, messages: Any, first: Any, cid: int, r: _SecureRound
    ) -> Any:
        assert r.machine is not None
        try:
            receiver = wire.MaskedReceiver(cid, first.header.length, r.machine.config.vector_length)
            what = f"client {cid}'s masked input"
            while (message := await self.fs._next_message(messages, what)) is not None:
                if message.WhichOneof("body") != "chunk":
                    raise SecAggProtocolError(f"client {cid} sent a second header")
                receiver.add(message.chunk)
        except (SecAggProtocolError, WireError) as err:
            await self._reject(context, cid, r.rnd, str(err))
        except asyncio.CancelledError:
            # The call broke off mid-upload (a client killed now looks like this): stop waiting
            # for it at this stage; it may still send a whole input before the stage closes.
            log.warning("round %d: client %d's masked input broke off", r.rnd, cid)
            self._gone(r, cid)
            raise
        if not receiver.complete:
            # a killed client's stream ends here, early
            log.warning("round %d: client %d's masked input broke off (ended early)", r.rnd, cid)
            self._gone(r, cid)
        machine = r.machine
        try:  # a model-sized pass: off the event loop, and outside the round's lock
            msg = await asyncio.to_thread(
                lambda: _checked(MaskedInput(cid, receiver.finish(), machine.bits), machine)
            )
        except SecAggProtocolError as err:
            await self._reject(context, cid, r.rnd, str(err))
        await self._accept(context, r, cid, 3, lambda: msg)
        out = await self._await(r, 3, cid)
        if isinstance(out, spb.Status):
            return spb.UnmaskRequestReply(status=out)
        return spb.UnmaskRequestReply(survivors=list(out.survivors))

    async def Unmask(self, request: spb.UnmaskRequest, context: Any) -> Any:
        cid, r = await self._open(context, request.ref)

        def check() -> Any:
            assert r.machine is not None
            msg = wire.unmask_response_from_pb(cid, request, len(r.machine.graph[cid]) + 1)
            r.machine.check_unmask(msg)
            return msg

        await self._accept(context, r, cid, 4, check)
        return spb.UnmaskReply()


def _checked(msg: MaskedInput, machine: SecAggServer) -> MaskedInput:
    machine.check_masked(msg)
    return msg
