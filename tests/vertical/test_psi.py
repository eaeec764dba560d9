"""ECDH private set intersection: exactly the shared ids, one order everywhere, nothing else
revealed."""

from __future__ import annotations

import numpy as np
import pytest

from fedfleet.vertical import (
    LocalNetwork,
    PartyData,
    PartyError,
    Psi,
    align,
    psi_hash,
    run_parties,
    split_columns,
)
from fedfleet.vertical._alignment import own_records, psi_align


def _party(name: str, ids: list[str], labels: bool = False) -> PartyData:
    rng = np.random.default_rng(len(ids))
    order = rng.permutation(len(ids))  # rows in no particular order
    arr = np.array(ids)[order]
    x = np.arange(len(ids), dtype=np.float64)[:, None] + 1000 * len(name)
    return PartyData(name, arr, x, np.zeros(len(ids)) if labels else None)


def _run(parties: list[PartyData], seed: int | None = 7) -> tuple[dict, LocalNetwork]:
    by_name = {p.name: p for p in parties}
    net = LocalNetwork(list(by_name), timeout_s=300)
    return run_parties(net, Psi(seed=seed).programs(by_name)), net


def test_two_parties_get_exactly_the_intersection_in_one_order() -> None:
    guest = _party("guest", [f"cust-{i}" for i in range(0, 60)], labels=True)
    host = _party("host-0", [f"cust-{i}" for i in range(35, 120)] + ["only-host"])
    out, _ = _run([guest, host])
    expected = {f"cust-{i}" for i in range(35, 60)}
    assert set(out["guest"].tolist()) == expected
    assert len(out["guest"]) == len(expected)
    np.testing.assert_array_equal(out["guest"], out["host-0"])
    # the common order is shuffled, not either party's row order
    in_guest_order = [i for i in guest.ids.tolist() if i in expected]
    assert out["guest"].tolist() != in_guest_order
    # and align() gives each party its rows of the same people
    g, h = align([guest, host], out["guest"].tolist())
    np.testing.assert_array_equal(g.ids, h.ids)


def test_three_parties_with_partial_overlaps() -> None:
    guest = _party("guest", [f"p{i}" for i in range(0, 80)], labels=True)
    host0 = _party("host-0", [f"p{i}" for i in range(20, 100)])
    host1 = _party("host-1", [f"p{i}" for i in range(0, 70, 3)] + ["x", "y"])
    out, net = _run([guest, host0, host1])
    expected = {f"p{i}" for i in range(20, 70) if i % 3 == 0}
    assert set(out["guest"].tolist()) == expected and len(out["guest"]) == len(expected)
    np.testing.assert_array_equal(out["guest"], out["host-0"])
    np.testing.assert_array_equal(out["guest"], out["host-1"])
    # each host is told the final intersection only (positions in its own shuffled list)
    for h in ("host-0", "host-1"):
        (order,) = [d for d in net.received(h) if d.kind == "psi-order"]
        assert len(order.decoded().arrays[0]) == len(expected)


def test_same_seed_same_order_and_a_deployment_seed_still_agrees() -> None:
    guest = _party("guest", [f"a{i}" for i in range(40)], labels=True)
    host = _party("host-0", [f"a{i}" for i in range(10, 50)])
    first, _ = _run([guest, host], seed=3)
    again, _ = _run([guest, host], seed=3)
    other, _ = _run([guest, host], seed=4)
    np.testing.assert_array_equal(first["guest"], again["guest"])
    assert first["guest"].tolist() != other["guest"].tolist()
    assert set(other["guest"].tolist()) == set(first["guest"].tolist())
    fresh, _ = _run([guest, host], seed=None)  # OS randomness
    np.testing.assert_array_equal(fresh["guest"], fresh["host-0"])
    assert set(fresh["guest"].tolist()) == set(first["guest"].tolist())


def test_no_party_receives_ids_hashes_or_features() -> None:
    guest = _party("guest", [f"secret-{i}" for i in range(30)], labels=True)
    host0 = _party("host-0", [f"secret-{i}" for i in range(10, 40)])
    host1 = _party("host-1", [f"secret-{i}" for i in range(5, 25)])
    _, net = _run([guest, host0, host1])
    parties = (guest, host0, host1)
    ids = {i for p in parties for i in p.ids.tolist()}
    hashes = {psi_hash(i) for i in ids}
    for p in parties:
        received = net.received(p.name)
        assert received
        for d in received:
            for i in ids:
                assert i.encode() not in d.frame, (p.name, d.kind, i)
            for a in d.decoded().arrays:
                assert a.dtype in (np.uint8, np.int64)
                if a.dtype == np.uint8:  # curve points: blinded, never a bare hash
                    assert a.shape[1] == 32
                    assert not hashes & {row.tobytes() for row in a}
            for other in parties:
                if other is not p:
                    assert other.x.tobytes()[:64] not in d.frame


def test_a_protocol_without_a_host_or_guest_is_refused() -> None:
    guest = _party("guest", ["a"], labels=True)
    with pytest.raises(PartyError, match="at least one host"):
        Psi().programs({"guest": guest})
    with pytest.raises(PartyError, match="needs the guest 'boss'"):
        Psi(guest="boss").programs({"guest": guest})


def test_a_tasks_alignment_lines_up_the_same_people_and_sends_no_raw_id() -> None:
    # column 0 of the centralised table is the row number: after alignment every party's row
    # k must come from the same original row, whatever share and order each party held
    n = 90
    x = np.column_stack([np.arange(n, dtype=np.float64), np.arange(n) * 2.0, np.arange(n) * 3.0])
    y = np.arange(n) % 2
    tables = split_columns(x, y, [[0], [1], [2]])
    held = own_records(tables, overlap=0.8, seed=5)
    assert [len(t.ids) for t in held] == [72, 72, 72]
    assert held[0].ids.tolist() != held[1].ids.tolist()  # each its own people and order
    aligned, net = psi_align(held, seed=5)
    common = set.intersection(*(set(t.ids.tolist()) for t in held))
    assert len(aligned[0].ids) == len(common) > 0
    rows = [t.x[:, 0] / (k + 1) for k, t in enumerate(aligned)]
    np.testing.assert_array_equal(rows[0], rows[1])
    np.testing.assert_array_equal(rows[0], rows[2])
    np.testing.assert_array_equal(aligned[0].y, rows[0].astype(np.int64) % 2)
    for d in net.log:  # PSI's messages: no party's ids, in any form a receiver could read
        assert d.kind.startswith("psi-")
        for i in {i for t in held for i in t.ids.tolist()}:
            assert i.encode() not in d.frame, (d.sender, d.receiver, d.kind, i)
    # a deployment's PSI (OS randomness, another shuffled order) aligns the same rows
    again, _ = psi_align(held, seed=None)
    for a, b in zip(aligned, again, strict=True):
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.x, b.x)
