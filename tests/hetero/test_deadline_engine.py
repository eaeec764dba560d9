"""The engine with profiles and deadline policies."""

import dataclasses

import numpy as np
import pytest

from conftest import blob_task
from fedfleet.client import FitInstructions, NumpyLogisticRegression
from fedfleet.errors import FedfleetError
from fedfleet.sim import TIMING_KEYS, ClientProfiles, Federation, Lognormal, ProfileSpec, Simulation
from fedfleet.sim._deadline import DropLate, OverSelect, PartialWork, RoundClock
from fedfleet.strategies import FedAvg, FedNova

LOCAL = FitInstructions(epochs=1, batch_size=10, lr=0.1)  # 50 samples -> 5 steps


def _fed(n=8):
    task = blob_task(n_train=50 * n)
    return Federation(task, [np.arange(i, 50 * n, n) for i in range(n)])


def _profiles(speeds, tps=1.0, availability=None):
    n = len(speeds)
    return ClientProfiles(
        speed=np.asarray(speeds, dtype=float),
        download=np.full(n, np.inf),
        upload=np.full(n, np.inf),
        latency=np.zeros(n),
        availability=np.ones(n) if availability is None else np.asarray(availability, float),
        time_per_step=tps,
    )


def _strip(history):
    return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in history]


def _clock(profiles, n=8):
    return RoundClock(profiles, 0, [50] * n)


PLAN = [(c, LOCAL) for c in range(4)]
SPEEDS = [1.0, 0.5, 2.0, 0.25, 1.0, 1.0, 1.0, 1.0]  # 5 steps: 5, 10, 2.5, 20 s


def test_drop_late_drops_exactly_the_late_clients():
    plan, wait = DropLate(deadline_s=10.0).apply(PLAN, _clock(_profiles(SPEEDS)))
    assert [c for c, _ in plan] == [0, 1, 2]
    assert plan.metrics == {"deadline_dropped": 1.0} and wait == 10.0
    plan, wait = DropLate(deadline_s=30.0).apply(PLAN, _clock(_profiles(SPEEDS)))
    assert len(plan) == 4 and wait == 0.0


def test_partial_work_sets_max_steps_from_the_profile():
    plan, wait = PartialWork(deadline_s=4.0).apply(PLAN, _clock(_profiles(SPEEDS)))
    steps = {c: i.max_steps for c, i in plan}
    # 4 s at speeds 1, 0.5, 2, 0.25 -> 4, 2, 8 (>= 5 planned: untouched), 1 steps
    assert steps == {0: 4, 1: 2, 2: None, 3: 1}
    assert plan.metrics == {"deadline_dropped": 0.0, "deadline_capped": 3.0} and wait == 0.0
    plan, _ = PartialWork(deadline_s=3.0).apply(PLAN, _clock(_profiles(SPEEDS)))
    assert [c for c, _ in plan] == [0, 1, 2]  # client 3 cannot take one 4 s step


def test_over_selection_keeps_the_first_k_to_finish():
    plan, wait = OverSelect(keep=2).apply(PLAN, _clock(_profiles(SPEEDS)))
    assert [c for c, _ in plan] == [0, 2]  # 5 s and 2.5 s beat 10 s and 20 s
    assert wait == 5.0 and plan.metrics == {"deadline_dropped": 2.0}
    plan, wait = OverSelect(keep=3, deadline_s=6.0).apply(PLAN, _clock(_profiles(SPEEDS)))
    assert [c for c, _ in plan] == [0, 2] and wait == 6.0


def test_engine_records_simulated_time_by_hand():
    fed = _fed()
    profiles = _profiles(SPEEDS)
    strategy = FedAvg(clients_per_round=8, local=LOCAL)
    sim = Simulation(NumpyLogisticRegression(10, 4), fed, strategy, profiles=profiles)
    h = sim.run(2).history
    assert h[0]["sim_round_s"] == 20.0 and h[0]["num_online"] == 8  # waits for client 3
    assert h[1]["sim_time_s"] == 40.0
    sim = dataclasses.replace(sim, deadline=DropLate(deadline_s=10.0))
    h = sim.run(1).history
    assert h[0]["num_clients"] == 7 and h[0]["sim_round_s"] == 10.0
    sim = dataclasses.replace(sim, deadline=OverSelect(keep=4))
    h = sim.run(1).history
    assert h[0]["num_clients"] == 4 and h[0]["sim_round_s"] == 5.0


