"""Where secure aggregation plugs into the plain server and client, without either importing it.

:mod:`fedfleet.net.secure` sits above :mod:`fedfleet.net._server` and :mod:`fedfleet.net._client`
(its round runners drive a ``FederatedServer``), so those two cannot import it. Instead it
registers its factories here when it is imported, and ``fedfleet.net``'s ``__init__`` imports it,
so the registry is full whenever any part of ``fedfleet.net`` is. The server asks
:func:`secure_rounds_for` once, at construction; the client asks :func:`secure_upload_for`
after each local training. A factory answers None for a strategy it does not handle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import grpc

from fedfleet.rounds import Transport

__all__ = ["SecureRounds", "register", "secure_rounds_for", "secure_upload_for"]


class SecureRounds(Transport, Protocol):
    """A round runner that is the server's transport in place of its plain round (SecAgg, HE):
    its ``fit`` hands out the tasks, runs the upload protocol and replies with receipts and the
    server's step on what the protocol summed."""

    def register(self, grpc_server: grpc.aio.Server) -> None:
        """Add its gRPC service next to ``FedFleet``."""
        ...


RoundsFactory = Callable[[Any], SecureRounds | None]
"""``(server) -> runner``: the round runner for a ``FederatedServer``, or None (plain rounds)."""
SecureUpload = Callable[..., bool]
"""``(client, task_header, vector, client_result) -> in the aggregate?``"""
UploadFactory = Callable[[Any], SecureUpload | None]
"""``(strategy) -> upload``: the client's upload for ``strategy``, or None (plain upload)."""

_ROUNDS: list[RoundsFactory] = []
_UPLOADS: list[UploadFactory] = []


def register(*, rounds: RoundsFactory, upload: UploadFactory) -> None:
    """Add a secure-aggregation transport (idempotent: a factory registers once)."""
    if rounds not in _ROUNDS:
        _ROUNDS.append(rounds)
    if upload not in _UPLOADS:
        _UPLOADS.append(upload)


def secure_rounds_for(server: Any) -> SecureRounds | None:
    """The first registered round runner for ``server``, or None for plain rounds."""
    for factory in _ROUNDS:
        runner = factory(server)
        if runner is not None:
            return runner
    return None


def secure_upload_for(strategy: Any) -> SecureUpload | None:
    """The first registered upload for ``strategy``, or None for a plain upload."""
    for factory in _UPLOADS:
        upload = factory(strategy)
        if upload is not None:
            return upload
    return None
