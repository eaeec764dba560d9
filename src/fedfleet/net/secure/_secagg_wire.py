"""SecAgg messages <-> protobuf: the dataclasses of :mod:`fedfleet.privacy.secagg._messages` as the
messages of ``secagg.proto``, checking every field's size before anything is built from it.

Public keys are 32 raw bytes, share ciphertexts are copied as bytes, shares are 66-byte
big-endian integers, and the masked input is the uint64 vector's little-endian bytes in chunks;
nothing is deserialised beyond ``int.from_bytes`` and ``np.frombuffer`` on sized buffers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import numpy as np

from fedfleet._proto import secagg_pb2 as spb
from fedfleet.privacy.secagg import (
    ForwardedShares,
    PublicKeys,
    SecAggProtocolError,
    Setup,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from fedfleet.privacy.secagg._shamir import SHARE_BYTES

__all__ = [
    "MaskedReceiver",
    "ciphertexts_from_pb",
    "ciphertexts_to_pb",
    "masked_chunks",
    "public_keys_from_pb",
    "public_keys_to_pb",
    "setup_from_pb",
    "setup_to_pb",
    "shares_from_pb",
    "shares_to_pb",
]

_U64 = np.dtype("<u8")


def setup_to_pb(s: Setup) -> spb.SetupReply:
    return spb.SetupReply(
        vector_length=s.vector_length,
        clip_range=s.clip_range,
        quant_range=s.quant_range,
        modulus_bits=s.modulus_bits,
        threshold=s.threshold,
        neighbours=list(s.neighbours),
    )


def setup_from_pb(cid: int, rnd: int, m: spb.SetupReply) -> Setup:
    return Setup(
        cid,
        rnd,
        int(m.vector_length),
        float(m.clip_range),
        int(m.quant_range),
        int(m.modulus_bits),
        int(m.threshold),
        tuple(int(v) for v in m.neighbours),
    )


def public_keys_to_pb(m: PublicKeys) -> spb.PublicKeysReply:
    return spb.PublicKeysReply(
        keys=[
            spb.ClientKeys(client_id=v, enc_public=e, mask_public=k)
            for v, (e, k) in sorted(m.keys.items())
        ]
    )


def public_keys_from_pb(cid: int, m: spb.PublicKeysReply) -> PublicKeys:
    keys: dict[int, tuple[bytes, bytes]] = {}
    for k in m.keys:
        if k.client_id in keys:
            raise SecAggProtocolError(f"the server sent client {k.client_id}'s keys twice")
        keys[int(k.client_id)] = (bytes(k.enc_public), bytes(k.mask_public))
    return PublicKeys(cid, keys)


def ciphertexts_to_pb(ciphertexts: Mapping[int, bytes]) -> list[spb.Ciphertext]:
    return [spb.Ciphertext(client_id=v, data=c) for v, c in sorted(ciphertexts.items())]


def ciphertexts_from_pb(cid: int, items: Iterable[spb.Ciphertext], limit: int) -> dict[int, bytes]:
    """``{client: ciphertext}``; refuses repeated ids and more than ``limit`` entries."""
    out: dict[int, bytes] = {}
    for c in items:
        if len(out) >= limit:
            raise SecAggProtocolError(f"client {cid} sent more than {limit} ciphertexts")
        if c.client_id in out:
            raise SecAggProtocolError(f"client {cid} sent two ciphertexts for client {c.client_id}")
        out[int(c.client_id)] = bytes(c.data)
    return out


def shares_to_pb(shares: Mapping[int, int]) -> list[spb.Share]:
    return [
        spb.Share(client_id=v, value=s.to_bytes(SHARE_BYTES, "big"))
        for v, s in sorted(shares.items())
    ]


def shares_from_pb(cid: int, items: Iterable[spb.Share], limit: int) -> dict[int, int]:
    """``{client: share}`` from 66-byte values; refuses repeats, other sizes, over ``limit``."""
    out: dict[int, int] = {}
    for s in items:
        if len(out) >= limit:
            raise SecAggProtocolError(f"client {cid} sent more than {limit} shares")
        if s.client_id in out:
            raise SecAggProtocolError(f"client {cid} sent two shares of client {s.client_id}")
        if len(s.value) != SHARE_BYTES:
            raise SecAggProtocolError(
                f"client {cid}'s share of client {s.client_id} is {len(s.value)} bytes, expected "
                f"{SHARE_BYTES}"
            )
        out[int(s.client_id)] = int.from_bytes(s.value, "big")
    return out


def share_keys_message(cid: int, m: spb.ShareKeysRequest, limit: int) -> ShareKeys:
    return ShareKeys(cid, ciphertexts_from_pb(cid, m.ciphertexts, limit))


def forwarded_from_pb(cid: int, m: spb.ForwardedSharesReply, limit: int) -> ForwardedShares:
    return ForwardedShares(cid, ciphertexts_from_pb(cid, m.ciphertexts, limit))


def unmask_request_from_pb(cid: int, m: spb.UnmaskRequestReply) -> UnmaskRequest:
    return UnmaskRequest(cid, tuple(int(v) for v in m.survivors))


def unmask_response_from_pb(cid: int, m: spb.UnmaskRequest, limit: int) -> UnmaskResponse:
    return UnmaskResponse(
        cid,
        shares_from_pb(cid, m.self_mask_shares, limit),
        shares_from_pb(cid, m.key_shares, limit),
    )


def masked_chunks(
    ref: spb.RoundRef, masked: np.ndarray, chunk_size: int
) -> Iterator[spb.MaskedMessage]:
    """The header, then the vector's little-endian uint64 bytes in chunks of ``chunk_size``."""
    yield spb.MaskedMessage(header=spb.MaskedHeader(ref=ref, length=masked.size))
    data = np.ascontiguousarray(masked, dtype=_U64).view(np.uint8)
    for off in range(0, len(data), chunk_size):
        chunk = spb.MaskedChunk(offset=off, data=data[off : off + chunk_size].tobytes())
        yield spb.MaskedMessage(chunk=chunk)


class MaskedReceiver:
    """Reassembles a masked input of exactly ``length`` coordinates from in-order chunks."""

    def __init__(self, cid: int, declared: int, length: int) -> None:
        if declared != length:
            raise SecAggProtocolError(
                f"client {cid} declared a masked input of {declared} coordinates, the setup "
                f"agreed on {length}; is the client running another model?"
            )
        self.cid = cid
        self._buf = bytearray(length * _U64.itemsize)
        self._filled = 0

    def add(self, chunk: spb.MaskedChunk) -> None:
        end = self._filled + len(chunk.data)
        if chunk.offset != self._filled or end > len(self._buf) or not chunk.data:
            raise SecAggProtocolError(
                f"client {self.cid}'s masked input chunk at byte {chunk.offset} "
                f"({len(chunk.data)} bytes) does not continue the {self._filled} bytes received "
                f"of {len(self._buf)}"
            )
        self._buf[self._filled : end] = chunk.data
        self._filled = end

    @property
    def complete(self) -> bool:
        return self._filled == len(self._buf)

    def finish(self) -> np.ndarray:
        if self._filled != len(self._buf):
            raise SecAggProtocolError(
                f"client {self.cid}'s masked input ended after {self._filled} of "
                f"{len(self._buf)} bytes"
            )
        return np.frombuffer(bytes(self._buf), dtype=_U64).astype(np.uint64)
