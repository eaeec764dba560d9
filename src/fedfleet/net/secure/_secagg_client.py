"""The client side of a networked SecAgg round: after local training (which clips the delta),
run :class:`~fedfleet.privacy.secagg.SecAggClient` over the ``SecureAggregation`` calls.

The client's secrets (two X25519 key pairs, the self-mask seed, the share polynomials) come from
the OS CSPRNG and never leave it except as encrypted shares or, at unmasking, the one share per
neighbour the protocol allows. Before joining it checks that the server's setup matches its own
config (vector length, clip range, quantisation), so a server cannot make it quantise differently
from what the run's config says.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
import numpy as np

import fedfleet.net.secure._secagg_wire as wire
from fedfleet._proto import secagg_pb2 as spb
from fedfleet._proto import secagg_pb2_grpc as spb_grpc
from fedfleet.errors import FedfleetError
from fedfleet.privacy.secagg import SecAggAborted, SecAggClient, SecAggProtocolError, Setup
from fedfleet.privacy.secagg._strategy import SecAggFedAvg

__all__ = ["SecAggRoundAborted", "run_secagg_client", "secagg_upload"]

log = logging.getLogger("fedfleet.net.secure")


class SecAggRoundAborted(FedfleetError):
    """The server aborted this round's secure aggregation, or left this client out of it."""


def _check(status: spb.Status, cid: int, rnd: int) -> None:
    if status.aborted:
        raise SecAggRoundAborted(f"client {cid}, round {rnd}: {status.reason}")


def _check_setup(setup: Setup, strategy: SecAggFedAvg, length: int) -> None:
    ours = (length, float(strategy.clip_norm), int(strategy.quant_range))
    theirs = (setup.vector_length, setup.clip_range, setup.quant_range)
    if ours != theirs or setup.client_id in setup.neighbours or setup.threshold < 2:
        raise SecAggProtocolError(
            f"client {setup.client_id}: the server's setup (length, clip range, quantisation "
            f"levels) = {theirs}, threshold {setup.threshold}, does not match this client's "
            f"config {ours}; are server and client running the same config?"
        )
    if not 1 <= setup.modulus_bits <= 64:
        raise SecAggProtocolError(f"modulus of 2^{setup.modulus_bits} is out of range")


def run_secagg_client(
    channel: grpc.Channel,
    cid: int,
    rnd: int,
    task_id: str,
    delta: np.ndarray,
    strategy: SecAggFedAvg,
    *,
    chunk_size: int = 1 << 20,
    timeout_s: float | None = None,
) -> tuple[int, ...]:
    """Take part in round ``rnd``'s secure sum with the (clipped) ``delta``; returns the clients
    whose inputs are in the sum. Raises :class:`SecAggRoundAborted` if the server aborted or left
    this client out, :class:`SecAggProtocolError` on a message that breaks the protocol, and
    ``grpc.RpcError`` (with the server's reason) when the server refused a message."""
    stub = spb_grpc.SecureAggregationStub(channel)
    ref = spb.RoundRef(client_id=cid, round=rnd, task_id=task_id)
    call: dict[str, Any] = {"timeout": timeout_s}

    reply = stub.GetSetup(ref, **call)
    _check(reply.status, cid, rnd)
    setup = wire.setup_from_pb(cid, rnd, reply)
    _check_setup(setup, strategy, delta.size)
    machine = SecAggClient(cid)
    limit = len(setup.neighbours)

    adv = machine.advertise_keys(setup)
    keys = stub.AdvertiseKeys(
        spb.AdvertiseKeysRequest(ref=ref, enc_public=adv.enc_public, mask_public=adv.mask_public),
        **call,
    )
    _check(keys.status, cid, rnd)
    shares = machine.share_keys(wire.public_keys_from_pb(cid, keys))

    forwarded = stub.ShareKeys(
        spb.ShareKeysRequest(ref=ref, ciphertexts=wire.ciphertexts_to_pb(shares.ciphertexts)),
        **call,
    )
    _check(forwarded.status, cid, rnd)
    masked = machine.masked_input(wire.forwarded_from_pb(cid, forwarded, limit), delta)

    request = stub.SubmitMasked(wire.masked_chunks(ref, masked.masked, chunk_size), **call)
    _check(request.status, cid, rnd)
    response = machine.unmask(wire.unmask_request_from_pb(cid, request))

    done = stub.Unmask(
        spb.UnmaskRequest(
            ref=ref,
            self_mask_shares=wire.shares_to_pb(response.self_mask_shares),
            key_shares=wire.shares_to_pb(response.key_shares),
        ),
        **call,
    )
    _check(done.status, cid, rnd)
    return tuple(request.survivors)


def secagg_upload(client: Any, header: Any, vector: np.ndarray, result: Any) -> bool:
    """The ``FederatedClient`` hook: the round's upload through SecAgg (True: in the sum).

    A refused message, a server-side abort or a protocol violation ends this client's part in
    the round (logged, with the reason); it then polls for the next task as usual. Connection
    errors propagate to the client's reconnect loop."""
    cid, rnd = client.client_id, int(header.round)
    delta = np.asarray(result.fit.vector, np.float32) - vector  # as the simulation's engine
    try:
        with client._channel() as channel:
            included = run_secagg_client(
                channel,
                cid,
                rnd,
                header.task_id,
                delta,
                client.strategy,
                chunk_size=client.settings.chunk_size,
                timeout_s=client.settings.rpc_timeout_s,
            )
    except (SecAggRoundAborted, SecAggAborted, SecAggProtocolError) as err:
        log.warning("client %d: round %d secure aggregation ended: %s", cid, rnd, err)
        return False
    except grpc.RpcError as err:
        if err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
            log.warning("client %d: round %d: the server refused: %s", cid, rnd, err.details())
            return False
        raise
    log.info("client %d: round %d secure sum over clients %s", cid, rnd, list(included))
    return True
