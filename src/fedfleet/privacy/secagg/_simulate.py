"""Secure aggregation in one process: the client and server state machines wired together by an
in-memory transport, with scripted dropouts, counting bytes and time per party.

A dropout at stage s (1-4) means the client sends nothing from stage s on: at 1 it never
advertises keys, at 2 it advertised keys but sends no shares, at 3 it shared keys but sends no
masked input, at 4 its masked input is in the sum but it sends no shares for unmasking.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

import fedfleet._streams as _streams
from fedfleet._extras import require
from fedfleet.errors import ConfigError
from fedfleet.privacy.secagg._config import SecAggConfig

if TYPE_CHECKING:  # they need cryptography, imported by run_secagg when a protocol runs
    from fedfleet.privacy.secagg._server import SecAggResult, SecAggServer

__all__ = ["SecAggRun", "draw_dropouts", "run_secagg", "secure_sum"]


@dataclass
class SecAggRun:
    """A simulated aggregation: its result and what it cost.

    Attributes:
        result: the server's output.
        server: the server state machine at the end (its ``shares_held()``, graph, threshold).
        sent_bytes: per client, the bytes of every message it sent.
        received_bytes: per client, the bytes of every message the server sent it.
        client_time_s: per client, CPU seconds in its state machine (all stages; thread time,
            so a busy machine does not inflate it).
        server_time_s: CPU seconds in the server's state machine.
        server_view: every message the server received, in arrival order (with ``keep_view``).
    """

    result: SecAggResult
    server: SecAggServer
    sent_bytes: dict[int, int]
    received_bytes: dict[int, int]
    client_time_s: dict[int, float]
    server_time_s: float
    server_view: list[object] = field(default_factory=list)


def draw_dropouts(
    client_ids: Sequence[int], rates: Mapping[int, float], rng: np.random.Generator
) -> dict[int, set[int]]:
    """For each stage s in ``rates``, round(rates[s] * n) clients drawn uniformly among those
    still alive drop at stage s (stages in increasing order)."""
    alive = list(client_ids)
    out: dict[int, set[int]] = {}
    for stage in sorted(rates):
        if stage not in (1, 2, 3, 4):
            raise ConfigError(f"dropout stage must be 1, 2, 3 or 4, got {stage}")
        k = min(len(alive), round(rates[stage] * len(client_ids)))
        chosen = set(int(c) for c in rng.choice(alive, size=k, replace=False)) if k else set()
        out[stage] = chosen
        alive = [c for c in alive if c not in chosen]
    return out


def run_secagg(
    updates: Sequence[np.ndarray],
    config: SecAggConfig,
    *,
    rng: np.random.Generator,
    client_ids: Sequence[int] | None = None,
    dropouts: Mapping[int, Collection[int]] | None = None,
    entropy_seed: int | None = None,
    keep_view: bool = False,
) -> SecAggRun:
    """Run the whole protocol for ``updates[i]`` held by ``client_ids[i]`` (default ``i``).

    ``rng`` draws the server's neighbour graph. Client secrets come from the OS CSPRNG unless
    ``entropy_seed`` is given (client c then uses ``SeedSequence(entropy_seed, spawn_key=(c,))``:
    reproducible, and only for simulation). Raises :class:`SecAggAborted` when too few clients
    are left at some stage.
    """
    require("cryptography", extra="privacy", feature="secure aggregation (SecAgg)")
    from fedfleet.privacy.secagg._client import SecAggClient
    from fedfleet.privacy.secagg._server import SecAggServer

    ids = list(range(len(updates))) if client_ids is None else [int(c) for c in client_ids]
    if len(ids) != len(updates):
        raise ConfigError(f"{len(updates)} updates but {len(ids)} client ids")
    drop = (
        {s: set(int(c) for c in dropouts.get(s, ())) for s in (1, 2, 3, 4)}
        if dropouts
        else {s: set() for s in (1, 2, 3, 4)}
    )
    inputs = dict(zip(ids, updates, strict=True))
    sent = dict.fromkeys(ids, 0)
    received = dict.fromkeys(ids, 0)
    ctime = dict.fromkeys(ids, 0.0)
    stime = 0.0
    view: list[object] = []

    def source(c: int):
        if entropy_seed is None:
            return None
        gen = _streams.generator(entropy_seed, _streams.secagg_client_entropy(c))
        return gen.bytes

    def server_step(fn, messages):
        nonlocal stime
        if keep_view:
            view.extend(messages)
        t0 = time.thread_time()
        out = fn(messages)
        stime += time.thread_time() - t0
        return out

    t0 = time.thread_time()
    server = SecAggServer(config, ids, rng)
    setups = server.setup()
    stime += time.thread_time() - t0
    clients = {c: SecAggClient(c, source(c)) for c in ids}

    def round_trip(stage: int, inbox: Mapping[int, object], act) -> list:
        """Deliver the server's messages; the clients not dropping at ``stage`` answer."""
        replies = []
        for c, message in inbox.items():
            received[c] += message.nbytes()  # type: ignore[attr-defined]
            if c in drop[stage]:
                continue
            t = time.thread_time()
            reply = act(clients[c], message)
            ctime[c] += time.thread_time() - t
            sent[c] += reply.nbytes()
            replies.append(reply)
        return replies

    keys = round_trip(1, setups, lambda cl, m: cl.advertise_keys(m))
    public = server_step(server.collect_keys, keys)
    shares = round_trip(2, public, lambda cl, m: cl.share_keys(m))
    forwarded = server_step(server.collect_shares, shares)
    masked = round_trip(3, forwarded, lambda cl, m: cl.masked_input(m, inputs[cl.client_id]))
    requests = server_step(server.collect_masked, masked)
    responses = round_trip(4, requests, lambda cl, m: cl.unmask(m))
    result = server_step(server.collect_unmask, responses)
    return SecAggRun(result, server, sent, received, ctime, stime, view)


def secure_sum(
    updates: Sequence[np.ndarray],
    *,
    clip_range: float,
    quant_range: int = 2**20,
    neighbours: int | str | None = None,
    threshold: int | float | None = None,
    dropouts: Mapping[int, Collection[int]] | None = None,
    drop_rates: Mapping[int, float] | None = None,
    rng: np.random.Generator,
    round_id: int = 0,
) -> np.ndarray:
    """The sum of the surviving clients' (clipped, quantised) updates, computed by running
    SecAgg+ (or SecAgg with ``neighbours="complete"``) in simulation; float64.

    ``dropouts`` maps a stage (1-4) to the positions in ``updates`` that drop there;
    ``drop_rates`` draws them instead (see :func:`draw_dropouts`). The sum covers the clients
    that sent a masked input (everyone but the stage 1-3 dropouts); use :func:`run_secagg` to
    learn which they were and what the protocol cost.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> xs = [rng.normal(size=1000) for _ in range(50)]
        >>> total = secure_sum(xs, clip_range=5.0, drop_rates={3: 0.1}, rng=rng)
    """
    if not updates:
        raise ConfigError("secure_sum needs at least one update")
    config = SecAggConfig(
        vector_length=int(np.asarray(updates[0]).size),
        clip_range=clip_range,
        quant_range=quant_range,
        neighbours=neighbours,
        threshold=threshold,
        round_id=round_id,
    )
    ids = list(range(len(updates)))
    if drop_rates is not None:
        if dropouts is not None:
            raise ConfigError("give dropouts or drop_rates, not both")
        dropouts = draw_dropouts(ids, drop_rates, rng)
    return run_secagg(updates, config, rng=rng, dropouts=dropouts).result.total
