"""What the secure round runners share with ``FederatedServer``'s own round: handing out the
training tasks through ``GetTask``, client identity, liveness, refusing a message, and the
phases that are the server's own (federated evaluation, commit: :class:`ServerPhases`).

These reach into the server's round state (``_cond``, ``_round``, ``_clients``) on purpose: a
secure round is the server's round with another upload path, so it hands out tasks exactly as
the plain round does and the clients' ``GetTask`` loop needs no change. The RPC helpers are
coroutines, as every handler on the server's event loop is.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import grpc

import fedfleet.net._server as net_server
from fedfleet.errors import UpdateRejected
from fedfleet.evaluation import ClientEvaluation
from fedfleet.net._state import _Round, _Task
from fedfleet.rounds import EvaluateJob, FitJob, client_seed

log = logging.getLogger("fedfleet.net.secure")


class ServerPhases:
    """A secure round runner's federated evaluation and commit: the server's own (only the
    training round's upload differs), so SecAgg and HE runners inherit them from here."""

    fs: net_server.FederatedServer

    def evaluate(self, job: EvaluateJob) -> list[ClientEvaluation]:
        """Federated evaluation as the plain server runs it (evaluation reports are not
        secret-shared or encrypted)."""
        return self.fs.evaluate(job)

    def commit(self, rnd: int, accepted: Sequence[int]) -> None:
        """Round ``rnd``'s checkpoint is written: the server commits its clients' state."""
        self.fs.commit(rnd, accepted)


def open_training(
    fs: net_server.FederatedServer, job: FitJob, prepare: Callable[[dict[int, str]], None]
) -> None:
    """Call ``prepare`` with each planned client's task id (so the secure round exists before
    any client can reach it), then publish the TRAIN tasks (each with the simulation's seed,
    ``client_seed(seed, round, client)``)."""
    rnd = job.round
    tasks = {
        cid: _Task(rnd, secrets.token_hex(16), ins, client_seed(job.seed, rnd, cid))
        for cid, ins in job.plan
    }
    prepare({cid: t.task_id for cid, t in tasks.items()})
    r = _Round(rnd, job.vector, tasks, set(tasks))
    r.broadcast = fs._broadcast_messages(job.vector)
    fs._open_round(r)
    log.info("round %d: secure round over %s", rnd, sorted(tasks))


def close_training(fs: net_server.FederatedServer) -> None:
    """No more task hand-outs for this round."""
    fs._close_round()


def taken(fs: net_server.FederatedServer, rnd: int, cid: int) -> None:
    """``cid`` started its upload: ``GetTask`` must not hand it the task again (its task
    stream ends); it is alive."""
    with fs._cond:
        current = fs._round
        if current is not None and current.rnd == rnd:
            current.answered.add(cid)
        info = fs._clients.get(cid)
        if info is not None:  # a client busy with the protocol is alive, though it does not poll
            info.last_seen = time.monotonic()
        fs._cond.notify_all()
    fs._wake([cid])


async def identify(fs: net_server.FederatedServer, context: Any, claimed: int) -> int:
    """The caller's client id (its certificate's under mutual TLS); aborts the call if refused."""
    return await fs._identify_or_abort(context, claimed)


async def reject(
    fs: net_server.FederatedServer,
    context: Any,
    cid: int,
    rnd: int,
    reason: str,
    code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT,
) -> NoReturn:
    """Refuse the call with ``reason``: logged with client and round, kept in ``fs.rejected``."""
    rej = UpdateRejected(cid, rnd, reason)
    with fs._cond:
        fs.record_rejection(rej, f"secure aggregation, {context.peer()}")
    await context.abort(code, str(rej))
    raise AssertionError("unreachable")  # context.abort raises
