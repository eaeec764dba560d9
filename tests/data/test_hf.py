"""Datasets where users keep them (``data.name = 'hf'``): each test writes a small real dataset
(a ``save_to_disk`` folder, Parquet and CSV files, a folder of PNGs) and trains on it through the
config path, with no hub access (HF_DATASETS_OFFLINE=1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ["HF_DATASETS_OFFLINE"] = "1"  # before datasets is imported: no hub, ever
datasets = pytest.importorskip("datasets", reason="the hf extra (datasets) is not installed")
pd = pytest.importorskip("pandas", reason="pandas (a datasets dependency) is not installed")
Image = pytest.importorskip("PIL.Image", reason="Pillow is not installed")

from fedfleet.data._hf import infer_format, load_hf  # noqa: E402
from fedfleet.errors import ConfigError, DatasetError  # noqa: E402
from fedfleet.runs import load_config  # noqa: E402
from fedfleet.runs._build import build_run  # noqa: E402

CLASSES, DIM = 4, 6
RUN = ["rounds=6", "client.epochs=2", "client.lr=0.1", "strategy.clients_per_round=6"]


@pytest.fixture(autouse=True)
def _hf_cache(tmp_path, monkeypatch):
    """datasets caches what it converts to Arrow: keep that in the test's folder."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def _blobs(n: int, seed: int, users: int = 8) -> dict[str, np.ndarray]:
    """A learnable table: x0..x5 Gaussian around one mean per class; a user column whose users
    each favour two of the classes (so the natural split is non-IID)."""
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(99).normal(0, 2.5, size=(CLASSES, DIM))
    user = rng.integers(0, users, size=n)
    y = (user % CLASSES + rng.integers(0, 2, size=n)) % CLASSES
    x = means[y] + rng.normal(0, 1.0, size=(n, DIM))
    cols = {f"x{j}": x[:, j] for j in range(DIM)}
    return {**cols, "label": y, "user": np.array([f"u{u:02d}" for u in user])}


def _fedfleet(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "fedfleet", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def _accuracy(overrides: list[str]) -> tuple[float, object]:
    pieces = build_run(load_config(None, overrides))
    return pieces.simulation.run(6).final["test_accuracy"], pieces


def test_a_saved_dataset_trains_above_chance_through_the_cli(tmp_path):
    table = _blobs(600, seed=1)
    # a list column and scalar columns: stacked side by side into 6 features
    rows = {
        "v": np.stack([table["x0"], table["x1"], table["x2"]], axis=1).tolist(),
        "x3": table["x3"],
        "x4": table["x4"],
        "x5": table["x5"],
        "label": table["label"],
        "note": ["ignored"] * 600,
    }
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "saved"))
    assert infer_format(tmp_path / "saved") == "disk"
    out = tmp_path / "run"
    proc = _fedfleet(
        "run",
        "-q",
        "--out",
        str(out),
        "--set",
        "data.name=hf",
        "--set",
        f"data.path={tmp_path / 'saved'}",
        "--set",
        'data.features=["v", "x3", "x4", "x5"]',
        "--set",
        "data.partition=iid",
        *(a for s in RUN for a in ("--set", s)),
        home=tmp_path / "hf-home",
    )
    assert proc.returncode == 0, proc.stderr
    assert "hf: 480 train / 120 test samples over 20 clients" in proc.stderr
    rows_out = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows_out] == list(range(1, 7))
    assert rows_out[-1]["test_accuracy"] > 0.7 > 1 / CLASSES


