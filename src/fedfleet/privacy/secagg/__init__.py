"""Secure aggregation: SecAgg (Bonawitz et al. 2017) with the SecAgg+ sparse neighbour graph
(Bell et al. 2020), as transport-agnostic client and server state machines.

Who learns what: the server learns the sum of the quantised updates of the clients that sent a
masked input, which clients those were, and the public keys; nothing about any single update as
long as it is semi-honest and colludes with fewer than t clients of any neighbourhood. Clients
learn nothing about each other's updates. (No consistency-check round: a server that lies about
dropouts to different clients is out of scope, as in Bonawitz et al.'s semi-honest variant.)

``SecAggClient``, ``SecAggServer`` and ``SecAggResult`` load on first use (PEP 562): they need
``cryptography`` (the ``privacy`` or ``deploy`` extra), which a run without SecAgg does not.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fedfleet.privacy.secagg._config import SecAggConfig, harary_graph, secagg_plus_degree
from fedfleet.privacy.secagg._errors import STAGE_NAMES, SecAggAborted, SecAggProtocolError
from fedfleet.privacy.secagg._messages import (
    AdvertiseKeys,
    ForwardedShares,
    MaskedInput,
    PublicKeys,
    Setup,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from fedfleet.privacy.secagg._quantize import dequantize, modulus_bits, quantize, to_signed
from fedfleet.privacy.secagg._shamir import reconstruct, share_secret
from fedfleet.privacy.secagg._simulate import SecAggRun, draw_dropouts, run_secagg, secure_sum

if TYPE_CHECKING:
    from fedfleet.privacy.secagg._client import SecAggClient
    from fedfleet.privacy.secagg._server import SecAggResult, SecAggServer

_LAZY = {
    "SecAggClient": "fedfleet.privacy.secagg._client",
    "SecAggResult": "fedfleet.privacy.secagg._server",
    "SecAggServer": "fedfleet.privacy.secagg._server",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from fedfleet._extras import require

    require("cryptography", extra="privacy", feature="secure aggregation (SecAgg)")
    return getattr(importlib.import_module(_LAZY[name]), name)


__all__ = [
    "STAGE_NAMES",
    "AdvertiseKeys",
    "ForwardedShares",
    "MaskedInput",
    "PublicKeys",
    "SecAggAborted",
    "SecAggClient",
    "SecAggConfig",
    "SecAggProtocolError",
    "SecAggResult",
    "SecAggRun",
    "SecAggServer",
    "Setup",
    "ShareKeys",
    "UnmaskRequest",
    "UnmaskResponse",
    "dequantize",
    "draw_dropouts",
    "harary_graph",
    "modulus_bits",
    "quantize",
    "reconstruct",
    "run_secagg",
    "secagg_plus_degree",
    "secure_sum",
    "share_secret",
    "to_signed",
]
