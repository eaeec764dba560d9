"""The server side of SecAgg / SecAgg+ as a state machine.

Each ``collect_*`` method takes the messages that arrived for a stage (whoever is missing has
dropped out) and returns the server's messages for the next stage, keyed by recipient. The
transport decides when a stage closes (a deadline on the network, "everyone still alive" in
simulation). Client sets, as in Bonawitz et al. 2017: U1 advertised keys, U2 shared keys, U3 sent
a masked input, U4 answered the unmask request. The sum covers exactly U3.

Unmasking: for u in U3 the server rebuilds b_u from t shares and removes PRG(b_u); for v in
U2 \\ U3 it rebuilds sk_v^mask and removes the pairwise masks sign(u, v) PRG(s_uv) that each
surviving neighbour u added for v. It never holds shares of both b_v and sk_v for one client v
(asserted on every share it stores): with both it could unmask v's input alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Set
from dataclasses import dataclass

import numpy as np

import fedfleet.privacy.secagg._crypto as crypto
from fedfleet.privacy.secagg._client import MASK
from fedfleet.privacy.secagg._config import SecAggConfig, harary_graph
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
from fedfleet.privacy.secagg._quantize import dequantize, to_signed
from fedfleet.privacy.secagg._shamir import PRIME, SHARE_BYTES, reconstruct

__all__ = ["SHARES_CIPHERTEXT_BYTES", "SecAggResult", "SecAggServer"]

SHARES_CIPHERTEXT_BYTES = 16 + 2 * SHARE_BYTES + 16
"""One encrypted share bundle: two 8-byte ids, two shares, the 16-byte Poly1305 tag."""


@dataclass(frozen=True)
class SecAggResult:
    """The outcome of one secure aggregation.

    Attributes:
        total: the de-quantised sum over ``included`` (float64), ``sum_q * c / R``.
        sum_q: the exact integer sum of the included clients' quantised inputs (int64).
        included: the clients whose inputs are in the sum (U3), ascending.
        dropped: the selected clients that are not.
    """

    total: np.ndarray
    sum_q: np.ndarray
    included: tuple[int, ...]
    dropped: tuple[int, ...]


class SecAggServer:
    """The server of one secure aggregation over ``client_ids``.

    Example (a transport drives it; see :func:`fedfleet.privacy.secagg.run_secagg`):
        >>> server = SecAggServer(config, client_ids=range(100), rng=np.random.default_rng(0))
        >>> setups = server.setup()                         # stage 0, to every client
        >>> public_keys = server.collect_keys(advertised)   # stage 1 replies that arrived
        >>> forwarded = server.collect_shares(shares)       # stage 2
        >>> requests = server.collect_masked(masked)        # stage 3
        >>> result = server.collect_unmask(responses)       # stage 4 -> SecAggResult

    Args:
        config: the aggregation's parameters.
        client_ids: the cohort (distinct non-negative ints).
        rng: draws the neighbour graph (the only randomness the server needs).
    """

    def __init__(
        self, config: SecAggConfig, client_ids: Iterable[int], rng: np.random.Generator
    ) -> None:
        ids = sorted(int(c) for c in client_ids)
        if len(set(ids)) != len(ids) or (ids and ids[0] < 0):
            raise SecAggProtocolError("client ids must be distinct non-negative integers")
        n = len(ids)
        if n < 2:
            raise SecAggAborted(0, n, 2, why="secure aggregation needs at least 2 clients")
        self.config = config
        self.client_ids = tuple(ids)
        self.threshold = config.resolved_threshold(n)
        self.bits = config.resolved_modulus_bits(n)
        self.graph = harary_graph(ids, config.degree(n), rng)
        self.stage = 0
        self._keys: dict[int, tuple[bytes, bytes]] = {}
        self._u2: set[int] = set()
        self._u3: set[int] = set()
        self._sum = np.zeros(config.vector_length, np.uint64)
        self._b_shares: dict[int, dict[int, int]] = {}
        self._sk_shares: dict[int, dict[int, int]] = {}

    # helpers -------------------------------------------------------------------------------
    def _advance(self, stage: int) -> None:
        if self.stage != stage:
            raise SecAggProtocolError(
                f"stage {stage + 1} messages arrived while the server is at stage {self.stage}"
            )
        self.stage = stage + 1

    def _unique(self, messages: Iterable, allowed: set[int], what: str) -> dict[int, object]:
        out: dict[int, object] = {}
        for m in messages:
            cid = m.client_id
            if cid not in allowed:
                raise SecAggProtocolError(
                    f"client {cid} sent {what} but is not expected at this stage"
                )
            if cid in out:
                raise SecAggProtocolError(f"client {cid} sent {what} twice")
            out[cid] = m
        return out

    def _check_neighbourhoods(self, stage: int, alive: set[int], who: Iterable[int]) -> None:
        """Abort unless every client in ``who`` has at least t of its neighbourhood alive."""
        if len(alive) < self.threshold:
            raise SecAggAborted(stage, len(alive), self.threshold)
        for u in sorted(who):  # sorted: the same client is named on every run
            count = 1 + sum(v in alive for v in self.graph[u])
            if count < self.threshold:
                raise SecAggAborted(stage, count, self.threshold, client=u)

    def shares_held(self) -> dict[int, set[str]]:
        """Which kinds of share the server holds per client: ``{"self_mask"}`` or
        ``{"mask_key"}`` (never both; for tests and audits)."""
        kinds: dict[int, set[str]] = {}
        for v in self._b_shares:
            kinds.setdefault(v, set()).add("self_mask")
        for v in self._sk_shares:
            kinds.setdefault(v, set()).add("mask_key")
        return kinds

    # one message at a time ----------------------------------------------------------------
    # A transport that receives messages one by one (the network) calls these on arrival, so a
    # malformed message is refused alone instead of failing the whole stage at collection.
    def check_keys(self, m: AdvertiseKeys, seen: Set[bytes] = frozenset()) -> None:
        """Stage 1: two distinct 32-byte keys, not repeating ``seen`` (keys already accepted)."""
        u = m.client_id
        for name, key in (("enc_public", m.enc_public), ("mask_public", m.mask_public)):
            if not isinstance(key, bytes) or len(key) != crypto.KEY_BYTES:
                raise SecAggProtocolError(
                    f"client {u}'s {name} is {len(key)} bytes, expected {crypto.KEY_BYTES} "
                    "(a raw X25519 public key)"
                )
            if not crypto.is_usable_public_key(key):
                raise SecAggProtocolError(
                    f"client {u}'s {name} is a small-order X25519 point (no key agreement with "
                    "it is possible); a client must advertise a freshly generated key"
                )
        if m.enc_public in seen or m.mask_public in seen or m.enc_public == m.mask_public:
            raise SecAggProtocolError(f"client {u}'s public keys repeat another key")

    def check_shares(self, m: ShareKeys) -> None:
        """Stage 2 (after :meth:`collect_keys`): one ciphertext per neighbour that advertised."""
        u = m.client_id
        expected = {v for v in self.graph.get(u, ()) if v in self._keys}
        if set(m.ciphertexts) != expected:
            raise SecAggProtocolError(
                f"client {u} sent shares for {sorted(m.ciphertexts)}, expected one for each "
                f"neighbour that advertised keys: {sorted(expected)}"
            )
        for v, c in m.ciphertexts.items():
            if len(c) != SHARES_CIPHERTEXT_BYTES:
                raise SecAggProtocolError(
                    f"client {u}'s ciphertext for client {v} is {len(c)} bytes, expected "
                    f"{SHARES_CIPHERTEXT_BYTES}"
                )

    def check_masked(self, m: MaskedInput) -> None:
        """Stage 3: a uint64 vector of the agreed length with every value below 2^b."""
        u, y, length = m.client_id, m.masked, self.config.vector_length
        if not isinstance(y, np.ndarray) or y.dtype != np.uint64 or y.shape != (length,):
            raise SecAggProtocolError(
                f"client {u}'s masked input is not a uint64 vector of length {length}"
            )
        if self.bits < 64 and int(y.max(initial=0)) >> self.bits:
            raise SecAggProtocolError(f"client {u}'s masked input has values >= 2^{self.bits}")

    def check_unmask(self, m: UnmaskResponse) -> None:
        """Stage 4 (after :meth:`collect_masked`): self-mask shares only of surviving
        neighbours, mask-key shares only of neighbours that dropped after sharing keys."""
        u = m.client_id
        allowed = {u, *self.graph.get(u, ())}
        for v in m.self_mask_shares:
            if v not in self._u3 or v not in allowed:
                raise SecAggProtocolError(
                    f"client {u} sent a self-mask share of client {v}, which is not a "
                    "surviving neighbour"
                )
        for v in m.key_shares:
            if v not in self._u2 - self._u3 or v not in allowed:
                raise SecAggProtocolError(
                    f"client {u} sent a mask-key share of client {v}, which did not drop "
                    "after sharing keys or is not its neighbour"
                )
        for share in (*m.self_mask_shares.values(), *m.key_shares.values()):
            if not 0 <= share < PRIME:
                raise SecAggProtocolError(f"client {u} sent a share outside the field")

    # stage 0 -------------------------------------------------------------------------------
    def setup(self) -> dict[int, Setup]:
        """Stage 0: every client's parameters and neighbours."""
        self._advance(0)
        c = self.config
        return {
            u: Setup(
                u,
                c.round_id,
                c.vector_length,
                c.clip_range,
                c.quant_range,
                self.bits,
                self.threshold,
                self.graph[u],
            )
            for u in self.client_ids
        }

    # stage 1 -------------------------------------------------------------------------------
    def collect_keys(self, messages: Iterable[AdvertiseKeys]) -> dict[int, PublicKeys]:
        """Stage 1: the public keys that arrived; each advertiser gets its neighbours' keys."""
        self._advance(1)
        got = self._unique(messages, set(self.client_ids), "public keys")
        seen: set[bytes] = set()
        for u, m in got.items():
            assert isinstance(m, AdvertiseKeys)
            self.check_keys(m, seen)
            seen.update((m.enc_public, m.mask_public))
            self._keys[u] = (m.enc_public, m.mask_public)
        u1 = set(self._keys)
        self._check_neighbourhoods(1, u1, u1)
        return {u: PublicKeys(u, {v: self._keys[v] for v in self.graph[u] if v in u1}) for u in u1}

    # stage 2 -------------------------------------------------------------------------------
    def collect_shares(self, messages: Iterable[ShareKeys]) -> dict[int, ForwardedShares]:
        """Stage 2: route each ciphertext to its recipient (the server cannot read them)."""
        self._advance(2)
        got = self._unique(messages, set(self._keys), "encrypted shares")
        for m in got.values():
            assert isinstance(m, ShareKeys)
            self.check_shares(m)
        self._u2 = set(got)
        self._check_neighbourhoods(2, self._u2, self._u2)
        out = {}
        for u in self._u2:
            inbox = {}
            for v in self.graph[u]:
                if v in self._u2:
                    inbox[v] = got[v].ciphertexts[u]  # type: ignore[attr-defined]
            out[u] = ForwardedShares(u, inbox)
        return out

    # stage 3 -------------------------------------------------------------------------------
    def collect_masked(self, messages: Iterable[MaskedInput]) -> dict[int, UnmaskRequest]:
        """Stage 3: add up the masked inputs mod 2^b; ask survivors for shares."""
        self._advance(3)
        got = self._unique(messages, self._u2, "a masked input")
        for m in got.values():
            assert isinstance(m, MaskedInput)
            self.check_masked(m)
            self._sum += m.masked  # wraps mod 2^64, so also mod 2^b
        self._u3 = set(got)
        self._check_neighbourhoods(3, self._u3, self._u3)
        for v in sorted(self._u2 - self._u3):  # a dropped client's mask key must be recoverable too
            count = sum(w in self._u3 for w in self.graph[v])
            if 0 < count < self.threshold:
                raise SecAggAborted(
                    3,
                    count,
                    self.threshold,
                    client=v,
                    why="its pairwise masks could not be removed",
                )
        return {
            u: UnmaskRequest(u, tuple(sorted(v for v in (u, *self.graph[u]) if v in self._u3)))
            for u in self._u3
        }

    # stage 4 -------------------------------------------------------------------------------
    def _secret(self, shares: dict[int, int], owner: int, what: str) -> bytes:
        """The 32-byte secret of ``owner`` from its Shamir shares. Honest shares reconstruct a
        value below 2^256; anything larger means a client sent a tampered share, and the round
        aborts (nothing is revealed) instead of failing on the conversion."""
        value = reconstruct(shares, self.threshold)
        if value >> (8 * crypto.KEY_BYTES):
            raise SecAggAborted(
                4,
                len(shares),
                self.threshold,
                client=owner,
                why=f"the shares of its {what} are inconsistent (a tampered share, from one of "
                f"clients {sorted(x - 1 for x in shares)})",
            )
        return value.to_bytes(crypto.KEY_BYTES, "big")

    def collect_unmask(self, messages: Iterable[UnmaskResponse]) -> SecAggResult:
        """Stage 4: rebuild the secrets, strip the masks, de-quantise the sum."""
        self._advance(4)
        got = self._unique(messages, self._u3, "unmask shares")
        dropped_after_sharing = self._u2 - self._u3
        for u, m in got.items():
            assert isinstance(m, UnmaskResponse)
            self.check_unmask(m)
            x = u + 1
            for v, share in m.self_mask_shares.items():
                self._store(self._b_shares, self._sk_shares, v, x, share)
            for v, share in m.key_shares.items():
                self._store(self._sk_shares, self._b_shares, v, x, share)
        u4 = set(got)
        if len(u4) < self.threshold:
            raise SecAggAborted(4, len(u4), self.threshold)
        bits, length = self.bits, self.config.vector_length
        total = self._sum.copy()
        for u in sorted(self._u3):
            shares = self._b_shares.get(u, {})
            if len(shares) < self.threshold:
                raise SecAggAborted(
                    4,
                    len(shares),
                    self.threshold,
                    client=u,
                    why="too few shares to remove its self mask",
                )
            seed = self._secret(shares, u, "self-mask seed")
            total -= crypto.expand_mask(seed, length, bits)
        for v in sorted(dropped_after_sharing):
            partners = [u for u in self.graph[v] if u in self._u3]
            if not partners:
                continue  # nobody who is in the sum masked with v
            shares = self._sk_shares.get(v, {})
            if len(shares) < self.threshold:
                raise SecAggAborted(
                    4,
                    len(shares),
                    self.threshold,
                    client=v,
                    why="too few shares to remove its pairwise masks",
                )
            raw = self._secret(shares, v, "mask key")
            key = crypto.private_key_from_bytes(raw)
            for u in partners:
                seed = crypto.agree(key, self._keys[u][1], MASK, self.config.round_id)
                prg = crypto.expand_mask(seed, length, bits)
                if u < v:  # u added +PRG(s_uv); take it out
                    total -= prg
                else:
                    total += prg
        if bits < 64:
            total &= np.uint64((1 << bits) - 1)
        c = self.config
        return SecAggResult(
            total=dequantize(total, c.clip_range, c.quant_range, bits),
            sum_q=to_signed(total, bits),
            included=tuple(sorted(self._u3)),
            dropped=tuple(sorted(set(self.client_ids) - self._u3)),
        )

    @staticmethod
    def _store(
        into: dict[int, dict[int, int]],
        other: dict[int, dict[int, int]],
        v: int,
        x: int,
        share: int,
    ) -> None:
        # The invariant that makes SecAgg secure under dropouts: one kind of share per client
        # (checked with an if, not an assert, so that python -O keeps it).
        if v in other:
            raise SecAggProtocolError(f"server would hold both kinds of share for client {v}")
        into.setdefault(v, {})[x] = share
