"""Where secure aggregation plugs into the plain server and client, without either importing it.

:mod:`fedfleet.net.secure` sits above :mod:`fedfleet.net.server` and :mod:`fedfleet.net.client`
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
import numpy as np

from fedfleet.strategies.base import ClientUpdate, StrategyState

__all__ = ["SecureRounds", "register", "secure_rounds_for", "secure_upload_for"]


class SecureRounds(Protocol):
    """A round runner that replaces the server's plain round (SecAgg, HE)."""

    def register(self, grpc_server: grpc.aio.Server) -> None:
        """Add its gRPC service next to ``FedFleet``."""
        ...

    def play_round(
        self, rnd: int, vector: np.ndarray, state: StrategyState
    ) -> tuple[Any, list[ClientUpdate]] | None:
        """Run round ``rnd``: ``(plan, receipts)``, or None when the server stopped."""
        ...

    def aggregate_fit(
        self, rnd: int, vector: np.ndarray, state: StrategyState, updates: list[ClientUpdate]
    ) -> tuple[np.ndarray, StrategyState, dict[str, float]]:
        """The server step on what round ``rnd`` aggregated securely."""
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
