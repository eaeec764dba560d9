"""Record alignment before a vertical protocol: each party's own people, intersected by PSI.

In a real vertical federation no two parties hold the same rows in the same order: each holds
its own customers (patients, accounts), keyed by a record id, in its own order. Before any
protocol can train, the parties find the people they all hold without showing each other their
ids (:class:`~fedfleet.vertical.Psi`) and line their rows up on them.

- :func:`own_records`: a simulated federation's tables as the parties would hold them: each a
  seeded share ``overlap`` of the people, in its own shuffled order, keyed by string ids.
- :func:`psi_align` (simulation) and :func:`psi_align_party` (one deployed party, over the
  channel its protocol then uses): PSI, then every party's rows of the intersection.

The aligned rows are in the order of the sorted ids, not PSI's shuffled order: every party
holds the same ids after PSI, so each sorts them locally, with no message. The protocol's result
then does not depend on PSI's randomness, which a deployment must draw from the OS (a seeded PSI
is only as secret as its seed), so a deployed run ends bit-identical to its simulation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedfleet._streams import vertical_party_records, vertical_table_stream
from fedfleet.errors import ConfigError, DatasetError
from fedfleet.vertical._channel import Channel, LocalNetwork, run_parties
from fedfleet.vertical._party import PartyData
from fedfleet.vertical._psi import Psi

__all__ = ["own_records", "psi_align", "psi_align_party"]


def own_records(tables: Sequence[PartyData], *, overlap: float, seed: int) -> list[PartyData]:
    """Each party's own records: ``round(overlap * rows)`` people drawn for that party from
    ``seed`` and its position, in a shuffled order of its own, keyed by ``person-<row>`` ids
    (the tables given are one centralised table split by columns, rows in the same order)."""
    if not 0.0 < overlap <= 1.0:
        raise ConfigError(f"[vertical] overlap must be in (0, 1], got {overlap}")
    out = []
    for k, t in enumerate(tables):
        rows = len(t.ids)
        keep = round(overlap * rows)
        stream = vertical_table_stream(seed, vertical_party_records(k))
        take = np.random.default_rng(stream).permutation(rows)[:keep]
        ids = np.array([f"person-{i}" for i in take])
        y = None if t.y is None else np.asarray(t.y)[take]
        out.append(PartyData(t.name, ids, t.x[take], y, t.feature_names))
    return out


def _aligned(table: PartyData, ids: np.ndarray) -> PartyData:
    if len(ids) == 0:
        raise DatasetError(
            f"party {table.name}: PSI found no record all parties hold; nothing to train on"
        )
    return table.rows(sorted(ids.tolist()))


def psi_align(
    tables: Sequence[PartyData], *, seed: int | None = None, timeout_s: float = 600.0
) -> tuple[list[PartyData], LocalNetwork]:
    """PSI among ``tables`` (the first is the guest) on a :class:`LocalNetwork`; every party's
    rows of the intersection, in one order, and the network (its log: what each party saw)."""
    parties = {t.name: t for t in tables}
    network = LocalNetwork(list(parties), timeout_s=timeout_s)
    ids = run_parties(network, Psi(guest=tables[0].name, seed=seed).programs(parties))
    return [_aligned(t, ids[t.name]) for t in tables], network


def psi_align_party(
    channel: Channel, table: PartyData, roster: Sequence[str], *, seed: int | None = None
) -> PartyData:
    """One party's part of :func:`psi_align`, over ``channel``: its rows of the intersection of
    the parties in ``roster`` (the guest first)."""
    ids = Psi(guest=roster[0], seed=seed).program(table, roster)(channel)
    return _aligned(table, ids)
