"""Client system profiles: hand-checked round times, availability, CSV loading."""

import math

import numpy as np
import pytest

from fedfleet.client import FitInstructions
from fedfleet.errors import ConfigError
from fedfleet.sim._profiles import (
    ClientProfiles,
    Lognormal,
    ProfileSpec,
    load_profiles_csv,
    planned_steps,
    spread_sigma,
)


def _profiles(**kw):
    base = dict(
        speed=np.array([1.0, 2.0, 0.5]),
        download=np.array([100.0, 50.0, math.inf]),
        upload=np.array([50.0, 25.0, math.inf]),
        latency=np.array([0.5, 0.0, 1.0]),
        availability=np.array([1.0, 0.5, 0.0]),
        time_per_step=0.1,
    )
    base.update(kw)
    return ClientProfiles(**base)


def test_duration_by_hand():
    p = _profiles()
    # client 0: (0.5 + 200/100) + 10 * 0.1 / 1 + (0.5 + 200/50) = 2.5 + 1 + 4.5
    assert p.duration(0, 10, 200) == pytest.approx(8.0)
    # client 1: 200/50 + 10 * 0.1 / 2 + 200/25 = 4 + 0.5 + 8
    assert p.duration(1, 10, 200) == pytest.approx(12.5)
    # client 2: free transfers, two latencies: 1 + 10 * 0.1 / 0.5 + 1
    assert p.duration(2, 10, 200) == pytest.approx(4.0)
    assert p.round_time([0, 1, 2], [10, 10, 10], 200) == pytest.approx(12.5)
    assert p.round_time([], [], 200) == 0.0


def test_steps_within_budget():
    p = _profiles()
    # client 0: 7 s for transfers, 3 s left at 0.1 s/step -> 30 steps (exact fit counts)
    assert p.steps_within(0, 10.0, 200) == 30
    assert p.duration(0, 30, 200) <= 10.0 + 1e-9
    assert p.steps_within(0, 6.9, 200) == 0  # transfers alone miss it
    assert p.steps_within(2, 4.0, 200) == 10


def test_planned_steps_match_trainer_loop():
    assert planned_steps(FitInstructions(epochs=2, batch_size=32), 100) == 8
    assert planned_steps(FitInstructions(epochs=2, batch_size=32, max_steps=5), 100) == 5


def test_availability_draw_is_seeded_and_respects_probability():
    p = _profiles()
    for rnd in range(1, 20):
        on = p.online(rnd, seed=3)
        assert on[0] and not on[2]
        assert np.array_equal(on, p.online(rnd, seed=3))
    share = np.mean([p.online(r, seed=0)[1] for r in range(1, 2001)])
    assert 0.45 < share < 0.55
    assert p.available([0, 1, 2], 1, 3) == [c for c in (0, 1, 2) if p.online(1, 3)[c]]


def test_trace_overrides_probability():
    trace = np.array([[1, 0], [0, 1], [1, 1]], dtype=bool)
    p = _profiles(trace=trace)
    assert p.available([0, 1, 2], 1, 0) == [0, 2]
    assert p.available([0, 1, 2], 2, 0) == [1, 2]
    assert p.available([0, 1, 2], 3, 0) == [0, 2]  # wraps around


def test_spec_spread_and_determinism():
    assert spread_sigma(10.0) == pytest.approx(0.7, abs=0.001)
    spec = ProfileSpec(speed=Lognormal(median=2.0, spread=10.0), availability=0.8)
    a, b = spec.sample(5000, seed=1), spec.sample(5000, seed=1)
    assert np.array_equal(a.speed, b.speed)
    ratio = np.quantile(a.speed, 0.95) / np.quantile(a.speed, 0.05)
    assert 8.5 < ratio < 11.5
    assert np.median(a.speed) == pytest.approx(2.0, rel=0.05)
    assert np.all(np.isinf(a.download)) and np.all(a.availability == 0.8)
    assert not np.array_equal(a.speed, spec.sample(5000, seed=2).speed)


def test_bad_profiles_name_the_client():
    with pytest.raises(ConfigError, match="client 1 has speed"):
        _profiles(speed=np.array([1.0, -1.0, 1.0]))
    with pytest.raises(ConfigError, match="availability"):
        ProfileSpec(availability=1.5)


def test_csv_round_trip_and_errors(tmp_path):
    good = tmp_path / "p.csv"
    good.write_text(
        "client_id,speed,download_bps,upload_bps,latency_s,availability\n"
        "0,1.0,1000,500,0.1,0.9\n1,2.0,inf,inf,,\n"
    )
    p = load_profiles_csv(good, time_per_step=0.2, num_clients=2)
    assert p.speed.tolist() == [1.0, 2.0]
    assert p.latency.tolist() == [0.1, 0.0] and p.availability.tolist() == [0.9, 1.0]
    assert math.isinf(p.download[1]) and p.time_per_step == 0.2

    bad = tmp_path / "bad.csv"
    bad.write_text("speed,download_bps,upload_bps\n1,2,3\n1,abc,3\n")
    with pytest.raises(ConfigError, match=r"line 3: column 'download_bps' is 'abc'"):
        load_profiles_csv(bad)
    bad.write_text("speed,download_bps\n1,2\n")
    with pytest.raises(ConfigError, match=r"missing column\(s\) \['upload_bps'\]"):
        load_profiles_csv(bad)
    bad.write_text("speed,download_bps,upload_bps,colour\n1,2,3,red\n")
    with pytest.raises(ConfigError, match="unknown column"):
        load_profiles_csv(bad)
    bad.write_text("speed,download_bps,upload_bps\n1,2,3\n0,2,3\n")
    with pytest.raises(ConfigError, match="client 1 has speed"):
        load_profiles_csv(bad)
    with pytest.raises(ConfigError, match="2 client rows for a federation of 3"):
        load_profiles_csv(good, num_clients=3)


def test_fedbuff_clock_converts_to_the_same_clients():
    from fedfleet.sim import ClientClock

    clock = ClientClock(time_per_step=0.1, speed_sigma=0.7, bandwidth=1e4)
    times, profiles = clock.sample(20, seed=4), clock.profiles(20, seed=4)
    assert np.array_equal(times.speed, profiles.speed)
    for cid in range(20):
        assert profiles.duration(cid, 7, 3000) == pytest.approx(times.duration(cid, 7, 3000))
    assert profiles.online(1, 4).all()
