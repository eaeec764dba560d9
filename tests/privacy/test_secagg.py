"""SecAgg / SecAgg+: exact sums under dropouts at every stage, clean aborts, what the server sees,
the neighbour graph, Shamir sharing, and the protocol's own checks."""

from __future__ import annotations

import dataclasses
import itertools
from collections import deque

import numpy as np
import pytest

from fedfleet.errors import ConfigError
from fedfleet.privacy import secagg
from fedfleet.privacy.secagg import (
    MaskedInput,
    SecAggAborted,
    SecAggClient,
    SecAggConfig,
    SecAggProtocolError,
    SecAggServer,
    UnmaskResponse,
    draw_dropouts,
    harary_graph,
    modulus_bits,
    quantize,
    reconstruct,
    run_secagg,
    secagg_plus_degree,
    secure_sum,
    share_secret,
    to_signed,
)
from fedfleet.privacy.secagg._shamir import PRIME

CLIP, R, L = 2.0, 2**20, 48


def _updates(rng: np.random.Generator, n: int, length: int = L) -> list[np.ndarray]:
    # some coordinates beyond the clip range, so clipping is exercised too
    return [rng.normal(0, 1.0, size=length).astype(np.float32) for _ in range(n)]


def _expected_sets(ids, drops):
    u1 = set(ids) - drops.get(1, set())
    u2 = u1 - drops.get(2, set())
    u3 = u2 - drops.get(3, set())
    u4 = u3 - drops.get(4, set())
    return u1, u2, u3, u4


def _genuine_abort(err: SecAggAborted, graph, t, drops, ids) -> bool:
    """Recount, independently of the server, that the abort was forced by the dropouts."""
    u1, u2, u3, u4 = _expected_sets(ids, drops)
    alive = {1: u1, 2: u2, 3: u3, 4: u4}[err.stage]
    if err.client is None:
        return len(alive) < t
    u = err.client
    return 0 < sum(v in alive for v in (u, *graph[u])) < t or (
        err.stage == 3 and sum(v in alive for v in graph[u]) < t
    )


# exact sums under dropouts ---------------------------------------------------------------------
CASES = [
    ("secagg", dict(neighbours="complete"), 24),
    ("secagg+", dict(neighbours=16, threshold=0.4), 40),
]


@pytest.mark.parametrize("stage", [1, 2, 3, 4])
@pytest.mark.parametrize("rate", [0.0, 0.1, 0.3])
@pytest.mark.parametrize(("name", "graph_kw", "n"), CASES, ids=[c[0] for c in CASES])
def test_exact_sum_under_dropouts(stage, rate, name, graph_kw, n):
    trials = 6
    rng = np.random.default_rng([stage, int(rate * 10), n])
    aborts = 0
    for trial in range(trials):
        xs = _updates(rng, n)
        config = SecAggConfig(
            vector_length=L, clip_range=CLIP, quant_range=R, round_id=trial, **graph_kw
        )
        drops = draw_dropouts(list(range(n)), {stage: rate}, rng)
        try:
            run = run_secagg(xs, config, rng=rng, dropouts=drops, entropy_seed=trial)
        except SecAggAborted as err:
            aborts += 1
            server = SecAggServer(config, range(n), np.random.default_rng(0))
            t = server.threshold
            assert name == "secagg+" and rate == 0.3, f"unexpected abort: {err}"
            assert err.survivors < t == err.threshold
            continue
        res, server = run.result, run.server
        _, _, u3, _ = _expected_sets(range(n), drops)
        assert set(res.included) == u3
        b = server.bits
        expected_q = sum(to_signed(quantize(xs[i], CLIP, R, b), b) for i in sorted(u3))
        assert np.array_equal(res.sum_q, expected_q)  # bit-exact integer sum
        assert np.array_equal(res.total, expected_q.astype(np.float64) * (CLIP / R))
        float_sum = np.sum([np.clip(xs[i].astype(np.float64), -CLIP, CLIP) for i in u3], axis=0)
        assert np.abs(res.total - float_sum).max() <= len(u3) * CLIP / (2 * R) + 1e-12
        kinds = server.shares_held()
        assert all(len(k) == 1 for k in kinds.values())
    assert aborts <= trials // 3


