"""The client side of SecAgg / SecAgg+ as a state machine: one method per stage, each taking the
server's message and returning the client's reply. No I/O: a transport (in-memory simulation or
the network) carries the messages.

Client u holds two X25519 key pairs (``enc`` for encrypting shares to it, ``mask`` for pairwise
mask seeds) and a 256-bit self-mask seed b_u. It Shamir-shares b_u and sk_u^mask with threshold
t among its neighbourhood (itself included; share point x = id + 1) and sends each neighbour its
shares encrypted under HKDF(X25519(enc_u, enc_v)). Its masked input is

    y_u = q(x_u) + PRG(b_u) + sum_{v in U2, u < v} PRG(s_uv) - sum_{v in U2, u > v} PRG(s_uv)

in Z_{2^b}, s_uv = HKDF(X25519(mask_u, mask_v)), U2 = the neighbours whose shares reached it.
At unmasking it reveals, for each neighbour v, the share of b_v if v sent a masked input or
else the share of sk_v, never both (Bonawitz et al. 2017, section 4).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

import fedfleet.privacy.secagg._crypto as crypto
from fedfleet.privacy.secagg._errors import SecAggAborted, SecAggProtocolError
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
from fedfleet.privacy.secagg._quantize import quantize
from fedfleet.privacy.secagg._shamir import SHARE_BYTES, share_secret

__all__ = ["SecAggClient", "mask_vector"]

ENC = b"share-encryption"
MASK = b"pairwise-mask"


def _aad(setup: Setup) -> bytes:
    return b"fedfleet-secagg-shares/" + setup.round_id.to_bytes(8, "big")


def mask_vector(
    own_id: int,
    self_seed: bytes,
    pair_seeds: dict[int, bytes],
    length: int,
    bits: int,
) -> np.ndarray:
    """PRG(b_u) + sum_v sign(u, v) PRG(s_uv) mod 2^bits, sign +1 when u < v (uint64)."""
    total = crypto.expand_mask(self_seed, length, bits)
    for v, seed in pair_seeds.items():
        prg = crypto.expand_mask(seed, length, bits)
        if own_id < v:
            total += prg
        else:
            total -= prg
    if bits < 64:
        total &= np.uint64((1 << bits) - 1)
    return total


class SecAggClient:
    """One client's side of a secure aggregation.

    Example (the transport calls, in order):
        >>> client = SecAggClient(7)
        >>> keys = client.advertise_keys(setup)            # stage 1
        >>> shares = client.share_keys(public_keys)        # stage 2
        >>> masked = client.masked_input(forwarded, x)     # stage 3
        >>> response = client.unmask(request)              # stage 4

    Args:
        client_id: this client's id (a non-negative int, unique in the cohort).
        random_bytes: source of secret randomness (keys, seeds, share polynomials); the OS
            CSPRNG by default. A seeded source makes simulations reproducible and must never be
            used in deployment.
    """

    def __init__(self, client_id: int, random_bytes: Callable[[int], bytes] | None = None) -> None:
        self.client_id = int(client_id)
        self._random = random_bytes or os.urandom
        self._stage = 0
        self._setup: Setup | None = None
        self._enc: X25519PrivateKey | None = None
        self._mask: X25519PrivateKey | None = None
        self._self_seed = b""
        self._keys: dict[int, tuple[bytes, bytes]] = {}
        self._inbox: dict[int, bytes] = {}
        self._shared_with: tuple[int, ...] = ()
        self._enc_keys: dict[int, bytes] = {}  # share-encryption key per neighbour

    def _expect(self, stage: int, what: str) -> Setup:
        if self._stage != stage or (self._setup is None and stage > 1):
            raise SecAggProtocolError(
                f"client {self.client_id} got {what} at stage {self._stage}, expected it at "
                f"stage {stage}; messages must come in protocol order"
            )
        return self._setup  # type: ignore[return-value]

    def _check_count(self, stage: int, count: int, setup: Setup) -> None:
        if count < setup.threshold:
            raise SecAggAborted(stage, count, setup.threshold, client=self.client_id)

    # stage 1 ------------------------------------------------------------------------------
    def advertise_keys(self, setup: Setup) -> AdvertiseKeys:
        """Stage 1: draw two key pairs and the self-mask seed; publish the public keys."""
        if self._stage != 0:
            raise SecAggProtocolError(f"client {self.client_id} got a second setup message")
        if setup.client_id != self.client_id:
            raise SecAggProtocolError(
                f"client {self.client_id} got the setup of client {setup.client_id}"
            )
        self._setup = setup
        self._enc = crypto.private_key_from_bytes(self._random(crypto.KEY_BYTES))
        self._mask = crypto.private_key_from_bytes(self._random(crypto.KEY_BYTES))
        self._self_seed = self._random(crypto.KEY_BYTES)
        self._stage = 1
        return AdvertiseKeys(
            self.client_id, crypto.public_bytes(self._enc), crypto.public_bytes(self._mask)
        )

    # stage 2 ------------------------------------------------------------------------------
    def share_keys(self, message: PublicKeys) -> ShareKeys:
        """Stage 2: Shamir-share b_u and sk_u^mask among the neighbours that advertised keys
        (and itself), and encrypt each neighbour's pair of shares to it."""
        setup = self._expect(1, "public keys")
        assert self._enc is not None and self._mask is not None
        neighbours = set(setup.neighbours)
        if not set(message.keys) <= neighbours:
            raise SecAggProtocolError(
                f"client {self.client_id} got keys of non-neighbours "
                f"{sorted(set(message.keys) - neighbours)}"
            )
        seen = {crypto.public_bytes(self._enc), crypto.public_bytes(self._mask)}
        for v, (enc_pk, mask_pk) in message.keys.items():
            if enc_pk in seen or mask_pk in seen or enc_pk == mask_pk:
                raise SecAggProtocolError(f"client {v}'s public keys repeat another key")
            seen.update((enc_pk, mask_pk))
        self._check_count(2, len(message.keys) + 1, setup)
        self._keys = dict(message.keys)
        holders = sorted([self.client_id, *self._keys])
        xs = [h + 1 for h in holders]
        b_shares = share_secret(
            int.from_bytes(self._self_seed, "big"), xs, setup.threshold, self._random
        )
        sk_shares = share_secret(
            int.from_bytes(crypto.private_bytes(self._mask), "big"),
            xs,
            setup.threshold,
            self._random,
        )
        ciphertexts = {}
        for v in holders:
            x = v + 1
            plaintext = (
                self.client_id.to_bytes(8, "big")
                + v.to_bytes(8, "big")
                + b_shares[x].to_bytes(SHARE_BYTES, "big")
                + sk_shares[x].to_bytes(SHARE_BYTES, "big")
            )
            if v == self.client_id:  # its own share stays home, in the same format
                self._inbox[v] = plaintext
                continue
            key = crypto.agree(self._enc, self._keys[v][0], ENC, setup.round_id)
            self._enc_keys[v] = key
            ciphertexts[v] = crypto.encrypt(key, self.client_id, v, plaintext, _aad(setup))
        self._stage = 2
        return ShareKeys(self.client_id, ciphertexts)

    # stage 3 ------------------------------------------------------------------------------
    def masked_input(self, message: ForwardedShares, update: np.ndarray) -> MaskedInput:
        """Stage 3: quantise ``update`` (float, length L) and add the self mask and the
        pairwise masks with every neighbour whose shares arrived."""
        setup = self._expect(2, "forwarded shares")
        assert self._mask is not None
        x = np.asarray(update)
        if x.shape != (setup.vector_length,):
            raise SecAggProtocolError(
                f"client {self.client_id}'s update has shape {x.shape}, expected "
                f"({setup.vector_length},) as agreed at setup"
            )
        senders = set(message.ciphertexts)
        if not senders <= set(self._keys):
            strangers = sorted(senders - set(self._keys))
            raise SecAggProtocolError(
                f"client {self.client_id} got shares from clients {strangers} that did not "
                "advertise keys to it"
            )
        self._check_count(3, len(senders) + 1, setup)
        self._inbox.update(message.ciphertexts)
        self._shared_with = tuple(sorted(senders))
        pair_seeds = {
            v: crypto.agree(self._mask, self._keys[v][1], MASK, setup.round_id)
            for v in self._shared_with
        }
        bits = setup.modulus_bits
        y = quantize(x, setup.clip_range, setup.quant_range, bits)
        y += mask_vector(self.client_id, self._self_seed, pair_seeds, x.size, bits)
        if bits < 64:
            y &= np.uint64((1 << bits) - 1)
        self._stage = 3
        return MaskedInput(self.client_id, y, bits)

    # stage 4 ------------------------------------------------------------------------------
    def unmask(self, message: UnmaskRequest) -> UnmaskResponse:
        """Stage 4: for each neighbour v that shared keys with it, the share of b_v if v is in
        ``survivors`` (it sent a masked input), else the share of sk_v^mask."""
        setup = self._expect(3, "an unmask request")
        assert self._enc is not None
        survivors = set(message.survivors)
        if self.client_id not in survivors:
            raise SecAggProtocolError(
                f"client {self.client_id} sent its masked input but is not among the survivors"
            )
        if not survivors <= set(self._shared_with) | {self.client_id}:
            raise SecAggProtocolError(
                f"server lists clients {sorted(survivors - set(self._shared_with))} as survivors, "
                f"but they never shared keys with client {self.client_id}"
            )
        self._check_count(4, len(survivors), setup)
        b_shares: dict[int, int] = {}
        sk_shares: dict[int, int] = {}
        for v in (self.client_id, *self._shared_with):
            raw = self._inbox[v]
            if v != self.client_id:
                key = self._enc_keys[v]
                try:
                    raw = crypto.decrypt(key, v, self.client_id, raw, _aad(setup))
                except InvalidTag:
                    raise SecAggProtocolError(
                        f"client {self.client_id}: the shares from client {v} fail authentication"
                    ) from None
            sender, recipient = int.from_bytes(raw[:8], "big"), int.from_bytes(raw[8:16], "big")
            if (sender, recipient) != (v, self.client_id):
                raise SecAggProtocolError(
                    f"client {self.client_id}: shares labelled {sender}->{recipient} arrived as "
                    f"{v}->{self.client_id}"
                )
            if v in survivors:
                b_shares[v] = int.from_bytes(raw[16 : 16 + SHARE_BYTES], "big")
            else:
                sk_shares[v] = int.from_bytes(raw[16 + SHARE_BYTES :], "big")
        assert not set(b_shares) & set(sk_shares)
        self._stage = 4
        return UnmaskResponse(self.client_id, b_shares, sk_shares)
