"""What the secure round runners share with ``FederatedServer``'s own round: handing out the
training tasks through ``GetTask``, client identity, liveness, and refusing a message.

These reach into the server's round state (``_cond``, ``_round``, ``_clients``) on purpose: a
secure round is the server's round with another upload path, so it hands out tasks exactly as
the plain round does and the clients' ``GetTask`` loop needs no change. The RPC helpers are
coroutines, as every handler on the server's event loop is.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, NoReturn

import grpc
import numpy as np

import fedfleet.net.server as net_server
from fedfleet.errors import UpdateRejected
from fedfleet.rounds import client_seed
from fedfleet.rounds import sampling_rng as _sampling_rng
from fedfleet.strategies.base import StrategyState

log = logging.getLogger("fedfleet.net.secure")


def open_training(
    fs: net_server.FederatedServer,
    rnd: int,
    vector: np.ndarray,
    state: StrategyState,
    prepare: Callable[[dict[int, str]], None],
) -> Any:
    """Wait for ``min_clients``, sample the cohort with ``configure_fit`` (the simulation's
    sampling RNG), call ``prepare`` with each selected client's task id (so the secure round
    exists before any client can reach it), then publish the TRAIN tasks; returns the plan, or
    None if the server is stopping."""
    with fs._cond:
        while len(fs._connected()) < fs.settings.min_clients:
            if fs._done:
                return None
            fs._cond.wait(0.5)
        clients = fs._connected()
    seed = fs.config.seed
    plan = fs.strategy.configure_fit(rnd, vector, state, clients, _sampling_rng(seed, rnd))
    tasks = {
        cid: net_server._Task(rnd, secrets.token_hex(16), ins, client_seed(seed, rnd, cid))
        for cid, ins in plan
    }
    prepare({cid: t.task_id for cid, t in tasks.items()})
    r = net_server._Round(rnd, vector, tasks, set(tasks))
    r.broadcast = fs._broadcast_messages(vector)
    fs._open_round(r)
    log.info("round %d: %d connected, secure round over %s", rnd, len(clients), sorted(tasks))
    return plan


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