def test_dropouts_at_every_stage_at_once():
    rng = np.random.default_rng(11)
    n = 40
    for trial in range(5):
        xs = _updates(rng, n)
        drops = draw_dropouts(list(range(n)), {1: 0.1, 2: 0.1, 3: 0.1, 4: 0.1}, rng)
        config = SecAggConfig(
            vector_length=L, clip_range=CLIP, neighbours="complete", threshold=0.5, round_id=trial
        )
        run = run_secagg(xs, config, rng=rng, dropouts=drops)
        _, u2, u3, _ = _expected_sets(range(n), drops)
        b = run.server.bits
        assert np.array_equal(
            run.result.sum_q, sum(to_signed(quantize(xs[i], CLIP, R, b), b) for i in sorted(u3))
        )
        kinds = run.server.shares_held()
        assert {v for v, k in kinds.items() if k == {"self_mask"}} == u3
        assert {v for v, k in kinds.items() if k == {"mask_key"}} == u2 - u3


def test_secagg_plus_aborts_only_when_forced():
    """Random thin neighbourhoods: every run either gives the exact sum or aborts because some
    neighbourhood really had fewer than t survivors."""
    rng = np.random.default_rng(5)
    n, outcomes = 40, {"ok": 0, "abort": 0}
    for trial in range(16):
        xs = _updates(rng, n, 8)
        config = SecAggConfig(vector_length=8, clip_range=CLIP, neighbours=10, round_id=trial)
        drops = draw_dropouts(list(range(n)), {2: 0.1, 3: 0.1, 4: 0.1}, rng)
        graph_rng = np.random.default_rng(trial)
        try:
            run = run_secagg(xs, config, rng=graph_rng, dropouts=drops)
        except SecAggAborted as err:
            server = SecAggServer(config, range(n), np.random.default_rng(trial))
            assert _genuine_abort(err, server.graph, server.threshold, drops, range(n)), err
            outcomes["abort"] += 1
            continue
        _, _, u3, _ = _expected_sets(range(n), drops)
        b = run.server.bits
        assert np.array_equal(
            run.result.sum_q, sum(to_signed(quantize(xs[i], CLIP, R, b), b) for i in sorted(u3))
        )
        outcomes["ok"] += 1
    assert outcomes["ok"] >= 1 and outcomes["abort"] >= 1, outcomes


# aborts ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", [1, 2, 3, 4])
def test_named_abort_below_threshold(stage):
    n = 10
    rng = np.random.default_rng(stage)
    config = SecAggConfig(vector_length=4, clip_range=1.0, neighbours="complete")  # t = 6
    with pytest.raises(SecAggAborted) as info:
        run_secagg(_updates(rng, n, 4), config, rng=rng, dropouts={stage: set(range(5))})
    err = info.value
    assert (err.stage, err.survivors, err.threshold, err.client) == (stage, 5, 6, None)
    assert f"stage {stage} ({secagg.STAGE_NAMES[stage]})" in str(err)
    assert "5 clients left, threshold 6" in str(err)


def test_abort_names_the_client_whose_neighbourhood_emptied():
    n = 30
    config = SecAggConfig(vector_length=4, clip_range=1.0, neighbours=4)  # t = 3 of 5
    server = SecAggServer(config, range(n), np.random.default_rng(3))
    victim = 7
    with pytest.raises(SecAggAborted) as info:
        run_secagg(
            _updates(np.random.default_rng(0), n, 4),
            config,
            rng=np.random.default_rng(3),
            dropouts={2: set(server.graph[victim][:3])},
        )
    assert info.value.stage == 2 and info.value.client == victim
    assert info.value.survivors == 2 and info.value.threshold == 3


def test_too_few_clients_to_start():
    with pytest.raises(SecAggAborted, match="stage 0"):
        SecAggServer(SecAggConfig(vector_length=3, clip_range=1.0), [4], np.random.default_rng())


