"""Asynchronous rounds over gRPC: the server as the :class:`~fedfleet.rounds.AsyncTransport` of
:class:`~fedfleet.rounds.BufferedLoop` (FedBuff), the loop simulated FedBuff runs too.

One asynchronous round stays open for the whole run. Dispatching a client adds a TRAIN task for
it, carrying the model version it starts from (its chunk messages built once per version) and
its seed ``client_seed(seed, dispatch number, client)``; the client picks it up through its
``GetTask`` poll, trains, and uploads as in a synchronous round. An upload is validated on
arrival against its own task's vector; accepted and refused answers queue up in the order they
came, and :meth:`BufferedRounds.next_arrival` hands them to the loop one at a time. A client that
hung up and did not come back within ``rejoin_grace_s``, or did not answer within
``round_timeout_s``, comes back as a drop-out (its task closed), and its slot is refilled.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence

import numpy as np

from fedfleet._proto import fedfleet_pb2 as pb
from fedfleet.errors import UpdateRejected
from fedfleet.net._publishing import _Publishing
from fedfleet.net._state import _Round, _Task
from fedfleet.rounds import Arrival, Dispatch

__all__ = ["BufferedRounds"]

log = logging.getLogger("fedfleet.net.server")


class BufferedRounds(_Publishing):
    """The asynchronous transport methods of ``FederatedServer`` (mixed into it)."""

    def _open_asynchronous(self, vector: np.ndarray) -> None:
        """Open the run's one asynchronous round."""
        self._dispatched: dict[int, Dispatch] = {}
        self.arrival_order: list[tuple[int, int]] = []
        """``(dispatch number, client id)`` of every answer and drop-out, in the order the loop
        took them (a simulation replaying it ends with the same model)."""
        self._version_messages: tuple[int, list[pb.TaskMessage]] = (-1, [])
        self._open_round(_Round(0, vector, {}, set(), asynchronous=True))

    def idle(self, busy: Sequence[int]) -> list[int] | None:
        """The connected clients not in flight, once ``min_clients`` are connected (None: the
        server stopped)."""
        clients = self._wait_for_clients(0)
        if clients is None:
            return None
        taken = set(busy)
        return [c for c in clients if c not in taken]

    def dispatch(self, jobs: Sequence[Dispatch]) -> None:
        """Hand each job's client its TRAIN task (a waiting ``GetTask`` picks it up at once)."""
        if not jobs:
            return
        now = time.monotonic()
        with self._cond:
            current = self._round
            assert current is not None and current.asynchronous
            for job in jobs:
                cid = job.client_id
                current.tasks[cid] = _Task(
                    job.round,
                    secrets.token_hex(16),
                    job.instructions,
                    job.seed,
                    vector=job.vector,
                    broadcast=self._messages_of(job.version, job.vector),
                    issued=now,
                )
                current.selected.add(cid)
                current.answered.discard(cid)
                current.uploading.discard(cid)  # its last upload (if any) was taken
                current.accepted.pop(cid, None)
                current.gone.pop(cid, None)
                self._dispatched[cid] = job
            self._cond.notify_all()
        log.info("dispatched %s", [(j.client_id, j.version) for j in jobs])
        self._wake([j.client_id for j in jobs])

    def next_arrival(self) -> Arrival | None:
        """The next answer in the order answers came; drop-outs as they are noticed."""
        grace, timeout = self.settings.rejoin_grace_s, self.settings.round_timeout_s
        with self._cond:
            current = self._round
            while not self._done and current is not None:
                if current.arrived:
                    cid = current.arrived.pop(0)
                    job = self._dispatched.pop(cid)
                    self.arrival_order.append((job.number, cid))
                    accepted = current.accepted.pop(cid, None)
                    if accepted is not None:
                        return Arrival(job, accepted[0])
                    reason = "its upload was refused (see the server's rejection log)"
                    return Arrival(job, None, UpdateRejected(cid, job.round, reason))
                now = time.monotonic()
                for cid, job in sorted(self._dispatched.items()):
                    task = current.tasks[cid]
                    hung_up = now - current.gone.get(cid, np.inf) >= grace
                    if cid not in current.answered and (hung_up or now - task.issued > timeout):
                        current.answered.add(cid)  # a late upload is refused
                        self._cond.notify_all()
                        del self._dispatched[cid]
                        self.arrival_order.append((job.number, cid))
                        log.warning(
                            "dispatch %d: client %d %s; dropped",
                            job.number,
                            cid,
                            "hung up" if hung_up else f"did not answer in {timeout:g} s",
                        )
                        return Arrival(job, None)
                self._cond.wait(0.5)
        return None

    def _messages_of(self, version: int, vector: np.ndarray) -> list[pb.TaskMessage]:
        """The chunk messages of ``version``'s vector, built once (dispatches of the same
        version share them; an older version's stay with the tasks that use them)."""
        built, messages = self._version_messages
        if built != version:
            messages = self._broadcast_messages(vector)
            self._version_messages = (version, messages)
        return messages
