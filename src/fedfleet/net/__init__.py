"""Deployment over gRPC: a server process and client processes that reuse the simulation's
strategies, trainers and validation; only broadcast and upload travel over the network.

- :mod:`fedfleet.net._wire`: arrays <-> chunked protobuf messages (no pickle).
- :mod:`fedfleet.net._server`: :class:`FederatedServer`, the round loop over live clients.
- :mod:`fedfleet.net._client`: :class:`FederatedClient`, polls for tasks, trains, uploads.
- :mod:`fedfleet.net._certs`: a local CA, server and per-client certificates for mutual TLS.
- :mod:`fedfleet.net._checkpoint`: atomic per-round server checkpoints (safetensors + JSON).
"""

from fedfleet._extras import require

for _module in ("grpc", "google.protobuf", "cryptography"):
    require(_module, extra="deploy", feature="the gRPC deployment (fedfleet.net)")

# SecAgg / HE register their round runners and uploads with the plain server and client
# (fedfleet.net._hooks): importing any part of fedfleet.net fills the registry
import fedfleet.net.secure  # noqa: E402, F401
from fedfleet.net._certs import create_test_federation  # noqa: E402
from fedfleet.net._client import ClientSettings, FederatedClient  # noqa: E402
from fedfleet.net._server import FederatedServer, RunSpec, ServerSettings  # noqa: E402

__all__ = [
    "ClientSettings",
    "FederatedClient",
    "FederatedServer",
    "RunSpec",
    "ServerSettings",
    "create_test_federation",
]