# the server's view -----------------------------------------------------------------------------
def test_server_sees_only_uniform_masked_inputs():
    n, length = 20, 4000
    rng = np.random.default_rng(2)
    xs = [np.zeros(length)] * (n // 2) + _updates(rng, n // 2, length)  # zeros: worst case
    config = SecAggConfig(vector_length=length, clip_range=CLIP, neighbours=6, quant_range=2**10)
    run = run_secagg(xs, config, rng=rng, dropouts={3: {0, 15}}, keep_view=True)
    b = run.server.bits
    masked = [m for m in run.server_view if isinstance(m, MaskedInput)]
    assert len(masked) == n - 2
    for m in masked:
        q = quantize(xs[m.client_id], CLIP, 2**10, b)
        assert np.mean(m.masked == q) < 0.01  # no coordinate left in the clear
        counts = np.bincount((m.masked >> np.uint64(b - 4)).astype(np.int64), minlength=16)
        expected = length / 16
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 50, chi2  # 15 degrees of freedom: p ~ 1e-5
    # identical (zero) inputs give unrelated masked vectors
    zeros = [m.masked for m in masked if m.client_id < n // 2]
    assert not any(np.array_equal(a, c) for a, c in itertools.combinations(zeros, 2))
    # the ciphertexts do not carry a share in the clear
    for m in run.server_view:
        if isinstance(m, secagg.ShareKeys):
            for v, ct in m.ciphertexts.items():
                assert ct[:16] != m.client_id.to_bytes(8, "big") + v.to_bytes(8, "big")


def test_server_never_holds_both_share_kinds():
    n = 16
    rng = np.random.default_rng(9)
    config = SecAggConfig(vector_length=4, clip_range=1.0, neighbours="complete")
    run = run_secagg(_updates(rng, n, 4), config, rng=rng, dropouts={3: {1, 2, 3}, 4: {4}})
    kinds = run.server.shares_held()
    assert {v for v, k in kinds.items() if k == {"mask_key"}} == {1, 2, 3}
    assert all(len(k) == 1 for k in kinds.values())


def _run_to_stage4(n=8, drop3=(0,)):
    rng = np.random.default_rng(1)
    config = SecAggConfig(vector_length=4, clip_range=1.0, neighbours="complete")
    server = SecAggServer(config, range(n), rng)
    clients = {c: SecAggClient(c) for c in range(n)}
    setups = server.setup()
    public = server.collect_keys([clients[c].advertise_keys(s) for c, s in setups.items()])
    fwd = server.collect_shares([clients[c].share_keys(m) for c, m in public.items()])
    xs = _updates(rng, n, 4)
    masked = [clients[c].masked_input(m, xs[c]) for c, m in fwd.items() if c not in drop3]
    requests = server.collect_masked(masked)
    return server, clients, requests


def test_server_refuses_a_share_that_would_reveal_both_secrets():
    server, clients, requests = _run_to_stage4()
    honest = clients[1].unmask(requests[1])
    assert set(honest.key_shares) == {0} and 0 not in honest.self_mask_shares
    # a response carrying the self-mask share of dropped client 0 is refused
    bad = UnmaskResponse(1, {**honest.self_mask_shares, 0: 123}, {})
    with pytest.raises(SecAggProtocolError, match="self-mask share of client 0"):
        server.collect_unmask([bad])


def test_server_refuses_mask_key_shares_of_survivors():
    server, clients, requests = _run_to_stage4()
    honest = clients[2].unmask(requests[2])
    bad = dataclasses.replace(honest, key_shares={**honest.key_shares, 3: 5})
    with pytest.raises(SecAggProtocolError, match="mask-key share of client 3"):
        server.collect_unmask([bad])


def test_client_answers_one_kind_per_neighbour():
    _, clients, requests = _run_to_stage4(drop3=(0, 5))
    response = clients[3].unmask(requests[3])
    assert not set(response.self_mask_shares) & set(response.key_shares)
    assert set(response.key_shares) == {0, 5}
    assert set(response.self_mask_shares) == {1, 2, 3, 4, 6, 7}


def test_tampered_shares_fail_authentication():
    rng = np.random.default_rng(4)
    n = 5
    config = SecAggConfig(vector_length=3, clip_range=1.0, neighbours="complete")
    server = SecAggServer(config, range(n), rng)
    clients = {c: SecAggClient(c) for c in range(n)}
    public = server.collect_keys([clients[c].advertise_keys(s) for c, s in server.setup().items()])
    fwd = server.collect_shares([clients[c].share_keys(m) for c, m in public.items()])
    ct = dict(fwd[0].ciphertexts)
    ct[1] = bytes([ct[1][0] ^ 1]) + ct[1][1:]
    tampered = dataclasses.replace(fwd[0], ciphertexts=ct)
    clients[0].masked_input(tampered, np.zeros(3))
    with pytest.raises(SecAggProtocolError, match="fail authentication"):
        clients[0].unmask(secagg.UnmaskRequest(0, tuple(range(n))))


def _through_masking(n: int = 4):
    config = SecAggConfig(
        vector_length=8, clip_range=1.0, quant_range=100, neighbours="complete", threshold=2
    )
    server = SecAggServer(config, range(n), np.random.default_rng(0))
    clients = {c: SecAggClient(c) for c in range(n)}
    public = server.collect_keys([clients[c].advertise_keys(s) for c, s in server.setup().items()])
    fwd = server.collect_shares([clients[c].share_keys(m) for c, m in public.items()])
    requests = server.collect_masked([clients[c].masked_input(fwd[c], np.zeros(8)) for c in fwd])
    return server, [clients[c].unmask(requests[c]) for c in requests]


def test_a_share_tampered_out_of_range_aborts_the_round_and_names_the_owner():
    server, responses = _through_masking()
    # a valid field element, so the per-message check passes; honest secrets are < 2^256
    bad = {**responses[0].self_mask_shares, 1: 2**400}
    responses[0] = dataclasses.replace(responses[0], self_mask_shares=bad)
    server.check_unmask(responses[0])
    with pytest.raises(SecAggAborted, match="self-mask seed are inconsistent") as info:
        server.collect_unmask(responses)
    assert info.value.stage == 4 and info.value.client == 1


def test_a_small_order_public_key_is_refused_and_cannot_break_key_agreement():
    config = SecAggConfig(vector_length=3, clip_range=1.0, neighbours="complete")
    server = SecAggServer(config, range(3), np.random.default_rng(0))
    clients = {c: SecAggClient(c) for c in range(3)}
    adverts = [clients[c].advertise_keys(s) for c, s in server.setup().items()]
    hostile = dataclasses.replace(adverts[0], mask_public=bytes(32))  # the zero point
    with pytest.raises(SecAggProtocolError, match="client 0's mask_public is a small-order"):
        server.check_keys(hostile)
    server.check_keys(adverts[0])  # the genuine key passes
    from fedfleet.privacy.secagg import _crypto as crypto

    with pytest.raises(SecAggProtocolError, match="small-order"):
        crypto.agree(crypto.X25519PrivateKey.generate(), bytes(32), b"pairwise-mask", 1)


def test_messages_out_of_order_are_refused():
    client = SecAggClient(0)
    with pytest.raises(SecAggProtocolError, match="protocol order"):
        client.share_keys(secagg.PublicKeys(0, {}))


# graph ---------------------------------------------------------------------------------------
def _connected(graph, removed=frozenset()):
    nodes = [u for u in graph if u not in removed]
    seen, todo = {nodes[0]}, deque([nodes[0]])
    while todo:
        for v in graph[todo.popleft()]:
            if v not in removed and v not in seen:
                seen.add(v)
                todo.append(v)
    return len(seen) == len(nodes)


@pytest.mark.parametrize("n", [12, 100, 1000])
def test_secagg_plus_graph_degree_and_connectivity(n):
    rng = np.random.default_rng(n)
    k = secagg_plus_degree(n)
    assert k % 2 == 0 or k == n - 1
    ids = list(rng.choice(10 * n, size=n, replace=False))
    graph = harary_graph(ids, k, rng)
    assert all(len(nb) == min(k, n - 1) for nb in graph.values())
    assert all(u in graph[v] for u in graph for v in graph[u])  # undirected
    assert all(u not in graph[u] for u in graph)
    assert _connected(graph)
    for _ in range(5):  # k-connected: survives any k - 1 removals; try random ones
        removed = frozenset(int(x) for x in rng.choice(ids, size=k - 1, replace=False))
        assert _connected(graph, removed)
    if n >= 100:
        assert k <= 3 * np.log2(n) + 2  # O(log n)
        other = harary_graph(ids, k, np.random.default_rng(n + 1))
        assert other != graph  # neighbours are random


def test_degree_defaults_and_complete_graph():
    assert secagg_plus_degree(1000) == 30 and secagg_plus_degree(100) == 20
    assert secagg_plus_degree(10) == 9
    graph = harary_graph(range(6), 10, np.random.default_rng(0))
    assert graph[0] == (1, 2, 3, 4, 5)
    assert SecAggConfig(vector_length=1, clip_range=1.0, neighbours=5).degree(50) == 6


# Shamir ----------------------------------------------------------------------------------------
def test_shamir_any_t_of_n_reconstruct_and_t_minus_1_do_not():
    rng = np.random.default_rng(0)
    for n, t in [(5, 3), (10, 10), (31, 16), (7, 2)]:
        secret = int.from_bytes(rng.bytes(32), "big")
        xs = [int(x) + 1 for x in rng.choice(1000, size=n, replace=False)]
        shares = share_secret(secret, xs, t)
        for _ in range(10):
            pick = rng.choice(xs, size=t, replace=False)
            assert reconstruct({int(x): shares[int(x)] for x in pick}, t) == secret
        fewer = {int(x): shares[int(x)] for x in rng.choice(xs, size=t - 1, replace=False)}
        with pytest.raises(ValueError, match=f"need {t} shares"):
            reconstruct(fewer, t)
        if t > 2:  # interpolating only t - 1 points gives an unrelated value
            assert reconstruct(fewer, t - 1) != secret


def test_shamir_rejects_bad_points_and_secrets():
    with pytest.raises(ValueError, match="distinct and nonzero"):
        share_secret(1, [0, 1, 2], 2)
    with pytest.raises(ValueError, match="distinct"):
        share_secret(1, [1, 1 + PRIME], 2)
    with pytest.raises(ValueError, match="threshold"):
        share_secret(1, [1, 2], 3)
    with pytest.raises(ValueError, match="secret"):
        share_secret(PRIME, [1, 2], 2)


# quantisation and configuration ----------------------------------------------------------------
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_modulus_holds_the_extreme_sum(sign):
    n, quant = 9, 1000
    xs = [np.full(3, sign * 5.0)] * n  # every client at the clip bound
    config = SecAggConfig(vector_length=3, clip_range=1.0, quant_range=quant, neighbours="complete")
    run = run_secagg(xs, config, rng=np.random.default_rng(0))
    assert run.server.bits == modulus_bits(n, quant) == 15  # 2^15 > 2 * 9 * 1000
    assert np.array_equal(run.result.sum_q, np.full(3, sign * n * quant, dtype=np.int64))


def test_config_errors_say_what_to_change():
    with pytest.raises(ConfigError, match="b >= 21"):
        SecAggConfig(
            vector_length=3, clip_range=1.0, quant_range=2**10, modulus_bits=16
        ).resolved_modulus_bits(1000)
    with pytest.raises(ConfigError, match="uint64"):
        SecAggConfig(vector_length=3, clip_range=1.0, quant_range=2**62).resolved_modulus_bits(4)
    with pytest.raises(ConfigError, match=r"t must be in 2\.\.7"):
        SecAggConfig(vector_length=3, clip_range=1.0, neighbours=6, threshold=9).resolved_threshold(
            50
        )
    with pytest.raises(ConfigError, match="clip_range"):
        SecAggConfig(vector_length=3, clip_range=0.0)


def test_secure_sum_helper():
    rng = np.random.default_rng(3)
    xs = _updates(rng, 30, 100)
    total = secure_sum(xs, clip_range=CLIP, rng=rng)
    assert np.abs(total - np.sum(np.clip(np.stack(xs), -CLIP, CLIP), axis=0)).max() < 30 * CLIP / R
    dropped = secure_sum(xs, clip_range=CLIP, dropouts={3: {0}}, rng=rng)
    assert np.allclose(dropped, total - np.clip(xs[0], -CLIP, CLIP), atol=1e-4)
    with pytest.raises(ConfigError, match="not both"):
        secure_sum(xs, clip_range=CLIP, dropouts={}, drop_rates={2: 0.1}, rng=rng)


def test_seeded_entropy_is_reproducible():
    xs = _updates(np.random.default_rng(0), 6, 5)
    config = SecAggConfig(vector_length=5, clip_range=CLIP)

    def masked(seed):
        run = run_secagg(
            xs, config, rng=np.random.default_rng(0), entropy_seed=seed, keep_view=True
        )
        return [m.masked for m in run.server_view if isinstance(m, MaskedInput)]

    assert all(np.array_equal(a, b) for a, b in zip(masked(1), masked(1), strict=True))
    assert not np.array_equal(masked(1)[0], masked(2)[0])


def test_any_client_ids_work():
    rng = np.random.default_rng(8)
    ids = [3, 977, 12, 40_000, 5, 61]
    xs = _updates(rng, len(ids), 7)
    config = SecAggConfig(vector_length=7, clip_range=CLIP, neighbours=2, threshold=2)
    run = run_secagg(xs, config, rng=rng, client_ids=ids, dropouts={3: {977}})
    assert run.result.included == (3, 5, 12, 61, 40_000)
    b = run.server.bits
    expected = sum(
        to_signed(quantize(x, CLIP, R, b), b) for c, x in zip(ids, xs, strict=True) if c != 977
    )
    assert np.array_equal(run.result.sum_q, expected)


def test_cost_benchmark_runs_small():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "secagg_cost.py"
    spec = importlib.util.spec_from_file_location("secagg_cost", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    row = bench.one("secagg+", 12, 0.1, 20, 2**10)
    assert row["included"] == 11 and row["max_abs_error"] <= row["error_bound"]
    assert row["sent_bytes_mean"] > 0 and row["server_s"] >= 0