def test_parquet_splits_and_a_client_id_column_give_one_client_per_user(tmp_path):
    folder = tmp_path / "parquet"
    folder.mkdir()
    train, test = _blobs(800, seed=2), _blobs(200, seed=3)
    # string labels, numbered in sorted order
    names = np.array(["ant", "bee", "cat", "dog"])
    for t in (train, test):
        t["species"] = names[t.pop("label")]
    pd.DataFrame(train).to_parquet(folder / "train.parquet")
    pd.DataFrame(test).to_parquet(folder / "test.parquet")

    acc, pieces = _accuracy(
        [
            "data.name=hf",
            f"data.path={folder}",
            "data.label=species",
            "data.client_id=user",
            "data.partition=natural",
            "eval.federated_every=6",
            *RUN,
        ]
    )
    task, federation = pieces.task, pieces.simulation.federation
    users = sorted(set(train["user"]))
    assert task.user_ids == tuple(users) and federation.num_clients == len(users)
    assert (len(task.train), len(task.test), task.num_classes) == (800, 200, 4)
    for k, user in enumerate(users):
        mine = train["user"] == user
        data = federation.train_data(k)
        assert len(data) == mine.sum()
        np.testing.assert_array_equal(data.y, np.searchsorted(names, train["species"][mine]))
        np.testing.assert_allclose(data.x[:, 0], train["x0"][mine], rtol=1e-6)
        # the user's held-out rows are its rows of test.parquet
        assert len(federation.test_data(k)) == (test["user"] == user).sum()
    assert acc > 0.7


def test_a_csv_file_is_held_out_by_test_fraction_and_split_by_any_partitioner(tmp_path):
    table = _blobs(500, seed=4)
    path = tmp_path / "clients.csv"
    pd.DataFrame(table).to_csv(path, index=False)
    sets = [
        "data.name=hf",
        f"data.path={path}",
        "data.features=[" + ", ".join(f'"x{j}"' for j in range(DIM)) + "]",
        "data.test_fraction=0.25",
    ]
    for partition in ("dirichlet", "quantity"):
        acc, pieces = _accuracy([*sets, f"data.partition={partition}", *RUN])
        assert (len(pieces.task.train), len(pieces.task.test)) == (375, 125)
        sizes = [len(pieces.simulation.federation.train_data(k)) for k in range(20)]
        assert sum(sizes) == 375
        assert acc > 0.6
    # the same seed holds out the same rows; another seed others
    a = load_hf(path, label="label", client_id=None, seed=0, features=["x0"])
    b = load_hf(path, label="label", seed=0, features=["x0"])
    c = load_hf(path, label="label", seed=1, features=["x0"])
    np.testing.assert_array_equal(a.test.x, b.test.x)
    assert not np.array_equal(a.test.x, c.test.x)


def test_without_a_test_split_each_user_keeps_its_own_held_out_rows(tmp_path):
    table = _blobs(400, seed=5)
    path = tmp_path / "clients.parquet"
    pd.DataFrame(table).to_parquet(path)
    task = load_hf(path, client_id="user", test_fraction=0.25, seed=0)
    assert task.input_shape == (DIM,)  # every column but label and user
    assert len(task.user_ids) == 8
    for k, user in enumerate(task.user_ids):
        n = int((table["user"] == user).sum())
        n_test = len(task.natural_test[k])
        assert len(task.natural_train[k]) + n_test == n
        assert n_test == int(np.floor(0.25 * n + 0.5))
        # the rows are the user's: their features are among the user's rows
        mine = set(table["x0"][table["user"] == user].astype(np.float32).tolist())
        assert set(task.test.x[task.natural_test[k], 0].tolist()) <= mine
        assert set(task.train.x[task.natural_train[k], 0].tolist()) <= mine


def _png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def test_an_image_folder_of_class_subfolders_trains_above_chance_through_the_cli(tmp_path):
    rng = np.random.default_rng(6)
    root = tmp_path / "images"
    regions = {"left": (slice(None), slice(0, 4)), "right": (slice(None), slice(4, 8)),
               "top": (slice(0, 4), slice(None))}  # fmt: skip
    for split, count in (("train", 40), ("test", 12)):
        for cls, where in regions.items():
            for i in range(count):
                img = rng.uniform(0, 0.35, size=(8, 8))
                img[where] += 0.6
                _png(root / split / cls / f"{i}.png", (img * 255).astype(np.uint8))
    task = load_hf(root)
    assert (task.input_shape, task.num_classes) == ((1, 8, 8), 3)
    assert (len(task.train), len(task.test)) == (120, 36)
    # pixel values are the PNG's bytes / 255; labels follow the sorted class folders
    first = np.asarray(Image.open(root / "train" / "left" / "0.png"), dtype=np.float32) / 255
    assert any(np.array_equal(first, x[0]) for x in task.train.x[task.train.y == 0])

    out = tmp_path / "run"
    proc = _fedfleet(
        "run",
        "-q",
        "--out",
        str(out),
        "--set",
        "data.name=hf",
        "--set",
        f"data.path={root}",
        "--set",
        "data.num_clients=6",
        "--set",
        "data.partition=iid",
        *(a for s in RUN for a in ("--set", s)),
        home=tmp_path / "hf-home",
    )
    assert proc.returncode == 0, proc.stderr
    final = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["round"] == 6 and final["test_accuracy"] > 0.8 > 1 / 3


