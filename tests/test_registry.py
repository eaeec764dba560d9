"""The config's registries: each name declares its keys, and the config is validated by the entry
its name picks; the rules across sections ask the entries for their capabilities."""

import re
from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field, ValidationError

from fedfleet.errors import ConfigError
from fedfleet.runs import dump_config, load_config
from fedfleet.runs._datasets import DATASETS
from fedfleet.runs._models import MODELS
from fedfleet.runs._registry import Entry, Params, Registry
from fedfleet.runs._resume import config_changes
from fedfleet.runs.algorithms import ALGORITHMS, StrategyParams


class _Base(Params):
    common: int = 1
    """A key every entry has."""


class _A(_Base):
    name: Literal["a"] = "a"
    x: float = Field(0.5, ge=0)
    """A's own key."""


class _B(_Base):
    name: Literal["b"] = "b"
    y: int = 2
    """B's own key."""


def _registry() -> Registry[Entry, _Base]:
    reg: Registry[Entry, _Base] = Registry(kind="thing", section="things", base=_Base, default="a")
    reg.register(Entry(name="a", params=_A, summary="the first"))
    reg.register(Entry(name="b", params=_B, summary="the second"))
    return reg


def _errors(reg, value):
    with pytest.raises(ValidationError) as info:
        reg.validate(value)
    return info.value.errors()


def test_the_name_picks_the_parameters_and_the_default_name_applies():
    reg = _registry()
    assert reg.validate({}) == _A()
    assert reg.validate({"name": "b", "y": 5}) == _B(y=5)
    assert reg.validate(_B()) == _B()  # already built: kept
    assert reg.names() == ["a", "b"] and "b" in reg and [e.name for e in reg] == ["a", "b"]


def test_an_unknown_name_lists_the_registered_ones():
    (err,) = _errors(_registry(), {"name": "aa"})
    assert err["loc"] == ("name",)
    assert err["msg"] == "Input should be 'a' or 'b'; did you mean 'a'?"
    with pytest.raises(ConfigError, match=r"unknown thing 'c'; registered: a, b"):
        _registry()["c"]


def test_an_unknown_key_names_the_entry_its_keys_and_who_takes_it():
    (err,) = _errors(_registry(), {"name": "a", "y": 3})
    assert err["msg"] == (
        "unknown key 'things.y' for thing 'a'; y is a parameter of b and has no effect with a; "
        "valid keys in [things] for a: name, common, x"
    )
    (err,) = _errors(_registry(), {"zzz": 3})
    assert "valid keys in [things] for a: name, common, x" in err["msg"]
    assert "parameter of" not in err["msg"]


def test_a_value_where_a_section_belongs_says_so():
    (err,) = _errors(_registry(), "b")
    assert "[things] is a section of keys" in err["msg"]


def test_registration_refuses_what_would_break_the_union():
    reg = _registry()
    with pytest.raises(ConfigError, match="registered twice"):
        reg.register(Entry(name="a", params=_A, summary=""))

    class _C(_Base):
        name: Literal["c"] = "c"
        z: int = 0  # no docstring

    with pytest.raises(ConfigError, match=r"give _C's fields z a docstring"):
        reg.register(Entry(name="c", params=_C, summary=""))
    with pytest.raises(ConfigError, match=r'must declare name: Literal\["d"\] = "d"'):
        reg.register(Entry(name="d", params=_A, summary=""))
    with pytest.raises(ConfigError, match="must derive from _Base"):
        reg.register(Entry(name="e", params=StrategyParams, summary=""))


@pytest.mark.parametrize("registry", [ALGORITHMS, DATASETS, MODELS], ids=lambda r: r.kind)
def test_every_registered_key_is_documented(registry):
    for entry in registry:
        assert entry.summary
        for key, field in entry.params.model_fields.items():
            assert key == "name" or field.description, (entry.name, key)
        assert entry.params().name == entry.name  # the defaults alone make a valid section


