"""FedBuff on a simulated clock, and the client timing model, against hand computations."""

import dataclasses
import itertools
import math

import numpy as np
import pytest
from torch import nn

from fedfleet.client import FitInstructions, TorchTrainer
from fedfleet.errors import ConfigError
from fedfleet.sim import TIMING_KEYS, ClientClock, Federation, client_seed
from fedfleet.sim._fedbuff import FedBuffSimulation, buffered_mean, polynomial_staleness
from fedfleet.transforms import sgd

LOCAL = FitInstructions(epochs=1, batch_size=20, lr=0.1)  # 100 samples -> 5 steps


def _factory():
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 4))


def _equal_parts(num_clients, per_client=100):
    return [np.arange(i, num_clients * per_client, num_clients) for i in range(num_clients)]


def _strip(history):
    return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in history]


def _delta(trainer, fed, start, cid, dispatch, seed=0):
    fit = trainer.fit(start, fed.train_data(cid), LOCAL, client_seed(seed, dispatch, cid))
    return (fit.vector - start).astype(np.float64)


def _apply(x, terms):
    """x + sum_i w_i delta_i / K in float64, cast back once, as the server does."""
    return (x.astype(np.float64) + sum(w * d for w, d in terms) / len(terms)).astype(np.float32)


def test_staleness_weights_and_buffered_mean():
    w = polynomial_staleness()
    assert [w(s) for s in range(4)] == pytest.approx([1, 1 / math.sqrt(2), 1 / math.sqrt(3), 0.5])
    assert polynomial_staleness(0.0)(7) == 1.0
    assert polynomial_staleness(1.0)(3) == 0.25
    with pytest.raises(ConfigError, match="exponent must be >= 0"):
        polynomial_staleness(-1.0)
    d = [np.array([1.0, 2.0], np.float32), np.array([4.0, -4.0], np.float32)]
    # K=4 with only two weighted terms: (1 * d0 + 0.5 * d1) / 4
    np.testing.assert_array_equal(buffered_mean(d, [0, 3], w, 4), [0.75, 0.0])
    with pytest.raises(ConfigError, match="finite and >= 0"):
        buffered_mean(d, [0, 1], lambda s: -1.0, 2)


def test_aggregations_with_known_staleness_match_a_hand_run(blobs):
    # 3 clients, 5 steps each, speeds 4, 2, 1 -> round trips of 1.25, 2.5 and 5 simulated seconds;
    # K=2, concurrency 3. Dispatch d of client c trains with client_seed(0, d, c). Timeline:
    #   t=0     dispatch 1:c0, 2:c1, 3:c2 from x0
    #   t=1.25  c0 (d1, s=0) buffered; dispatch 4:c0 from x0
    #   t=2.5   c0 (d4, s=0) -> x1 = x0 + (u1 + u4) / 2; c1 (d2, s=1) buffered;
    #           dispatch 5:c0, 6:c1 from x1
    #   t=3.75  c0 (d5, s=0) -> x2 = x1 + (w(1) u2 + u5) / 2; dispatch 7:c0 from x2
    #   t=5     c0 (d7, s=0) buffered; c1 (d6, s=1) -> x3 = x2 + (u7 + w(1) u6) / 2;
    #           c2 (d3, s=3) buffered; dispatch 8:c0, 9:c1, 10:c2 from x3
    #   t=6.25  c0 (d8, s=0) -> x4 = x3 + (w(3) u3 + u8) / 2
    fed = Federation(blobs, _equal_parts(3))
    sim = FedBuffSimulation(
        TorchTrainer(_factory),
        fed,
        local=LOCAL,
        buffer_size=2,
        concurrency=3,
        clock=ClientClock(time_per_step=1.0, speeds=(4.0, 2.0, 1.0)),
        seed=0,
    )
    result = sim.run(4)
    h = result.history
    assert [r["version"] for r in h] == [1, 2, 3, 4]
    assert [r["sim_time_s"] for r in h] == [2.5, 3.75, 5.0, 6.25]
    assert [r["staleness_max"] for r in h] == [0, 1, 1, 3]
    assert [r["staleness_mean"] for r in h] == [0.0, 0.5, 0.5, 1.5]
    assert all(r["num_clients"] == 2 and r["num_rejected"] == 0 for r in h)

    trainer = TorchTrainer(_factory)
    w = polynomial_staleness(0.5)
    x0 = trainer.init_vector(0)
    u1, u4 = _delta(trainer, fed, x0, 0, 1), _delta(trainer, fed, x0, 0, 4)
    u2, u3 = _delta(trainer, fed, x0, 1, 2), _delta(trainer, fed, x0, 2, 3)
    x1 = _apply(x0, [(1.0, u1), (1.0, u4)])
    u5, u6 = _delta(trainer, fed, x1, 0, 5), _delta(trainer, fed, x1, 1, 6)
    x2 = _apply(x1, [(w(1), u2), (1.0, u5)])
    u7 = _delta(trainer, fed, x2, 0, 7)
    x3 = _apply(x2, [(1.0, u7), (w(1), u6)])
    u8 = _delta(trainer, fed, x3, 0, 8)
    x4 = _apply(x3, [(w(3), u3), (1.0, u8)])
    np.testing.assert_allclose(result.vector, x4, rtol=0, atol=1e-6)
    assert not np.allclose(x4, _apply(x3, [(1.0, u3), (1.0, u8)]), atol=1e-4)  # weights matter


