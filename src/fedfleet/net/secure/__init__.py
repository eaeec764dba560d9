"""Secure aggregation over the network transport.

- :mod:`fedfleet.net.secure._secagg_server`: :class:`SecAggRounds`, the SecAgg/SecAgg+ stages as a
  gRPC service next to ``FedFleet`` and the round runner a ``SecAggFedAvg`` run uses.
- :mod:`fedfleet.net.secure._secagg_client`: :func:`run_secagg_client`, a client's side of a round.
- :mod:`fedfleet.net.secure._secagg_wire`: the protocol's messages as protobuf (``secagg.proto``).
- :mod:`fedfleet.net.secure._he_server` / ``he_client``: :class:`HERounds`, HE aggregation
  (``HEFedAvg``) over ``he.proto``: encrypted uploads, the server's ciphertext sum, a client key
  holder's decryption of the aggregate only; ``he_keys``: :func:`write_he_keys`, the key files.

Who learns what, and what is not covered: ``docs/secure_deployment.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import fedfleet.net._hooks as _hooks
from fedfleet.net.secure._he_client import he_upload
from fedfleet.net.secure._he_keys import write_he_keys
from fedfleet.net.secure._he_server import HERounds
from fedfleet.net.secure._secagg_client import SecAggRoundAborted, run_secagg_client, secagg_upload
from fedfleet.net.secure._secagg_server import SecAggRounds
from fedfleet.privacy.secagg._strategy import SecAggFedAvg
from fedfleet.strategies import HEFedAvg

__all__ = [
    "HERounds",
    "SecAggRoundAborted",
    "SecAggRounds",
    "run_secagg_client",
    "secure_rounds_for",
    "secure_upload_for",
    "write_he_keys",
]


def secure_rounds_for(server: Any) -> SecAggRounds | HERounds | None:
    """The round runner for ``server`` (a ``FederatedServer``): SecAgg for ``SecAggFedAvg``, HE
    for ``HEFedAvg``, else None (plain rounds)."""
    strategy = getattr(server, "strategy", None)
    if isinstance(strategy, SecAggFedAvg):
        return SecAggRounds(server, strategy)
    if isinstance(strategy, HEFedAvg):
        return HERounds(server, strategy)
    return None


def secure_upload_for(strategy: Any) -> Callable[..., bool] | None:
    """The client's upload for ``strategy``: ``(client, task_header, vector, client_result) ->
    in the aggregate?`` for SecAgg and HE, None for a plain upload."""
    if isinstance(strategy, SecAggFedAvg):
        return secagg_upload
    if isinstance(strategy, HEFedAvg):
        return he_upload
    return None


# the plain server and client find these through the registry (they never import this package)
_hooks.register(rounds=secure_rounds_for, upload=secure_upload_for)