def test_partial_work_with_fednova_reports_capped_steps():
    fed = _fed()
    strategy = FedNova(clients_per_round=8, local=LOCAL)
    seen = {}

    class Spy(NumpyLogisticRegression):
        def fit(self, vector, data, instructions, seed):
            out = super().fit(vector, data, instructions, seed)
            seen[seed] = (instructions.max_steps, out.num_steps)
            return out

    sim = Simulation(
        Spy(10, 4), fed, strategy, profiles=_profiles(SPEEDS), deadline=PartialWork(deadline_s=4.0)
    )
    h = sim.run(1).history
    caps = sorted(seen.values(), key=lambda v: v[1])
    assert [s for _, s in caps] == [1, 2, 4, 4, 4, 4, 4, 5]
    assert h[0]["deadline_capped"] == 7.0 and h[0]["sim_round_s"] == 4.0


def test_offline_clients_are_never_offered():
    fed = _fed()
    profiles = _profiles([1.0] * 8, availability=[1, 0, 1, 0, 1, 0, 1, 0])
    offered = []

    @dataclasses.dataclass(frozen=True)
    class Spy:
        inner: FedAvg

        def init(self, v):
            return self.inner.init(v)

        def configure_fit(self, rnd, vector, state, clients, rng):
            offered.append(list(clients))
            return self.inner.configure_fit(rnd, vector, state, clients, rng)

        @property
        def client_fit(self):
            return self.inner.client_fit

        def aggregate_fit(self, *a):
            return self.inner.aggregate_fit(*a)

    sim = Simulation(
        NumpyLogisticRegression(10, 4),
        fed,
        Spy(FedAvg(clients_per_round=8, local=LOCAL)),
        profiles=profiles,
    )
    h = sim.run(3).history
    assert offered == [[0, 2, 4, 6]] * 3
    assert all(r["num_clients"] == 4 and r["num_online"] == 4 for r in h)


def test_heterogeneous_run_is_deterministic():
    fed = _fed()
    spec = ProfileSpec(
        time_per_step=0.1,
        speed=Lognormal(median=1.0, spread=10.0),
        download=Lognormal(median=1e5, spread=10.0),
        upload=Lognormal(median=5e4, spread=10.0),
        availability=0.7,
    )

    def run(seed):
        sim = Simulation(
            NumpyLogisticRegression(10, 4),
            fed,
            FedAvg(clients_per_round=4, local=LOCAL),
            seed=seed,
            profiles=spec.sample(8, seed),
            deadline=DropLate(deadline_s=1.0),
        )
        return sim.run(4)

    a, b, c = run(3), run(3), run(4)
    assert np.array_equal(a.vector, b.vector)
    assert _strip(a.history) == _strip(b.history)
    assert [h["sim_time_s"] for h in a.history] != [h["sim_time_s"] for h in c.history]


def test_engine_without_profiles_is_unchanged():
    fed = _fed()
    strategy = FedAvg(clients_per_round=4, local=LOCAL)
    base = Simulation(NumpyLogisticRegression(10, 4), fed, strategy, seed=1).run(3)
    assert not any("sim_time_s" in h for h in base.history)
    # always-online, free profiles: same clients, same model; only the sim-time keys are added
    free = _profiles([1.0] * 8)
    prof = Simulation(NumpyLogisticRegression(10, 4), fed, strategy, seed=1, profiles=free).run(3)
    assert np.array_equal(base.vector, prof.vector)
    extra = {"sim_time_s", "sim_round_s", "num_online"}
    assert _strip(base.history) == [
        {k: v for k, v in h.items() if k not in extra} for h in _strip(prof.history)
    ]


def test_misconfiguration_errors():
    fed = _fed()
    strategy = FedAvg(clients_per_round=4, local=LOCAL)
    with pytest.raises(FedfleetError, match="needs client profiles"):
        Simulation(
            NumpyLogisticRegression(10, 4), fed, strategy, deadline=DropLate(deadline_s=1.0)
        ).run(1)
    with pytest.raises(FedfleetError, match="profiles describe 3 clients"):
        Simulation(
            NumpyLogisticRegression(10, 4), fed, strategy, profiles=_profiles([1.0] * 3)
        ).run(1)
