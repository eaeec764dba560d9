"""Vertical protocols by name: settings from config keys, bad keys refused, valid ones listed."""

from __future__ import annotations

import pytest

from fedfleet.errors import ConfigError
from fedfleet.vertical import SplitNN
from fedfleet.vertical._registry import PROTOCOLS, Deployable, build_protocol


def test_settings_become_the_protocols_dataclass() -> None:
    p = build_protocol("split-nn", {"bottom_widths": [8, 4], "epochs": 3, "dp_noise": 0.1})
    assert p == SplitNN(bottom_widths=(8, 4), epochs=3, dp_noise=0.1)
    assert isinstance(p, Deployable)
    assert PROTOCOLS["split-nn"] is SplitNN


def test_unknown_protocols_and_keys_are_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown vertical protocol 'split'.*split-nn"):
        build_protocol("split", {})
    with pytest.raises(ConfigError, match=r"\['epoch'\].*valid keys: .*epochs"):
        build_protocol("split-nn", {"epoch": 3})
    with pytest.raises(ConfigError, match="lr must be > 0"):
        build_protocol("split-nn", {"lr": 0})