def test_k_equal_concurrency_equal_all_clients_is_synchronous_fedavg(blobs):
    # equal speeds and data: all 4 clients return together every time, each version averages
    # fresh (staleness 0) updates from the same start: FedAvg with uniform weights
    n = 4
    fed = Federation(blobs, _equal_parts(n))
    clock = ClientClock(time_per_step=0.5, bandwidth=4 * 1000.0)
    trainer = TorchTrainer(_factory)
    result = FedBuffSimulation(
        trainer, fed, local=LOCAL, buffer_size=n, concurrency=n, clock=clock, seed=3
    ).run(3)
    x = trainer.init_vector(3)
    for v in range(3):
        deltas = [_delta(trainer, fed, x, c, v * n + c + 1, seed=3) for c in range(n)]
        x = (x.astype(np.float64) + np.mean(deltas, axis=0)).astype(np.float32)
    np.testing.assert_allclose(result.vector, x, rtol=0, atol=1e-7)
    layout_bytes = 4 * trainer.layout.size
    trip = 2 * layout_bytes / 4000.0 + 5 * 0.5
    assert [r["sim_time_s"] for r in result.history] == pytest.approx([trip, 2 * trip, 3 * trip])
    assert all(r["staleness_max"] == 0 for r in result.history)


def _sim(task, seed=0, **kw):
    fed = Federation(task, [np.arange(i, len(task.train), 8) for i in range(8)])
    kw = {"buffer_size": 3, "concurrency": 5, "clock": ClientClock(speed_sigma=0.7)} | kw
    local = FitInstructions(epochs=1, batch_size=16, lr=0.1)
    return FedBuffSimulation(TorchTrainer(_factory), fed, local=local, seed=seed, **kw)


def test_same_seed_gives_bit_identical_runs(blobs):
    a, b, c = _sim(blobs, seed=4).run(6), _sim(blobs, seed=4).run(6), _sim(blobs, seed=5).run(6)
    assert np.array_equal(a.vector, b.vector)
    assert _strip(a.history) == _strip(b.history)
    assert not np.array_equal(a.vector, c.vector)


def test_learns_on_blobs_with_monotone_simulated_time(blobs):
    result = _sim(blobs, eval_every=5).run(20)
    times = [r["sim_time_s"] for r in result.history]
    assert times[0] > 0 and all(b >= a for a, b in itertools.pairwise(times))
    assert times[-1] > times[0]
    assert "test_accuracy" not in result.history[0] and "test_accuracy" in result.history[4]
    assert result.final["test_accuracy"] > 0.9
    assert max(r["staleness_max"] for r in result.history) > 0  # it really ran asynchronously
    assert isinstance(result.model, nn.Module)
    assert result.strategy_state == {"server_optimizer": {}}


