"""The simulation engine end to end on small in-memory tasks."""

import dataclasses

import numpy as np
import pytest
from torch import nn

import fedfleet._threads
from fedfleet.client import FitInstructions, NumpyLogisticRegression, TorchTrainer
from fedfleet.evaluation import fairness_stats
from fedfleet.sim import TIMING_KEYS, Federation, SequentialExecutor, Simulation, client_seed
from fedfleet.strategies import FedAvg, weighted_mean

LOCAL = FitInstructions(epochs=1, batch_size=16, lr=0.1)


def _parts(n, k):
    return [np.arange(i, n, k) for i in range(k)]


def _factory():
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 4))


def _sim(task, seed=0, trainer=None, **kw):
    """The engine on the reference path (one client after another), which the tests here
    compare with hand-run FedAvg and with strategies that train each client themselves."""
    fed = Federation(task, _parts(len(task.train), 8))
    strategy = FedAvg(clients_per_round=4, local=LOCAL)
    kw.setdefault("executor", SequentialExecutor())
    return Simulation(trainer or TorchTrainer(_factory), fed, strategy, seed=seed, **kw)


def _strip(history):
    return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in history]


def test_same_seed_gives_bit_identical_model_and_metrics(blobs):
    a = _sim(blobs, seed=5).run(4)
    b = _sim(blobs, seed=5).run(4)
    c = _sim(blobs, seed=6).run(4)
    assert np.array_equal(a.vector, b.vector)
    assert _strip(a.history) == _strip(b.history)
    assert not np.array_equal(a.vector, c.vector)


def test_round_one_equals_a_hand_run_fedavg(blobs):
    sim = _sim(blobs, seed=2)
    result = sim.run(1)
    trainer = TorchTrainer(_factory)
    w0 = trainer.init_vector(2)
    plan = sim.strategy.configure_fit(
        1,
        w0,
        {},
        sim.federation.client_ids,
        np.random.default_rng(np.random.SeedSequence(2, spawn_key=(1, 0))),
    )
    fits = [
        trainer.fit(w0, sim.federation.train_data(cid), instr, client_seed(2, 1, cid))
        for cid, instr in plan
    ]
    expected = w0 + weighted_mean([f.vector - w0 for f in fits], [f.num_samples for f in fits])
    np.testing.assert_allclose(result.vector, expected, atol=1e-7)
    assert result.history[0]["num_clients"] == 4


def test_fedavg_learns_and_reports_every_round(blobs):
    result = _sim(blobs, eval_every=2).run(6)
    assert [h["round"] for h in result.history] == [1, 2, 3, 4, 5, 6]
    assert "test_accuracy" not in result.history[0]
    assert "test_accuracy" in result.history[1]
    assert result.final["test_accuracy"] > 0.9
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.model is not None  # the final model as an nn.Module
    assert isinstance(result.model, nn.Module)


@dataclasses.dataclass
class _Faulty:
    """Wraps a trainer; the clients training with the given seeds send NaN or a short vector."""

    inner: object
    nan_clients: set
    short_clients: set = dataclasses.field(default_factory=set)

    @property
    def layout(self):
        return self.inner.layout

    def init_vector(self, seed):
        return self.inner.init_vector(seed)

    def evaluate(self, vector, data):
        return self.inner.evaluate(vector, data)

    def fit(self, vector, data, instructions, seed):
        res = self.inner.fit(vector, data, instructions, seed)
        # the engine gives each client its own seed, which identifies the client here
        if seed in self.nan_clients:
            bad = res.vector.copy()
            bad[3] = np.nan
            return dataclasses.replace(res, vector=bad)
        if seed in self.short_clients:
            return dataclasses.replace(res, vector=res.vector[:-1])
        return res


@pytest.fixture(params=["one thread", "over the cores"])
def bulk(request, monkeypatch):
    """Run the engine's [K, P] passes on the calling thread, or (BULK = 0) over the cores."""
    if request.param == "over the cores":
        monkeypatch.setattr(fedfleet._threads, "BULK", 0)
    return request.param