def test_colour_images_become_three_channels(tmp_path):
    rng = np.random.default_rng(7)
    written = {}
    for cls in ("a", "b"):
        for i in range(2):
            pixels = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
            _png(tmp_path / "rgb" / cls / f"{i}.png", pixels)
            written[(cls, i)] = pixels
    task = load_hf(tmp_path / "rgb", test_fraction=0.5)
    assert task.input_shape == (3, 4, 5)
    both = np.concatenate([task.train.x, task.test.x])
    want = {p.transpose(2, 0, 1).astype(np.float32).tobytes() for p in written.values()}
    assert {(x * 255).round().astype(np.float32).tobytes() for x in both} == want


# -- errors say what is wrong and what is there ---------------------------------------------


def test_a_missing_column_is_named_with_the_columns_there_are(tmp_path):
    pd.DataFrame(_blobs(50, seed=8)).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(DatasetError) as info:
        load_hf(tmp_path / "d.csv", label="target")
    msg = str(info.value)
    assert "no column 'target' (data.label)" in msg
    assert "x0, x1, x2, x3, x4, x5, label, user" in msg
    with pytest.raises(DatasetError, match=r"no column 'x9' \(data.features\)"):
        load_hf(tmp_path / "d.csv", features=["x0", "x9"])
    with pytest.raises(DatasetError, match=r"no column 'client' \(data.client_id\)"):
        load_hf(tmp_path / "d.csv", client_id="client")


def test_a_text_feature_column_is_refused_by_name(tmp_path):
    pd.DataFrame(_blobs(50, seed=9)).to_parquet(tmp_path / "d.parquet")
    with pytest.raises(DatasetError, match="feature column 'user' holds text, not numbers"):
        load_hf(tmp_path / "d.parquet", features=["x0", "user"])
    # by default every other column is a feature, the user column too
    with pytest.raises(DatasetError, match="'user' holds text"):
        load_hf(tmp_path / "d.parquet")


def test_a_missing_path_an_unknown_split_and_missing_values_are_explained(tmp_path):
    with pytest.raises(DatasetError, match=r"data.path '.*nowhere' does not exist"):
        load_hf(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match=r"data.path '.*nowhere' does not exist"):
        load_hf(tmp_path / "nowhere", format="parquet")
    table = pd.DataFrame(_blobs(50, seed=10)).drop(columns="user")
    table.loc[7, "x2"] = np.nan
    table.to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(DatasetError, match=r"'x2' has 1 rows with missing .* row 7"):
        load_hf(tmp_path / "d.csv")
    with pytest.raises(DatasetError, match=r"no split 'valid' .*its splits: train"):
        load_hf(tmp_path / "d.csv", test_split="valid")


def test_images_of_different_sizes_are_refused(tmp_path):
    _png(tmp_path / "img" / "a" / "0.png", np.zeros((4, 4), np.uint8))
    _png(tmp_path / "img" / "b" / "0.png", np.zeros((5, 4), np.uint8))
    with pytest.raises(DatasetError, match="images of different sizes"):
        load_hf(tmp_path / "img", test_fraction=0.5)


def test_the_natural_partition_needs_a_client_id_column_and_every_run_a_path():
    with pytest.raises(ConfigError, match=r"needs data\.client_id"):
        load_config(None, ["data.name=hf", "data.path=x.csv", "data.partition=natural"])
    with pytest.raises(DatasetError, match=r"reads your data from data\.path: set it"):
        build_run(load_config(None, ["data.name=hf"]))


def test_importing_fedfleet_does_not_import_datasets():
    code = (
        "import sys, fedfleet, fedfleet.cli, fedfleet.runs._build, fedfleet.data\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'datasets', 'pandas', 'pyarrow'}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