def test_the_old_readme_configs_still_load_and_round_trip(tmp_path):
    for overrides in (
        [],
        ["strategy.name=fedavgm", "strategy.server_lr=0.5"],
        ["strategy.name=fedprox", "strategy.mu=0.1", "strategy.straggler_fraction=0.5"],
        ["strategy.name=fedadam", "strategy.b2=0.999"],
        ["strategy.name=fedbuff", "strategy.buffer_size=4"],
        ["data.name=synthetic", "data.partition=natural", "model.name=logreg"],
        ["data.name=mnist", "data.path=/tmp", "model.name=cnn"],
    ):
        cfg = load_config(None, overrides)
        path = tmp_path / "config.toml"
        path.write_text(dump_config(cfg))
        assert load_config(path) == cfg


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        # keys that were accepted everywhere and did nothing with some algorithms
        (
            ["strategy.name=fedavg", "strategy.mu=0.1"],
            "unknown key 'strategy.mu' for strategy 'fedavg'; mu is a parameter of fedprox, "
            "fednova and has no effect with fedavg",
        ),
        (
            ["strategy.name=scaffold", "strategy.straggler_fraction=0.2"],
            "unknown key 'strategy.straggler_fraction' for strategy 'scaffold'",
        ),
        (
            ["strategy.name=qfedavg", "strategy.server_momentum=0.9"],
            "server_momentum is a parameter of fedavg, fedavgm, fedprox, fednova, fedper, fedrep",
        ),
        (["strategy.name=fedbuff", "strategy.clients_per_round=4"], "valid keys in [strategy] "),
        (["model.name=cnn", "model.hidden=[4]"], "unknown key 'model.hidden' for model 'cnn'"),
        (["data.name=digits", "data.path=/tmp"], "path is a parameter of mnist, fashion-mnist"),
        # the rules across sections read the entries' capabilities
        (["strategy.name=fedsgd"], "strategy.name: Input should be 'fedavg', 'fedavgm'"),
        (["strategy.name=fedrep", "model.name=logreg", "model.backend=numpy"], "fedrep needs"),
        (["model.name=mlp", "model.backend=numpy"], "supports model.name = 'logreg' only"),
        (["data.partition=natural"], "needs a dataset with its own users (synthetic, "),
        (["strategy.name=fedbuff", "deadline.policy=drop", "deadline.seconds=2"], "own clock"),
        (["strategy.name=dpfedavg"], "dpfedavg needs privacy.noise_multiplier"),
    ],
)
def test_what_an_entry_does_not_take_is_refused_with_the_reason(overrides, fragment):
    with pytest.raises(ConfigError, match="invalid configuration") as info:
        load_config(None, overrides)
    assert fragment in str(info.value)


def test_capabilities_are_declared_on_the_entries():
    assert ALGORITHMS.names(lambda e: e.asynchronous) == ["fedbuff"]
    assert set(ALGORITHMS.names(lambda e: e.needs_torch is not None)) == {
        "scaffold",
        "fednova",
        "fedper",
        "fedrep",
    }
    assert ALGORITHMS.names(lambda e: e.needs_noise) == ["dpfedavg"]
    assert MODELS.names(lambda e: e.numpy) == ["logreg"]
    assert DATASETS.names(lambda e: e.population is not None) == [
        "synthetic-population",
        "synthetic-iid-population",
    ]
    # FedBuff's strategy runs on the server's asynchronous loop; its engine simulates it
    fedbuff = ALGORITHMS["fedbuff"]
    assert fedbuff.engine is not None and ALGORITHMS["fedavg"].engine is None


def test_config_changes_reports_another_algorithm_by_its_name():
    a = load_config(None, ["strategy.name=fedprox", "strategy.mu=0.5"])
    b = load_config(None, ["strategy.name=fedprox", "strategy.mu=0.1"])
    c = load_config(None, ["strategy.name=qfedavg"])
    assert config_changes(a, b) == ["strategy.mu"]
    assert config_changes(a, c) == ["strategy.name"]


def test_the_readme_lists_every_registered_algorithm():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Algorithms", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    listed = {name for row in rows for name in re.findall(r"`([a-z-]+)`", row)}
    assert set(ALGORITHMS.names()) <= listed, "add a row to the README's algorithm table"