def test_bad_updates_are_rejected_and_the_round_goes_on(blobs, bulk):
    clean = _sim(blobs, seed=1)
    plan = clean.strategy.configure_fit(
        1,
        None,
        {},
        clean.federation.client_ids,
        np.random.default_rng(np.random.SeedSequence(1, spawn_key=(1, 0))),
    )
    ids = [cid for cid, _ in plan]
    faulty = _Faulty(
        TorchTrainer(_factory),
        nan_clients={client_seed(1, 1, ids[0])},
        short_clients={client_seed(1, 1, ids[1])},
    )
    result = _sim(blobs, seed=1, trainer=faulty).run(1)
    assert result.history[0]["num_clients"] == 2
    assert result.history[0]["num_rejected"] == 2
    assert {e.client_id for e in result.rejected} == {ids[0], ids[1]}
    assert any("non-finite" in str(e) for e in result.rejected)
    assert np.isfinite(result.vector).all()
    # the aggregate is FedAvg over the two good clients alone
    trainer = TorchTrainer(_factory)
    w0 = trainer.init_vector(1)
    fits = [
        trainer.fit(w0, clean.federation.train_data(c), LOCAL, client_seed(1, 1, c))
        for c in ids[2:]
    ]
    expected = w0 + weighted_mean([f.vector - w0 for f in fits], [f.num_samples for f in fits])
    np.testing.assert_allclose(result.vector, expected, atol=1e-7)


