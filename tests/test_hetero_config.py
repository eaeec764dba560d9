"""Heterogeneous clients from the config: profiles, deadlines, selection, weighting,
compensation."""

import numpy as np
import pytest

from fedfleet.errors import ConfigError
from fedfleet.runs.build import build_run
from fedfleet.runs.config import load_config
from fedfleet.sim.deadline import DropLate, OverSelect, PartialWork
from fedfleet.strategies.compensation import Compensation
from fedfleet.strategies.selection import OortSelection
from fedfleet.strategies.weighting import Reweighted

HETERO = [
    "rounds=4",
    "data.num_clients=20",
    "clients.speed_spread=10",
    "clients.availability=0.8",
    "clients.download_bps=1e5",
    "clients.upload_bps=5e4",
    "clients.bandwidth_spread=10",
]


def test_without_client_settings_there_is_no_clock():
    sim = build_run(load_config(None, ["rounds=2"])).simulation
    assert sim.profiles is None and sim.deadline is None
    assert "sim_time_s" not in sim.run(2).final


@pytest.mark.parametrize(
    ("overrides", "policy"),
    [
        (["deadline.policy=drop", "deadline.seconds=15"], DropLate),
        (["deadline.policy=partial", "deadline.seconds=15", "strategy.name=fednova"], PartialWork),
        (["deadline.policy=overselect", "deadline.keep=7"], OverSelect),
    ],
)
def test_deadline_policies_run_on_the_simulated_clock(overrides, policy):
    sim = build_run(load_config(None, [*HETERO, *overrides])).simulation
    assert isinstance(sim.deadline, policy)
    history = sim.run(4).history
    times = [h["sim_time_s"] for h in history]
    assert times == sorted(times) and times[0] > 0
    assert all(h["num_online"] <= 20 for h in history)
    if policy is OverSelect:
        assert all(h["num_clients"] <= 7 for h in history)


def test_selection_weighting_and_compensation_wrap_the_strategy():
    cfg = load_config(
        None,
        [
            *HETERO,
            "selection.method=oort",
            "deadline.seconds=15",
            "deadline.policy=drop",
            "compensation.rule=scale_lr",
            "strategy.weighting=steps",
        ],
    )
    sim = build_run(cfg).simulation
    assert isinstance(sim.strategy, OortSelection)
    assert isinstance(sim.strategy.inner, Compensation)
    assert isinstance(sim.strategy.inner.inner, Reweighted)
    a = sim.run(4)
    b = build_run(cfg).simulation.run(4)
    assert np.array_equal(a.vector, b.vector)  # deterministic with every piece on


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["deadline.policy=drop"], "needs deadline.seconds"),
        (["deadline.policy=overselect"], "needs deadline.keep"),
        (["selection.method=oort"], "needs selection.preferred_s or a deadline"),
        (
            ["strategy.name=fedbuff", "deadline.policy=drop", "deadline.seconds=3"],
            "fedbuff runs its own clock",
        ),
    ],
)
def test_incomplete_heterogeneity_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
