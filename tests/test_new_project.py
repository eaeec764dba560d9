"""``fedfleet new NAME`` and the user's own code in a config (``model.name = "custom"``,
``data.name = "custom"``): a real project folder, its own tests run by pytest, and a real run of
it through the command line."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib

import numpy as np
import pytest

from fedfleet.errors import ConfigError, DatasetError
from fedfleet.runs import load_config
from fedfleet.runs._build import build_run
from fedfleet.scaffold import ProjectExists, new_project


def _run(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def test_a_new_project_passes_its_own_tests_and_runs_its_own_model_and_data(tmp_path):
    proc = _run("-m", "fedfleet", "new", "demo", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    demo = tmp_path / "demo"
    files = {"model.py", "data.py", "fedfleet.toml", "test_project.py", "pytest.ini", "README.md"}
    assert {p.name for p in demo.iterdir()} == files
    assert "fedfleet run --config demo/fedfleet.toml" in proc.stdout

    tests = _run("-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=demo)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "3 passed" in tests.stdout

    out = tmp_path / "out"
    args = ["-m", "fedfleet", "run", "-q", "--config", "demo/fedfleet.toml"]
    proc = _run(*args, "--set", "rounds=2", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "fedfleet custom: 1200 train / 300 test samples over 10 clients" in proc.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    assert rows[-1]["test_accuracy"] > 1 / 3

    # the resolved config names the project's files absolutely: it reruns from anywhere, the
    # same run bit for bit
    saved = tomllib.loads((out / "config.toml").read_text())
    assert saved["model"]["factory"] == f"{demo.resolve() / 'model.py'}:build"
    assert saved["data"]["loader"] == f"{demo.resolve() / 'data.py'}:load"
    again = tmp_path / "again"
    proc = _run(
        "-m", "fedfleet", "run", "-q", "--config", str(out / "config.toml"), "--out", str(again),
        cwd=demo,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rerun = [json.loads(line) for line in (again / "metrics.jsonl").read_text().splitlines()]
    assert [r["test_accuracy"] for r in rerun] == [r["test_accuracy"] for r in rows]


def test_new_refuses_a_folder_that_is_not_empty_and_fills_an_empty_one(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    proc = _run("-m", "fedfleet", "new", "taken", cwd=tmp_path)
    assert proc.returncode == 2
    assert "taken is a folder that is not empty" in proc.stderr
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ProjectExists, match="file is a file"):
        new_project(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    written = new_project(tmp_path / "empty")
    assert len(written) == 6 and all(p.parent == tmp_path / "empty" for p in written)
    assert '"empty"' in (tmp_path / "empty" / "data.py").read_text()  # the task's name


def _project(tmp_path, model: str | None = None, data: str | None = None):
    """A new project with model.py and data.py replaced by these texts (None keeps one)."""
    folder = tmp_path / "proj"
    new_project(folder)
    if model is not None:
        (folder / "model.py").write_text(model)
    if data is not None:
        (folder / "data.py").write_text(data)
    return folder


def test_references_are_read_from_the_config_files_folder_not_the_working_one(
    tmp_path, monkeypatch
):
    folder = _project(
        tmp_path,
        "from torch import nn\n"
        "from helpers import width\n"  # a neighbour module, as python model.py would import it
        "def wide(input_shape, num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], width()),\n"
        "                         nn.ReLU(), nn.Linear(width(), num_classes))\n",
    )
    (folder / "helpers.py").write_text("def width():\n    return 7\n")
    monkeypatch.chdir(tmp_path)  # not the project's folder
    cfg = load_config(folder / "fedfleet.toml", ["model.factory=model.py:wide", "rounds=1"])
    assert cfg.model.factory == f"{folder.resolve() / 'model.py'}:wide"
    pieces = build_run(cfg)
    # 8 features -> 7 -> 3 classes
    assert pieces.simulation.trainer.layout.size == 8 * 7 + 7 + 7 * 3 + 3
    # without a config file, a relative reference is read from the working directory
    cfg = load_config(None, ["model.name=custom", "model.factory=proj/model.py:wide"])
    assert cfg.model.factory == f"{folder.resolve() / 'model.py'}:wide"


def test_a_bad_reference_says_what_is_wrong_and_what_is_there(tmp_path):
    folder = _project(tmp_path, "import torch\n\ndef build(shape, classes):\n    return 3\n")
    config = folder / "fedfleet.toml"
    with pytest.raises(ConfigError, match=r"model.factory: 'model.py' is not a reference"):
        load_config(config, ["model.factory=model.py"])
    with pytest.raises(ConfigError, match=r"there is no file .*proj/modle.py"):
        build_run(load_config(config, ["model.factory=modle.py:build"]))
    with pytest.raises(ConfigError, match=r"defines no function 'make'; it defines build"):
        build_run(load_config(config, ["model.factory=model.py:make"]))
    with pytest.raises(ConfigError, match=r"returned int, not a torch.nn.Module"):
        build_run(load_config(config))
    (folder / "broken.py").write_text("x = 1\n\ny = undefined_name\n")
    with pytest.raises(ConfigError, match=r"importing .*broken.py, line 3 failed: NameError"):
        build_run(load_config(config, ["model.factory=broken.py:build"]))
    (folder / "data.py").write_text("def load(seed):\n    return [1, 2]\n")
    with pytest.raises(DatasetError, match=r"returned list, not a fedfleet.data.TaskData"):
        build_run(load_config(config))


def test_a_loader_with_natural_users_gives_one_client_per_user(tmp_path):
    data = (
        "import numpy as np\n"
        "from fedfleet.data import ArrayDataset, TaskData\n"
        "def load(seed):\n"
        "    rng = np.random.default_rng(seed)\n"
        "    x = rng.normal(size=(60, 8)).astype(np.float32)\n"
        "    y = (x[:, 0] > 0).astype(np.int64)\n"
        "    users = tuple(np.arange(k * 20, k * 20 + 15) for k in range(3))\n"
        "    tests = tuple(np.arange(k * 20 + 15, k * 20 + 20) for k in range(3))\n"
        "    return TaskData('users', ArrayDataset(x, y), ArrayDataset(x, y), 2, (8,),\n"
        "                    natural_train=users, natural_test=tests, user_ids=('a', 'b', 'c'))\n"
    )
    folder = _project(tmp_path, data=data)
    cfg = load_config(folder / "fedfleet.toml", ["data.partition=natural", "rounds=1"])
    federation = build_run(cfg).simulation.federation
    assert federation.num_clients == 3
    np.testing.assert_array_equal(federation.train_data(1).y, federation.task.train.y[20:35])
