"""FedAvg and the server transforms against hand computations."""

import numpy as np
import pytest

from fedfleet.client import FitInstructions
from fedfleet.errors import ConfigError
from fedfleet.strategies import ClientUpdate, FedAvg, cohort_size, sample_clients
from fedfleet.transforms import chain, sgd


def _updates(global_w, client_ws, ns):
    return [
        ClientUpdate(i, (w - global_w).astype(np.float32), n, 1)
        for i, (w, n) in enumerate(zip(client_ws, ns, strict=True))
    ]


def test_fedavg_is_the_sample_weighted_average_of_client_models():
    w = np.array([1.0, -2.0, 0.5], dtype=np.float32)
    w1 = np.array([2.0, 0.0, 1.0], dtype=np.float32)
    w2 = np.array([0.0, 4.0, -1.0], dtype=np.float32)
    w3 = np.array([1.0, 1.0, 1.0], dtype=np.float32)
    ns = [10, 30, 60]
    strategy = FedAvg(clients_per_round=3)
    state = strategy.init(w)
    new, _, _ = strategy.aggregate_fit(1, w, state, _updates(w, [w1, w2, w3], ns))
    # hand computation: 0.1*w1 + 0.3*w2 + 0.6*w3
    expected = np.array([0.2 + 0.0 + 0.6, 0.0 + 1.2 + 0.6, 0.1 - 0.3 + 0.6])
    np.testing.assert_allclose(new, expected, rtol=0, atol=1e-6)
    assert new.dtype == np.float32


def test_fedavg_matches_formula_on_random_vectors():
    rng = np.random.default_rng(3)
    w = rng.normal(size=1000).astype(np.float32)
    clients = [rng.normal(size=1000).astype(np.float32) for _ in range(7)]
    ns = rng.integers(1, 500, size=7).tolist()
    strategy = FedAvg(clients_per_round=7)
    new, _, _ = strategy.aggregate_fit(1, w, strategy.init(w), _updates(w, clients, ns))
    ref = sum(n * c.astype(np.float64) for n, c in zip(ns, clients, strict=True)) / sum(ns)
    np.testing.assert_allclose(new, ref, rtol=1e-6, atol=1e-6)


def test_no_updates_keeps_the_model():
    w = np.ones(4, dtype=np.float32)
    strategy = FedAvg(clients_per_round=2)
    new, _, metrics = strategy.aggregate_fit(1, w, strategy.init(w), [])
    assert new is w and metrics["aggregated"] == 0.0


def test_server_momentum_accumulates_over_rounds():
    w = np.zeros(2, dtype=np.float32)
    strategy = FedAvg(clients_per_round=1, server_optimizer=sgd(lr=0.5, momentum=0.9))
    state = strategy.init(w)
    d = np.array([1.0, -1.0], dtype=np.float32)
    w1, state, _ = strategy.aggregate_fit(1, w, state, [ClientUpdate(0, d, 5, 1)])
    np.testing.assert_allclose(w1, 0.5 * d)  # m = -d; step = -0.5 * m
    w2, state, _ = strategy.aggregate_fit(2, w1, state, [ClientUpdate(0, d, 5, 1)])
    np.testing.assert_allclose(w2, 0.5 * d + 0.5 * 1.9 * d, rtol=1e-6)  # m = 0.9*(-d) - d
    np.testing.assert_allclose(state["server_optimizer"]["momentum"], -1.9 * d, rtol=1e-6)


def test_chain_threads_state_through_each_transform():
    t = chain(sgd(lr=2.0), sgd(lr=0.5, momentum=0.5))
    g = np.array([1.0, 2.0])
    state = t.init(g)
    step, state = t.update(g, state, g)
    np.testing.assert_allclose(step, [1.0, 2.0])  # -0.5 * (-2 g)
    step, state = t.update(g, state, g)
    np.testing.assert_allclose(step, [1.5, 3.0])  # m = 0.5*(-2g) - 2g = -3g


def test_configure_fit_samples_k_distinct_clients_with_the_local_instructions():
    local = FitInstructions(epochs=3, batch_size=8, lr=0.2)
    strategy = FedAvg(clients_per_round=4, local=local)
    plan = strategy.configure_fit(
        1, np.zeros(1, np.float32), {}, list(range(20)), np.random.default_rng(0)
    )
    ids = [cid for cid, _ in plan]
    assert len(ids) == 4 and len(set(ids)) == 4 and ids == sorted(ids)
    assert all(instr is local for _, instr in plan)


def test_cohort_size_by_count_or_fraction():
    assert cohort_size(100, count=10) == 10
    assert cohort_size(5, count=10) == 5
    assert cohort_size(100, fraction=0.1) == 10
    assert cohort_size(3, fraction=0.1) == 1
    with pytest.raises(ConfigError):
        cohort_size(10, count=3, fraction=0.5)
    with pytest.raises(ConfigError, match="fraction"):
        cohort_size(10, fraction=1.5)


def test_sampling_is_uniform():
    rng = np.random.default_rng(0)
    counts = np.zeros(10)
    for _ in range(5000):
        counts[sample_clients(list(range(10)), 3, rng)] += 1
    # each client is picked with probability 0.3: 1500 expected, sd ~ 32
    assert np.all(np.abs(counts - 1500) < 160)


@pytest.mark.parametrize("shape", [(1, 7), (5, 1000), (33, 4099)])
def test_weighted_mean_is_numpys_float64_contraction_bit_for_bit(shape):
    from fedfleet.strategies import weighted_mean

    rng = np.random.default_rng(shape[1])
    m = rng.normal(scale=3.0, size=shape).astype(np.float32)
    w = rng.integers(1, 600, size=shape[0])
    share = w / w.sum()
    want = np.einsum("k,kp->p", share, m, dtype=np.float64)
    got = weighted_mean(list(m), w)
    assert got.dtype == np.float64 and np.array_equal(got, want)
    # and the textbook formula, to float64 rounding
    np.testing.assert_allclose(
        got,
        sum(s * r.astype(np.float64) for s, r in zip(share, m, strict=True)),
        rtol=1e-12,
        atol=1e-12,
    )
