"""Deployed DP noise: from the OS CSPRNG unless a test run asks for seeded noise by name."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from fedfleet.errors import FedfleetError
from fedfleet.runs import dump_config, for_deployment, load_config
from fedfleet.runs._build import build_strategy, build_trainer, load_task_for
from fedfleet.strategies import ClientUpdate

DP = ["strategy.name=dpfedavg", "privacy.noise_multiplier=1.0", "data.num_clients=4"]


def test_unset_noise_becomes_secure_and_the_callers_config_is_untouched():
    config = load_config(overrides=DP)
    deployed = for_deployment(config)
    assert deployed.privacy.noise == "secure"
    assert config.privacy.noise == "seeded"  # the simulation default, unchanged
    assert deployed.privacy.noise_multiplier == 1.0 and deployed.seed == config.seed
    # what a deployed server writes beside its model says secure, and is accepted again
    assert 'noise = "secure"' in dump_config(deployed)
    assert for_deployment(deployed).privacy.noise == "secure"


def test_explicit_seeded_is_refused_with_the_rule_and_the_fix(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[privacy]\nnoise = "seeded"\n')
    with pytest.raises(FedfleetError) as err:
        for_deployment(load_config(path))
    message = str(err.value)
    assert "OS CSPRNG" in message and "config.toml" in message
    assert 'noise = "seeded-testing-only"' in message
    # a simulation's written config, loaded for deployment, is refused the same way
    simulated = tmp_path / "config.toml"
    simulated.write_text(dump_config(load_config(overrides=DP)))
    with pytest.raises(FedfleetError, match="seeded-testing-only"):
        for_deployment(load_config(simulated))


def test_seeded_testing_only_is_kept_with_a_warning(caplog):
    config = load_config(overrides=[*DP, "privacy.noise=seeded-testing-only"])
    with caplog.at_level(logging.WARNING, logger="fedfleet"):
        deployed = for_deployment(config)
    assert deployed.privacy.noise == "seeded-testing-only"
    assert any("reproducible" in r.getMessage() for r in caplog.records)


def test_explicit_secure_passes_silently(caplog):
    config = load_config(overrides=[*DP, "privacy.noise=secure"])
    with caplog.at_level(logging.WARNING, logger="fedfleet"):
        assert for_deployment(config) is config
    assert not caplog.records


def test_seeded_testing_only_draws_exactly_the_seeded_noise():
    def aggregate(noise: str) -> np.ndarray:
        config = load_config(overrides=[*DP, f"privacy.noise={noise}", "privacy.sampling=poisson"])
        task = load_task_for(config)
        trainer = build_trainer(config, task)
        strategy = build_strategy(config, trainer, 4)
        w = np.zeros(trainer.layout.size, np.float32)
        updates = [ClientUpdate(c, np.full(w.size, 0.01), 5, 1) for c in range(2)]
        return strategy.aggregate_fit(1, w, strategy.init(w), updates)[0]

    seeded = aggregate("seeded")
    np.testing.assert_array_equal(aggregate("seeded-testing-only"), seeded)
    assert not np.array_equal(aggregate("secure"), seeded)
