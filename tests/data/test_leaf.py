"""LEAF loading: exact natural indices on a hand-written dataset, errors, and real FEMNIST."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedfleet.data import femnist, load_leaf
from fedfleet.errors import DatasetError

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def leaf_file(users: dict[str, tuple[list, list]]) -> dict:
    return {
        "users": list(users),
        "num_samples": [len(y) for _, y in users.values()],
        "user_data": {u: {"x": x, "y": y} for u, (x, y) in users.items()},
    }


def rows(*values: float) -> list[list[float]]:
    """One 4-value sample per value, filled with it, so a sample is identifiable by its value."""
    return [[v] * 4 for v in values]


@pytest.fixture
def leaf_dir(tmp_path: Path) -> Path:
    """Two train files, named so that file-name order differs from creation order; user "b" has
    no test samples."""
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    files = {
        "train/2_second.json": {"c": (rows(5, 6, 7), [4, 0, 4])},
        "train/1_first.json": {"a": (rows(1, 2), [0, 1]), "b": (rows(3, 4), [2, 2])},
        "test/2_second.json": {"c": (rows(50), [3])},
        "test/1_first.json": {"a": (rows(10, 11), [1, 1])},
    }
    for name, users in files.items():
        (tmp_path / name).write_text(json.dumps(leaf_file(users)))
    return tmp_path


def test_users_and_natural_indices(leaf_dir: Path) -> None:
    task = load_leaf(leaf_dir)
    assert task.name == "leaf"
    assert task.user_ids == ("a", "b", "c")
    np.testing.assert_array_equal(task.train.x[:, 0], [1, 2, 3, 4, 5, 6, 7])
    np.testing.assert_array_equal(task.train.y, [0, 1, 2, 2, 4, 0, 4])
    np.testing.assert_array_equal(task.test.x[:, 0], [10, 11, 50])
    np.testing.assert_array_equal(task.test.y, [1, 1, 3])
    assert [p.tolist() for p in task.natural_train] == [[0, 1], [2, 3], [4, 5, 6]]
    assert [p.tolist() for p in task.natural_test] == [[0, 1], [], [2]]
    assert all(p.dtype == np.int64 for p in task.natural_train + task.natural_test)
    assert task.num_classes == 5  # max label 4, over train and test
    assert task.input_shape == (4,)
    assert task.train.x.dtype == np.float32 and task.train.x.shape == (7, 4)


def test_image_shape_and_fixed_classes(leaf_dir: Path) -> None:
    task = load_leaf(leaf_dir, "tiny", image_shape=(1, 2, 2), num_classes=8)
    assert task.name == "tiny" and task.num_classes == 8
    assert task.input_shape == (1, 2, 2) and task.train.x.shape == (7, 1, 2, 2)
    with pytest.raises(DatasetError, match=r"cannot reshape samples of 4 values .*\(1, 3, 3\)"):
        load_leaf(leaf_dir, image_shape=(1, 3, 3))
    with pytest.raises(DatasetError, match=r"label 4 found .* 3 classes"):
        load_leaf(leaf_dir, num_classes=3)


def test_missing_directory_and_folders(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"nowhere does not exist.*train/ and test/"):
        load_leaf(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match=r"missing folder .*train"):
        load_leaf(tmp_path)
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    with pytest.raises(DatasetError, match=r"no \*\.json files in .*train"):
        load_leaf(tmp_path)


def test_malformed_json_names_the_file(leaf_dir: Path) -> None:
    (leaf_dir / "test" / "1_first.json").write_text('{"users": ["a"], "user_data": {')
    with pytest.raises(DatasetError, match=r"1_first\.json is not valid JSON"):
        load_leaf(leaf_dir)


def test_missing_key(leaf_dir: Path) -> None:
    (leaf_dir / "train" / "2_second.json").write_text(json.dumps({"users": ["c"]}))
    with pytest.raises(DatasetError, match=r"2_second\.json: missing key 'user_data'"):
        load_leaf(leaf_dir)


def test_x_y_length_mismatch_names_user_and_file(leaf_dir: Path) -> None:
    doc = leaf_file({"c": (rows(5, 6, 7), [4, 0])})
    doc["num_samples"] = [3]
    (leaf_dir / "train" / "2_second.json").write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match=r"2_second\.json: user 'c' has 3 samples in x but 2"):
        load_leaf(leaf_dir)


def test_text_datasets_are_refused(leaf_dir: Path) -> None:
    shakespeare = leaf_file({"c": (["to be or not to b", "hello world, how "], ["e", "a"])})
    (leaf_dir / "train" / "2_second.json").write_text(json.dumps(shakespeare))
    with pytest.raises(DatasetError, match=r"user 'c' has text samples; text LEAF datasets"):
        load_leaf(leaf_dir)


def test_ragged_rows_are_refused(leaf_dir: Path) -> None:
    doc = leaf_file({"c": ([[1.0, 2.0], [3.0]], [0, 1])})
    (leaf_dir / "train" / "2_second.json").write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match=r"user 'c' has x rows that are not equal-length"):
        load_leaf(leaf_dir)


@pytest.fixture(scope="module")
def real_femnist():
    path = SHARED_DATA / "femnist"
    if not path.is_dir():
        pytest.skip(f"real FEMNIST not found at {path}")
    return femnist(path)


def test_real_femnist(real_femnist) -> None:
    task = real_femnist
    assert task.name == "femnist" and task.num_classes == 62
    assert len(task.user_ids) == 105 and len(set(task.user_ids)) == 105
    assert task.train.x.shape == (14708, 1, 28, 28) and len(task.test) == 1685
    assert task.input_shape == (1, 28, 28)
    assert 0.0 <= float(task.train.x.min()) and float(task.train.x.max()) <= 1.0
    # Every writer has train and test samples, and the natural parts cover each pool exactly.
    for parts, n in ((task.natural_train, 14708), (task.natural_test, 1685)):
        assert min(len(p) for p in parts) >= 1
        np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(n))
    assert len(np.unique(task.train.y)) == 62