def test_federated_evaluation_reports_the_client_accuracy_distribution(blobs):
    n = len(blobs.train)
    parts = _parts(n, 8)
    train = [p[: len(p) * 3 // 4] for p in parts]
    test = [p[len(p) * 3 // 4 :] for p in parts]
    fed = Federation(blobs, train, test)
    trainer = NumpyLogisticRegression((10,), 4)
    sim = Simulation(
        trainer, fed, FedAvg(clients_per_round=4, local=LOCAL), seed=0, federated_eval_every=1
    )
    result = sim.run(3)
    accs = [trainer.evaluate(result.vector, fed.test_data(c)).accuracy for c in range(8)]
    stats = fairness_stats(accs)
    final = result.final
    assert final["client_accuracy_mean"] == pytest.approx(stats["mean"])
    assert final["client_accuracy_worst10"] == pytest.approx(min(accs))  # 10% of 8 -> 1 client
    assert final["client_accuracy_std"] == pytest.approx(np.std(accs))


def test_fairness_stats_worst10_is_the_mean_of_the_bottom_decile():
    accs = list(np.linspace(0.0, 1.0, 20))  # bottom 2 of 20: 0.0 and 1/19
    stats = fairness_stats(accs)
    assert stats["worst10"] == pytest.approx((0.0 + 1 / 19) / 2)
    assert stats["min"] == 0.0
    assert stats["mean"] == pytest.approx(0.5)


def test_fraction_sampling_selects_c_times_n(blobs):
    fed = Federation(blobs, _parts(len(blobs.train), 20))
    sim = Simulation(TorchTrainer(_factory), fed, FedAvg(fraction=0.25, local=LOCAL), seed=0)
    assert sim.run(1).history[0]["num_clients"] == 5


def test_a_bad_update_between_good_ones_is_left_out_of_the_aggregate(blobs, bulk):
    """The accepted deltas are packed into consecutive rows as they pass validation: a rejected
    client in the middle must not leave its values, or a gap, in the aggregate."""
    clean = _sim(blobs, seed=4)
    plan = clean.strategy.configure_fit(
        1,
        None,
        {},
        clean.federation.client_ids,
        np.random.default_rng(np.random.SeedSequence(4, spawn_key=(1, 0))),
    )
    ids = [cid for cid, _ in plan]
    faulty = _Faulty(
        TorchTrainer(_factory),
        nan_clients={client_seed(4, 1, ids[1])},
        short_clients={client_seed(4, 1, ids[3])},
    )
    result = _sim(blobs, seed=4, trainer=faulty).run(1)
    assert [e.client_id for e in result.rejected] == [ids[1], ids[3]]
    assert "round 1" in str(result.rejected[0]) and str(ids[1]) in str(result.rejected[0])
    trainer = TorchTrainer(_factory)
    w0 = trainer.init_vector(4)
    fits = [
        trainer.fit(w0, clean.federation.train_data(c), LOCAL, client_seed(4, 1, c))
        for c in (ids[0], ids[2])
    ]
    expected = w0 + weighted_mean([f.vector - w0 for f in fits], [f.num_samples for f in fits])
    np.testing.assert_allclose(result.vector, expected, atol=1e-7)


@dataclasses.dataclass
class _Keeper:
    """FedAvg that keeps every delta it is given (and a copy of its values at the time)."""

    inner: FedAvg
    kept: list = dataclasses.field(default_factory=list)

    def init(self, vector):
        return self.inner.init(vector)

    def configure_fit(self, rnd, vector, state, clients, rng):
        return self.inner.configure_fit(rnd, vector, state, clients, rng)

    def client_fit(self, *args):
        return self.inner.client_fit(*args)

    def aggregate_fit(self, rnd, vector, state, updates):
        self.kept += [(u.delta, u.delta.copy()) for u in updates]
        return self.inner.aggregate_fit(rnd, vector, state, updates)


def test_deltas_a_strategy_keeps_are_never_overwritten_by_later_rounds(blobs, bulk):
    fed = Federation(blobs, _parts(len(blobs.train), 8))
    keeper = _Keeper(FedAvg(clients_per_round=4, local=LOCAL))
    result = Simulation(TorchTrainer(_factory), fed, keeper, seed=3).run(3)
    assert len(keeper.kept) == 12
    for delta, values in keeper.kept:
        assert np.array_equal(delta, values)
    plain = _sim(blobs, seed=3).run(3)  # keeping deltas changes nothing in the run
    assert np.array_equal(result.vector, plain.vector)


def test_weighted_mean_is_the_same_bits_from_one_matrix_or_separate_vectors():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(6, 1001)).astype(np.float32)
    weights = [3, 1, 4, 1, 5, 9]
    rows = list(m)  # views: consecutive rows of one array, read in place
    got = weighted_mean(rows, weights)
    assert got.dtype == np.float64
    assert np.array_equal(got, weighted_mean([r.copy() for r in rows], weights))
    ref = sum(w * r.astype(np.float64) for w, r in zip(weights, rows, strict=True)) / 23
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    picked = [m[0], m[2], m[5]]  # not consecutive: stacked instead
    want = (m[0].astype(np.float64) + m[2] + 2.0 * m[5]) / 4
    np.testing.assert_allclose(weighted_mean(picked, [1, 1, 2]), want, rtol=1e-12, atol=1e-12)
    reversed_rows = rows[::-1]
    np.testing.assert_allclose(
        weighted_mean(reversed_rows, weights[::-1]), ref, rtol=1e-12, atol=1e-12
    )


def test_weighted_mean_over_the_cores_is_the_same_bits(monkeypatch):
    rng = np.random.default_rng(1)
    m = rng.normal(size=(7, 10_001)).astype(np.float32)
    weights = [2, 7, 1, 8, 2, 8, 1]
    one = weighted_mean(list(m), weights)
    monkeypatch.setattr(fedfleet._threads, "BULK", 0)
    monkeypatch.setattr(fedfleet._threads, "cores", lambda: 3)  # uneven blocks
    assert np.array_equal(weighted_mean(list(m), weights), one)
    assert np.array_equal(weighted_mean([r.copy() for r in m], weights), one)


def test_runs_are_the_same_bits_with_the_round_passes_over_the_cores(blobs, monkeypatch):
    one = _sim(blobs, seed=2).run(3)
    monkeypatch.setattr(fedfleet._threads, "BULK", 0)
    many = _sim(blobs, seed=2).run(3)
    assert np.array_equal(one.vector, many.vector)
    assert _strip(one.history) == _strip(many.history)


def test_the_shared_pool_runs_nested_calls_inline_instead_of_deadlocking(monkeypatch):
    monkeypatch.setattr(fedfleet._threads, "BULK", 0)

    def outer(x):  # a pass started from inside one of the pool's threads
        return sum(fedfleet._threads.map_items(lambda y: x * y, range(4), 1))

    assert fedfleet._threads.map_items(outer, range(8), 1) == [6 * x for x in range(8)]


@dataclasses.dataclass
class _RowsBackwards:
    """A cohort trainer handing its results over as the rows of one array, last client first;
    the clients with the given seeds send NaN."""

    inner: TorchTrainer
    nan_seeds: set = dataclasses.field(default_factory=set)
    hands_over_results: bool = True

    @property
    def layout(self):
        return self.inner.layout

    def init_vector(self, seed):
        return self.inner.init_vector(seed)

    def evaluate(self, vector, data):
        return self.inner.evaluate(vector, data)

    def fit(self, vector, data, instructions, seed):
        return self.fit_cohort(vector, [data], [instructions], [seed])[0]

    def fit_cohort(self, vector, datasets, instructions, seeds):
        fits = [
            self.inner.fit(vector, *args)
            for args in zip(datasets, instructions, seeds, strict=True)
        ]
        out = np.empty((len(fits), vector.shape[0]), dtype=np.float32)
        results = []
        for i, (fit, seed) in enumerate(zip(fits, seeds, strict=True)):
            row = out[len(fits) - 1 - i]
            row[:] = fit.vector
            if seed in self.nan_seeds:
                row[5] = np.nan
            results.append(dataclasses.replace(fit, vector=row))
        return results


def test_results_handed_over_as_rows_become_deltas_in_place(blobs):
    from fedfleet.sim import VectorisedExecutor

    clean = _sim(blobs, seed=2)
    plan = clean.strategy.configure_fit(
        1,
        None,
        {},
        clean.federation.client_ids,
        np.random.default_rng(np.random.SeedSequence(2, spawn_key=(1, 0))),
    )
    ids = [cid for cid, _ in plan]
    bad = {client_seed(2, 1, ids[1])}
    runs = {}
    for handed in (True, False):
        trainer = _RowsBackwards(TorchTrainer(_factory), bad, hands_over_results=handed)
        sim = _sim(blobs, seed=2, trainer=trainer, executor=VectorisedExecutor())
        runs[handed] = sim.run(1)
    got = runs[True]
    assert [e.client_id for e in got.rejected] == [ids[1]]
    assert "non-finite" in str(got.rejected[0])
    trainer = TorchTrainer(_factory)
    w0 = trainer.init_vector(2)
    fits = [
        trainer.fit(w0, clean.federation.train_data(c), LOCAL, client_seed(2, 1, c))
        for c in (ids[0], ids[2], ids[3])
    ]
    expected = w0 + weighted_mean([f.vector - w0 for f in fits], [f.num_samples for f in fits])
    np.testing.assert_allclose(got.vector, expected, atol=1e-7)
    np.testing.assert_allclose(runs[False].vector, expected, atol=1e-7)
    assert got.history[0]["num_clients"] == 3


def test_handed_over_block_takes_exactly_one_block_of_rows():
    from fedfleet.sim._inprocess import _handed_over_block

    class Hands:
        hands_over_results = True

    base = np.zeros((5, 7), dtype=np.float32)
    v = np.ones(7, dtype=np.float32)
    block, order = _handed_over_block(Hands(), [base[3], base[1], base[2]], v)
    assert np.shares_memory(block, base) and block.shape == (3, 7)
    assert order == [1, 2, 0]  # row j of the block holds result order[j]
    assert np.shares_memory(block[0], base[1])
    assert _handed_over_block(object(), [base[1], base[2]], v) is None  # no hand-over
    assert _handed_over_block(Hands(), [base[1], base[1]], v) is None  # a row twice
    assert _handed_over_block(Hands(), [base[0], base[2]], v) is None  # a gap
    assert _handed_over_block(Hands(), [base[0], base[1].copy()], v) is None  # two arrays
    frozen = base.copy()
    frozen.flags.writeable = False
    assert _handed_over_block(Hands(), [frozen[0], frozen[1]], v) is None
    assert _handed_over_block(Hands(), [base[0], base[1]], base[2]) is None  # holds the global


def test_deltas_kept_from_a_vectorised_cohort_are_never_overwritten(blobs):
    from fedfleet.client import VmapTrainer
    from fedfleet.sim import VectorisedExecutor
    from fedfleet.strategies import plain_client_fit

    @dataclasses.dataclass
    class PlainKeeper(_Keeper):  # plain local training: the cohort trains in one fit_cohort
        client_fit = staticmethod(plain_client_fit)

    fed = Federation(blobs, _parts(len(blobs.train), 8))
    keeper = PlainKeeper(FedAvg(clients_per_round=4, local=LOCAL))
    trainer = VmapTrainer(_factory)
    sim = Simulation(trainer, fed, keeper, seed=3, executor=VectorisedExecutor())
    result = sim.run(3)
    assert len(keeper.kept) == 12
    for delta, values in keeper.kept:
        assert np.array_equal(delta, values)
    # each round's deltas were made in place in the trainer's result rows
    assert all(keeper.kept[0][0].base is d.base for d, _ in keeper.kept[:4])
    assert keeper.kept[0][0].base is not keeper.kept[4][0].base
    plain = Simulation(VmapTrainer(_factory), fed, FedAvg(clients_per_round=4, local=LOCAL), seed=3)
    assert np.array_equal(result.vector, plain.run(3).vector)
