"""The client side of a networked HE round: encrypt ``n_k * delta_k``, upload it, and, when the
server names this client the round's key holder, decrypt the aggregate (only the aggregate ever
reaches it) and return the mean delta.

Every client of an HE federation holds the shared key pair (``HEFedAvg(key_holder=...)``, read
from the key file its operator was given); the server holds only the public key.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
import numpy as np

from fedfleet._proto import he_pb2 as hpb
from fedfleet._proto import he_pb2_grpc as hpb_grpc
from fedfleet.errors import FedfleetError
from fedfleet.net.secure._he_server import blob_messages
from fedfleet.privacy import HEError
from fedfleet.strategies import HEFedAvg, decrypt_aggregate

__all__ = ["he_upload", "run_he_client"]

log = logging.getLogger("fedfleet.net.secure")


def run_he_client(
    channel: grpc.Channel,
    cid: int,
    rnd: int,
    task_id: str,
    encrypted: bytes,
    strategy: HEFedAvg,
    *,
    chunk_size: int = 1 << 20,
    timeout_s: float | None = None,
) -> bool:
    """Upload ``encrypted``; decrypt and return the sum if chosen as key holder. True if the
    upload was accepted."""
    stub = hpb_grpc.HEAggregationStub(channel)
    ref = hpb.HERef(client_id=cid, round=rnd, task_id=task_id)
    reply = stub.SubmitEncrypted(blob_messages(ref, encrypted, chunk_size), timeout=timeout_s)
    if not reply.accepted:
        log.warning("client %d: round %d encrypted update refused: %s", cid, rnd, reply.reason)
        return False
    stream = stub.AwaitAggregate(ref, timeout=timeout_s)
    header = next(stream).header
    if not header.decrypt:
        log.info("client %d: round %d: %s", cid, rnd, header.reason)
        return True
    buf = bytearray()
    for message in stream:
        if message.chunk.offset != len(buf) or len(buf) + len(message.chunk.data) > header.size:
            raise HEError(f"client {cid}: the aggregate arrived out of order")
        buf += message.chunk.data
    if len(buf) != header.size:
        raise HEError(f"client {cid}: the aggregate ended after {len(buf)} of {header.size} bytes")
    assert strategy.key_holder is not None
    mean = decrypt_aggregate(strategy.key_holder, bytes(buf))
    data = np.ascontiguousarray(mean, dtype="<f8").tobytes()
    done = stub.SubmitMean(blob_messages(ref, data, chunk_size), timeout=timeout_s)
    log.info("client %d: round %d: decrypted the sum (%s)", cid, rnd, done.accepted)
    return True


def he_upload(client: Any, header: Any, vector: np.ndarray, result: Any) -> bool:
    """The ``FederatedClient`` hook for ``HEFedAvg``: the round's upload, encrypted."""
    strategy: HEFedAvg = client.strategy
    cid, rnd = client.client_id, int(header.round)
    if strategy.key_holder is None:
        raise FedfleetError(
            f"client {cid}: an HE client needs the federation's key pair "
            "(HEFedAvg(key_holder=load_key_holder(...))) to decrypt when it is the key holder"
        )
    try:
        encrypted = strategy.encrypt_update(vector, result)
        with client._channel() as channel:
            return run_he_client(
                channel,
                cid,
                rnd,
                header.task_id,
                encrypted,
                strategy,
                chunk_size=client.settings.chunk_size,
                timeout_s=client.settings.rpc_timeout_s,
            )
    except HEError as err:
        log.warning("client %d: round %d HE upload ended: %s", cid, rnd, err)
        return False
    except grpc.RpcError as err:
        if err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
            log.warning("client %d: round %d: the server refused: %s", cid, rnd, err.details())
            return False
        raise
