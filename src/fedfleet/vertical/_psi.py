"""Private set intersection: align the parties' records without revealing the others.

ECDH PSI (Meadows 1986; Huberman, Franklin & Hogg 1999; FATE's ``ecdh`` intersection) on
Curve25519 with the ``cryptography`` package's X25519:

1. Every id is hashed to a curve u-coordinate, ``H(x) = SHA-256("fedfleet-psi" || x)``.
2. Party A blinds its hashes with its secret scalar a: ``a H(x)`` (X25519's ``exchange`` with
   ``H(x)`` as the peer's public key *is* the scalar multiplication), shuffles them and sends
   them to B; B does the same with b.
3. Each re-blinds the other's points: ``b (a H(x)) = a (b H(y))`` iff ``H(x) = H(y)``, because
   scalar multiplication commutes (X25519 clamps a and b to multiples of 8 and computes the
   u-coordinate of ``[a] P`` from the u-coordinate of P alone, so ``u([a][b]P) = u([b][a]P)``).

Why this is sound with X25519: a 32-byte hash is a u-coordinate of a point either on
Curve25519 or on its quadratic twist; X25519 is *twist-secure* (Bernstein 2006: both the curve
and the twist have a prime-order subgroup of ~2^252, cofactors 8 and 4), and the clamped
scalar (a multiple of 8) sends either to its prime-order subgroup, where the Decisional
Diffie-Hellman assumption makes ``a H(x)`` look random to anyone without a. Commutation holds on
the twist too (the ladder is the same x-only formula). A hash landing on one of the few
low-order points (probability ~2^-250) makes ``exchange`` raise, which is reported. Hashes
colliding (~2^-128) would merge two ids.

The multi-party protocol (guest plus hosts, the guest at the hub): the guest runs the two-party
exchange above with each host (with a fresh scalar per host), learns which of its ids each host
holds, intersects those sets, shuffles the intersection into a random order, and sends each host
the *positions* of the matching records in the list that host sent (which the host shuffled
itself, so it knows which of its ids each position is). Every party ends with its own ids of
the intersection, in one common order.

Threat model: semi-honest parties (they follow the protocol and try to learn from what they
see); channels authenticated and encrypted (the deployment's mutual TLS). What leaks:

- each party learns the other's set *size*;
- the guest learns which of its ids each host holds (the pairwise intersections, which with 3+
  parties can be larger than the final intersection);
- each host learns which of its ids are in the final intersection, and nothing about the
  guest's other ids or the other hosts' ids;
- no id, hash or single-blinded point of one party is ever usable by another without that
  party's scalar; the shuffles make the positions of the points sent carry no information about
  the order of the rows.

A malicious party could, for example, send points not derived from ids, or a made-up answer;
this protocol does not defend against that.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from fedfleet._extras import require
from fedfleet.vertical._channel import Channel, Message, PartyError
from fedfleet.vertical._party import PartyData

__all__ = ["Psi", "psi_hash"]

_DOMAIN = b"fedfleet-psi\x00"


def psi_hash(record_id: str) -> bytes:
    """The 32-byte u-coordinate an id maps to (SHA-256 with a domain prefix)."""
    return hashlib.sha256(_DOMAIN + str(record_id).encode("utf-8")).digest()


@dataclass(frozen=True, kw_only=True)
class Psi:
    """ECDH private set intersection between a guest and one or more hosts.

    Each party's program returns its own ids of the intersection (a 1-D array of strings), in
    the order every party shares; :func:`fedfleet.vertical.align` then gives its rows.

    Attributes:
        guest: the party at the hub (it learns the pairwise intersections).
        seed: None (a deployment): secret scalars and shuffles from the OS's randomness. An
            int (a simulation): both derived from it and the party's name, so the same seed
            gives the same order (the scalars are then only as secret as the seed).

    Example::

        parties = {p.name: p for p in (guest_data, host_data)}
        net = LocalNetwork(list(parties))
        ids = run_parties(net, Psi(seed=1).programs(parties))
        aligned = align([guest_data, host_data], ids["guest"])
    """

    guest: str = "guest"
    seed: int | None = None

    def programs(self, parties: Mapping[str, PartyData]) -> dict[str, Callable[[Channel], Any]]:
        if self.guest not in parties:
            raise PartyError(f"PSI needs the guest {self.guest!r}; parties are {list(parties)}")
        hosts = [p for p in parties if p != self.guest]
        if not hosts:
            raise PartyError("PSI needs at least one host besides the guest")
        out: dict[str, Callable[[Channel], Any]] = {
            self.guest: partial(self._guest, data=parties[self.guest], hosts=hosts)
        }
        for h in hosts:
            out[h] = partial(self._host, data=parties[h])
        return out

    def program(self, data: PartyData, roster: Sequence[str]) -> Callable[[Channel], Any]:
        """The program of the one party holding ``data`` (deployed: it knows its own table and
        the roster of the parties taking part in the intersection, nothing else)."""
        if self.guest not in roster or data.name not in roster:
            raise PartyError(
                f"PSI: party {data.name!r} and the guest {self.guest!r} must both be in the "
                f"roster {list(roster)}"
            )
        hosts = [p for p in roster if p != self.guest]
        if not hosts:
            raise PartyError("PSI needs at least one host besides the guest")
        if data.name == self.guest:
            return partial(self._guest, data=data, hosts=hosts)
        return partial(self._host, data=data)

    def _rng(self, party: str) -> np.random.Generator:
        if self.seed is None:
            return np.random.default_rng()
        tag = int.from_bytes(hashlib.sha256(party.encode()).digest()[:8], "little")
        return np.random.default_rng([self.seed, tag])

    def _scalar(self, rng: np.random.Generator) -> Any:
        require("cryptography", feature="private set intersection")
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        raw = os.urandom(32) if self.seed is None else rng.bytes(32)
        return X25519PrivateKey.from_private_bytes(raw)

    def _guest(self, ch: Channel, data: PartyData, hosts: Sequence[str]) -> np.ndarray:
        rng = self._rng(ch.party)
        ids = data.ids.tolist()
        hashes = [psi_hash(i) for i in ids]
        held = np.ones(len(ids), dtype=bool)
        position: dict[str, dict[int, int]] = {}  # host -> {guest row: row in the host's list}
        for h in hosts:
            key = self._scalar(rng)
            order = rng.permutation(len(ids))
            mine = _blind(key, [hashes[i] for i in order], ch.party)
            ch.send(h, Message("psi-guest-points", {}, [mine], ["guest's blinded ids"]))
            theirs = ch.recv(h, "psi-host-points").arrays[0]
            back = ch.recv(h, "psi-guest-reblinded").arrays[0]
            if len(back) != len(ids):
                raise PartyError(f"{h} re-blinded {len(back)} of the guest's {len(ids)} points")
            # the host's points blinded by us too, double-blinded -> their row in the host's list
            doubled = {p: j for j, p in enumerate(_rows(_blind(key, _rows(theirs), h)))}
            position[h] = {
                int(order[k]): doubled[p] for k, p in enumerate(_rows(back)) if p in doubled
            }
            matched = np.zeros(len(ids), dtype=bool)
            matched[list(position[h])] = True
            held &= matched
        shared = rng.permutation(np.flatnonzero(held))
        for h in hosts:
            rows = np.array([position[h][int(i)] for i in shared], dtype=np.int64)
            ch.send(h, Message("psi-order", {}, [rows], ["positions of the intersection"]))
        return data.ids[shared]

    def _host(self, ch: Channel, data: PartyData) -> np.ndarray:
        rng = self._rng(ch.party)
        key = self._scalar(rng)
        ids = data.ids.tolist()
        order = rng.permutation(len(ids))
        mine = _blind(key, [psi_hash(ids[i]) for i in order], ch.party)
        theirs = ch.recv(self.guest, "psi-guest-points").arrays[0]
        ch.send(self.guest, Message("psi-host-points", {}, [mine], [f"{ch.party}'s blinded ids"]))
        back = _blind(key, _rows(theirs), ch.party)
        ch.send(self.guest, Message("psi-guest-reblinded", {}, [back], ["guest's ids, re-blinded"]))
        positions = ch.recv(self.guest, "psi-order").arrays[0]
        if positions.ndim != 1 or not np.isin(positions, np.arange(len(ids))).all():
            raise PartyError(f"{ch.party} got intersection positions out of range 0..{len(ids)}")
        return data.ids[order[positions.astype(np.int64)]]


def _rows(points: np.ndarray) -> list[bytes]:
    if points.dtype != np.uint8 or points.ndim != 2 or (len(points) and points.shape[1] != 32):
        raise PartyError(f"expected (n, 32) uint8 curve points, got {points.dtype} {points.shape}")
    return [row.tobytes() for row in points]


def _blind(key: Any, points: Sequence[bytes], whose: str) -> np.ndarray:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    out = np.empty((len(points), 32), dtype=np.uint8)
    for k, p in enumerate(points):
        try:
            out[k] = np.frombuffer(key.exchange(X25519PublicKey.from_public_bytes(p)), np.uint8)
        except ValueError as err:  # a low-order point: all-zero shared secret
            raise PartyError(f"PSI: point {k} of {whose}'s list is of low order ({err})") from None
    return out
