"""The server's gRPC handlers: identity, Register, GetTask, SubmitUpdate, SubmitEvaluation.

Each is a module of its own, mixed into :class:`Servicer` here: who is calling and the refusal
log (``_identity.py``), registration and liveness (``_registration.py``), the task streams
(``_task_streams.py``), and the answers to tasks (``_uploads.py``).

This is the half of :class:`fedfleet.net.FederatedServer` that answers clients; the
round loop that opens and closes tasks is in ``_server.py``. Both share ``_cond`` (one
:class:`~fedfleet.net._loop.SharedCondition` guarding ``_clients``, ``_round``, ``_applied`` and
``_done``).

The handlers are coroutines on the server's event loop (``grpc.aio``): a waiting call holds no
thread, so how many clients can wait on the server does not depend on a thread pool. What one
authenticated client can hold is bounded per client: one ``GetTask`` call (a newer one ends the
older), one upload stream, and an upload that stops sending for ``upload_idle_timeout_s`` is cut.

An open round (``_Round``) is either a TRAIN round (selected clients download the model, train
and upload through ``SubmitUpdate``) or an EVALUATE round (connected clients with a held-out
split download the model, evaluate it and report through ``SubmitEvaluation``). Every task has
a random id, so stale or replayed answers are refused. The ``GetTask`` stream that carried a task
stays open until the client answers it or the round closes: a client that dies while training
hangs up that stream, and the round stops waiting for it at once.
"""

from __future__ import annotations

from fedfleet._proto import fedfleet_pb2_grpc as pb_grpc
from fedfleet.net._task_streams import _TaskStreams
from fedfleet.net._uploads import _Uploads

__all__ = ["Servicer"]


class Servicer(_TaskStreams, _Uploads, pb_grpc.FedFleetServicer):
    """RPC handlers over the state the round loop keeps (attributes set by the server)."""
