"""What the server fixes before a secure aggregation starts: the parameters and the neighbour graph.

SecAgg (Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving Machine
Learning") masks every pair of clients and secret-shares each client's keys among all n; its cost
grows as n^2. SecAgg+ (Bell et al. 2020, "Secure Single-Server Aggregation with (Poly)Logarithmic
Overhead") does both only along a sparse random graph of degree k = O(log n), with a threshold t
counted within each client's neighbourhood (the client and its k neighbours). The complete graph
(k = n - 1) is plain SecAgg, so one implementation serves both.

The graph here is a randomly relabelled Harary graph H(k, n): clients sit on a ring in a random
order and each is joined to the k/2 nearest on either side. It is exactly k-regular (k even) and
k-connected, so it stays connected after any k - 1 dropouts, while which clients are neighbours is
random. (Bell et al. analyse an Erdos-Renyi graph; the Harary construction, also Flower's, trades
that analysis for exact degrees and connectivity.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedfleet.errors import ConfigError
from fedfleet.privacy.secagg._quantize import modulus_bits

__all__ = ["SecAggConfig", "harary_graph", "secagg_plus_degree"]


def secagg_plus_degree(n: int) -> int:
    """Default SecAgg+ degree: the even number 2 * ceil(1.5 * log2 n), at most n - 1
    (30 for 1,000 clients, 20 for 100; the complete graph below about 12 clients)."""
    if n <= 1:
        return 0
    return min(n - 1, 2 * math.ceil(1.5 * math.log2(n)))


def harary_graph(
    client_ids: Sequence[int], degree: int, rng: np.random.Generator
) -> dict[int, tuple[int, ...]]:
    """Each client's neighbours (sorted, itself excluded) in a randomly relabelled Harary graph
    of the given degree; ``degree >= n - 1`` gives the complete graph, an odd degree below that
    is rounded up to the next even one."""
    ids = [int(c) for c in client_ids]
    n = len(ids)
    if degree >= n - 1:
        return {c: tuple(sorted(x for x in ids if x != c)) for c in ids}
    half = (degree + 1) // 2
    order = [ids[i] for i in rng.permutation(n)]
    graph: dict[int, set[int]] = {c: set() for c in ids}
    for pos, c in enumerate(order):
        for step in range(1, half + 1):
            other = order[(pos + step) % n]
            graph[c].add(other)
            graph[other].add(c)
    return {c: tuple(sorted(v)) for c, v in graph.items()}


@dataclass(frozen=True, kw_only=True)
class SecAggConfig:
    """Parameters of one secure aggregation.

    Attributes:
        vector_length: L, the length of every client's update.
        clip_range: c; each coordinate is clipped to [-c, c] before quantisation (an update
            clipped to L2 norm S needs c = S to be left untouched).
        quant_range: R; [-c, c] maps onto the integers [-R, R], so the quantisation error is at
            most c / (2R) per coordinate and client.
        neighbours: k, each client's number of neighbours (SecAgg+); None: the default
            :func:`secagg_plus_degree`; ``"complete"``: every other client (plain SecAgg).
        threshold: t, shares needed to recover a client's secret, counted in its neighbourhood
            of k + 1; an int, a fraction of k + 1 in (0, 1), or None for a strict majority
            floor((k + 1) / 2) + 1. Colluding with fewer than t of a client's neighbourhood, the
            server learns nothing of that client's secrets; each neighbourhood needs t survivors
            at every stage or the aggregation aborts.
        modulus_bits: b, masks and sums live in Z_{2^b}; None: the fewest bits with
            2^b > 2 n R, so the cohort's sum cannot overflow (see ``quantize``); at most 64.
        round_id: bound into every derived key, so keys and masks never repeat across rounds.
    """

    vector_length: int
    clip_range: float
    quant_range: int = 2**20
    neighbours: int | str | None = None
    threshold: int | float | None = None
    modulus_bits: int | None = None
    round_id: int = 0

    def __post_init__(self) -> None:
        if self.vector_length < 1:
            raise ConfigError(f"vector_length must be >= 1, got {self.vector_length}")
        if not self.clip_range > 0:
            raise ConfigError(f"clip_range must be > 0, got {self.clip_range}")
        if self.quant_range < 1:
            raise ConfigError(f"quant_range must be >= 1, got {self.quant_range}")
        if not (self.neighbours is None or self.neighbours == "complete"):
            if not isinstance(self.neighbours, int) or self.neighbours < 1:
                raise ConfigError(
                    "neighbours must be a positive int, 'complete' or None, got "
                    f"{self.neighbours!r}"
                )

    def degree(self, n: int) -> int:
        """k for a cohort of n (rounded up to even below n - 1, as the graph does)."""
        if self.neighbours == "complete":
            return n - 1
        k = secagg_plus_degree(n) if self.neighbours is None else int(self.neighbours)
        if k >= n - 1:
            return n - 1
        return k + (k % 2)

    def resolved_threshold(self, n: int) -> int:
        """t for a cohort of n; ConfigError if it is not in 2..k+1 (1 share would be the
        secret itself)."""
        size = self.degree(n) + 1
        t = self.threshold
        if t is None:
            value = size // 2 + 1
        elif isinstance(t, float) and 0 < t < 1:
            value = math.ceil(t * size)
        else:
            value = int(t)
        if not 2 <= value <= size:
            raise ConfigError(
                f"threshold {t!r} gives t = {value}, but t must be in 2..{size} (a neighbourhood "
                f"is {size} clients with {n} in the cohort); raise the threshold or the degree"
            )
        return min(value, size)

    def resolved_modulus_bits(self, n: int) -> int:
        """b for a cohort of n; ConfigError if the sum could overflow or b > 64."""
        need = modulus_bits(n, self.quant_range)
        b = need if self.modulus_bits is None else self.modulus_bits
        if b < need:
            raise ConfigError(
                f"modulus_bits {b} can overflow: {n} clients each in [-{self.quant_range}, "
                f"{self.quant_range}] need 2^b > {2 * n * self.quant_range}, i.e. b >= {need}"
            )
        if b > 64:
            raise ConfigError(
                f"modulus of 2^{b} does not fit uint64 ({n} clients, quant_range "
                f"{self.quant_range}); lower quant_range to at most {(2**63 - 1) // n}"
            )
        return b