def test_server_optimizer_and_server_lr(blobs):
    a = _sim(blobs, server_lr=0.5).run(3)
    b = _sim(blobs, server_optimizer=sgd(0.5)).run(3)
    assert np.array_equal(a.vector, b.vector)
    m = _sim(blobs, server_optimizer=sgd(1.0, momentum=0.9)).run(2)
    assert m.strategy_state["server_optimizer"]["momentum"].shape == m.vector.shape
    with pytest.raises(ConfigError, match="not both"):
        _sim(blobs, server_lr=0.5, server_optimizer=sgd(0.5))
    with pytest.raises(ConfigError, match="buffer_size"):
        _sim(blobs, buffer_size=0)


@dataclasses.dataclass
class _NanFor:
    """Wraps a trainer; the fits with the given seeds return NaN."""

    inner: object
    seeds: set

    @property
    def layout(self):
        return self.inner.layout

    def init_vector(self, seed):
        return self.inner.init_vector(seed)

    def evaluate(self, vector, data):
        return self.inner.evaluate(vector, data)

    def fit(self, vector, data, instructions, seed):
        res = self.inner.fit(vector, data, instructions, seed)
        if seed in self.seeds:
            bad = res.vector.copy()
            bad[0] = np.nan
            return dataclasses.replace(res, vector=bad)
        return res


def test_rejected_updates_are_left_out_and_the_run_goes_on(blobs):
    # as in the synchronous reduction: dispatches 1-4 are clients 0-3 at version 0
    fed = Federation(blobs, _equal_parts(4))
    trainer = _NanFor(TorchTrainer(_factory), {client_seed(0, 2, 1)})
    sim = FedBuffSimulation(trainer, fed, local=LOCAL, buffer_size=3, concurrency=4, seed=0)
    result = sim.run(2)
    assert [e.client_id for e in result.rejected] == [1]
    assert "non-finite" in str(result.rejected[0]) and "round 1" in str(result.rejected[0])
    assert result.history[0]["num_rejected"] == 1 and result.history[1]["num_rejected"] == 0
    assert np.isfinite(result.vector).all()
    # version 1 is clients 0, 2, 3 at staleness 0 (client 1's update never enters the buffer)
    plain = TorchTrainer(_factory)
    x0 = plain.init_vector(0)
    expected = _apply(x0, [(1.0, _delta(plain, fed, x0, c, c + 1)) for c in (0, 2, 3)])
    one = FedBuffSimulation(trainer, fed, local=LOCAL, buffer_size=3, concurrency=4).run(1)
    np.testing.assert_allclose(one.vector, expected, rtol=0, atol=1e-7)


def test_until_ends_the_run_early(blobs):
    result = _sim(blobs).run(50, until=lambda r: r["version"] == 3)
    assert [r["version"] for r in result.history] == [1, 2, 3]


def test_clock_draws_speeds_from_the_seed():
    clock = ClientClock(speed_sigma=0.7)
    a, b = clock.sample(1000, seed=1), clock.sample(1000, seed=1)
    assert np.array_equal(a.speed, b.speed)
    assert not np.array_equal(a.speed, clock.sample(1000, seed=2).speed)
    assert np.std(np.log(a.speed)) == pytest.approx(0.7, rel=0.1)
    spread = np.quantile(a.speed, 0.95) / np.quantile(a.speed, 0.05)
    assert 6 < spread < 16  # sigma 0.7 ~ a 10x spread
    assert np.array_equal(ClientClock().sample(3, seed=0).speed, np.ones(3))


def test_clock_durations():
    times = ClientClock(time_per_step=0.5, speeds=(1.0, 2.0), bandwidth=(100.0, 50.0)).sample(
        2, seed=0
    )
    # download 1000 B + 10 steps + upload 1000 B
    assert times.duration(0, 10, 1000) == 10.0 + 5.0 + 10.0
    assert times.duration(1, 10, 1000) == 20.0 + 2.5 + 20.0
    assert times.round_time([0, 1], [10, 10], 1000) == 42.5
    with pytest.raises(ConfigError, match="2 speeds for 3 clients"):
        ClientClock(speeds=(1.0, 2.0)).sample(3, seed=0)
    with pytest.raises(ConfigError, match="time_per_step"):
        ClientClock(time_per_step=0.0)
    with pytest.raises(ConfigError, match="bandwidth"):
        ClientClock(bandwidth=0.0)
