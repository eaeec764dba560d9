"""The dataset registry behind ``data.name`` and ``fedfleet datasets``; the data API surface."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedfleet.data._registry import DATASETS, default_path, describe, load_task
from fedfleet.errors import DatasetError


def test_names() -> None:
    assert set(DATASETS) == {
        "digits",
        "mnist",
        "fashion-mnist",
        "femnist",
        "leaf",
        "hf",
        "shakespeare",
        "text",
        "synthetic",
        "synthetic-iid",
    }
    assert {n for n, info in DATASETS.items() if info.needs_path} == {
        "mnist",
        "fashion-mnist",
        "femnist",
        "leaf",
        "hf",
        "shakespeare",
        "text",
    }


def test_load_with_options() -> None:
    assert len(load_task("digits", test_fraction=0.5, seed=0).test) == 899
    task = load_task("synthetic", alpha=0.0, beta=0.5, num_devices=3, seed=1)
    assert task.name == "synthetic(0.0,0.5)" and len(task.user_ids) == 3
    assert load_task("synthetic-iid", num_devices=2).name == "synthetic-iid"


def test_errors_list_the_valid_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDFLEET_DATA", raising=False)
    with pytest.raises(DatasetError, match=r"unknown dataset 'mnsit'.*digits, mnist.*'mnist'\?"):
        load_task("mnsit")
    with pytest.raises(DatasetError, match=r"no option 'iid'; valid: alpha, beta, num_devices"):
        load_task("synthetic", iid=True)
    with pytest.raises(DatasetError, match=r"'mnist' is read from files: pass data.path"):
        load_task("mnist")
    with pytest.raises(DatasetError, match=r"'digits' is bundled .* remove data.path"):
        load_task("digits", path="/tmp")


def test_default_path_and_describe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mnist").mkdir()
    monkeypatch.setenv("FEDFLEET_DATA", str(tmp_path))
    assert default_path("mnist") == tmp_path / "mnist"
    assert default_path("femnist") is None  # no femnist/ folder there
    assert default_path("digits") is None
    rows = {name: source for name, _, source in describe()}
    assert rows["mnist"] == str(tmp_path / "mnist")
    assert rows["femnist"] == "not found: pass data.path or set FEDFLEET_DATA"
    assert rows["digits"] == "bundled with scikit-learn"
    assert rows["synthetic"] == "generated"
    # The path found there is the one load_task reads from.
    with pytest.raises(DatasetError, match=r"missing file .*mnist.*train-images-idx3-ubyte"):
        load_task("mnist")
