"""The server as the round loop's transport: a round of tasks published, its answers collected.

:meth:`fit` publishes a round's TRAIN tasks (each with the simulation's seed,
``client_seed(seed, round, client)``), waits until every selected client answered or hung up
(and did not call back within ``rejoin_grace_s``), or ``round_timeout_s``, then closes the round
and hands the loop the accepted uploads in plan order. :meth:`evaluate` does the same with an
EVALUATE task for every connected client that holds a held-out split. The model's chunk
messages are built once per round and shared by every task stream.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

import numpy as np

from fedfleet._proto import fedfleet_pb2 as pb
from fedfleet.evaluation import ClientEvaluation
from fedfleet.net._registration import _Registration
from fedfleet.net._state import EVALUATE, _Round, _Task
from fedfleet.net._wire import chunk_messages
from fedfleet.rounds import EvaluateJob, FitJob, FitReplies, client_seed

__all__ = ["_Publishing"]

log = logging.getLogger("fedfleet.net.server")


class _Publishing(_Registration):
    """Opening and closing rounds of tasks (mixed into ``FederatedServer``)."""

    _aggregate: Any
    """The server's aggregation step for a round's accepted uploads (``_Bookkeeping``)."""

    def _wait_for_clients(self, rnd: int) -> list[int] | None:
        """The connected clients once there are ``min_clients`` (None: the server stopped)."""
        with self._cond:
            while len(self._connected()) < self.settings.min_clients:
                if self._done:
                    return None
                self._cond.wait(0.5)
            return self._connected()

    def _open_round(self, r: _Round) -> None:
        """Publish ``r``: its clients' waiting GetTask calls pick up their tasks."""
        with self._cond:
            self._round = r
            self._cond.notify_all()
        self._wake(list(r.tasks))

    def _close_round(self) -> _Round | None:
        """No more hand-outs or answers for the open round; returns it. Task streams end."""
        with self._cond:
            current, self._round = self._round, None
            self._cond.notify_all()
        if current is not None:
            self._wake(list(current.tasks))
        return current

    def _await_answers(self, r: _Round, deadline: float) -> None:
        """Wait until every selected client of ``r`` answered or hung up, or ``deadline``."""
        with self._cond:
            while not r.settled(self.settings.rejoin_grace_s) and not self._done:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.5))

    def fit(self, job: FitJob) -> FitReplies | None:
        """The round's tasks to the planned clients (each downloads the model in chunks with its
        instructions and seed), then wait until each answered or hung up, or
        ``round_timeout_s``; the accepted uploads in plan order (validated as they arrived)."""
        rnd, plan = job.round, job.plan
        tasks = {
            cid: _Task(rnd, secrets.token_hex(16), ins, client_seed(job.seed, rnd, cid))
            for cid, ins in plan
        }
        with self._cond:
            connected = len(self._connected())
        log.info("round %d: %d connected, selected %s", rnd, connected, sorted(tasks))
        current = self._publish(rnd, job.vector, tasks)
        if self._done:
            return None
        missing = sorted(current.selected - current.answered)
        if missing:
            gone = sorted(current.gone.keys() & set(missing))
            log.warning("round %d: no update from clients %s (hung up: %s)", rnd, missing, gone)
        updates = [current.accepted[cid][0] for cid, _ in plan if cid in current.accepted]
        return FitReplies(updates, aggregate=self._aggregate)

    def _publish(self, rnd: int, vector: np.ndarray, tasks: dict[int, _Task]) -> _Round:
        """Open a round of ``tasks`` (TRAIN or EVALUATE), wait for its answers, close it."""
        deadline = time.monotonic() + self.settings.round_timeout_s
        current = _Round(rnd, vector, tasks, set(tasks))
        current.broadcast = self._broadcast_messages(vector)
        self._open_round(current)
        self._await_answers(current, deadline)
        self._close_round()
        return current

    def _broadcast_messages(self, vector: np.ndarray) -> list[pb.TaskMessage]:
        return [pb.TaskMessage(chunk=c) for c in chunk_messages([vector], self.settings.chunk_size)]

    def evaluators(self, rnd: int) -> list[int]:
        """The connected clients that registered a held-out split (ascending ids): whom the
        strategy's ``configure_evaluate`` may pick."""
        with self._cond:
            return [c for c in self._connected() if self._clients[c].num_test_samples > 0]

    def evaluate(self, job: EvaluateJob) -> list[ClientEvaluation]:
        """Federated evaluation of ``job.vector``: each of ``job.clients`` evaluates it locally
        (its own model too, for FedPer/FedRep) and reports."""
        rnd, clients = job.round, job.clients
        if not clients:
            log.warning("round %d: no client to evaluate", rnd)
            return []
        tasks = {cid: _Task(rnd, secrets.token_hex(16), None, 0, EVALUATE) for cid in clients}
        current = self._publish(rnd, job.vector, tasks)
        missing = sorted(current.selected - set(current.evaluations))
        if missing:
            log.warning("round %d: no evaluation from clients %s", rnd, missing)
        reports = [
            ClientEvaluation(
                r.num_samples,
                r.loss,
                r.accuracy,
                r.global_loss if r.personalized else None,
                r.global_accuracy if r.personalized else None,
            )
            for r in (current.evaluations[c] for c in sorted(current.evaluations))
            if r.num_samples > 0
        ]
        log.info("round %d: federated evaluation on %d clients", rnd, len(reports))
        return reports
