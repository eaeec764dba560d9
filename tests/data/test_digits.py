"""scikit-learn digits as a task: values, shapes, a stratified seeded split."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits as sklearn_digits

from fedfleet.data import load_digits
from fedfleet.errors import DatasetError


def test_shapes_and_scaling() -> None:
    task = load_digits(test_fraction=0.2, seed=0)
    assert task.name == "digits" and task.num_classes == 10 and task.input_shape == (1, 8, 8)
    assert len(task.train) + len(task.test) == 1797 and len(task.test) == 360
    assert task.train.x.dtype == np.float32 and task.train.x.shape[1:] == (1, 8, 8)
    assert task.train.y.dtype == np.int64
    assert task.train.x.min() == 0.0 and task.train.x.max() == 1.0


def test_split_partitions_the_original_samples() -> None:
    ref = sklearn_digits()
    task = load_digits(seed=3)
    x = np.concatenate([task.train.x, task.test.x]).reshape(-1, 64) * 16
    y = np.concatenate([task.train.y, task.test.y])
    # Every original (image, label) pair appears exactly once across train and test.
    got = sorted(map(tuple, np.column_stack([x.round(), y]).astype(int).tolist()))
    want = sorted(map(tuple, np.column_stack([ref.data, ref.target]).astype(int).tolist()))
    assert got == want


def test_split_is_stratified_and_seeded() -> None:
    a, b, c = load_digits(seed=1), load_digits(seed=1), load_digits(seed=2)
    np.testing.assert_array_equal(a.train.x, b.train.x)
    assert not np.array_equal(a.test.y, c.test.y)
    full = np.bincount(sklearn_digits().target)
    # Each class's test share is within one sample of 20%.
    assert np.all(np.abs(np.bincount(a.test.y) - 0.2 * full) <= 1)


def test_bad_fraction() -> None:
    with pytest.raises(DatasetError, match=r"test_fraction must be in \(0, 1\), got 1.0"):
        load_digits(test_fraction=1.0)


def test_a_cached_split_is_the_computed_one_and_a_torn_entry_is_computed_again(
    tmp_path, monkeypatch
) -> None:
    """The first load fills the cache; the next reads it, bit for bit the same; a torn file (a
    crash while writing) or a file of other arrays is computed again and replaced; an empty
    FEDFLEET_CACHE_DIR turns the cache off."""
    monkeypatch.setenv("FEDFLEET_CACHE_DIR", str(tmp_path))
    first = load_digits(test_fraction=0.25, seed=7)
    (entry,) = tmp_path.glob("digits-*.npz")
    again = load_digits(test_fraction=0.25, seed=7)
    for a, b in [(first.train, again.train), (first.test, again.test)]:
        assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
        assert a.x.dtype == b.x.dtype and a.y.dtype == b.y.dtype

    whole = entry.read_bytes()
    entry.write_bytes(whole[: len(whole) // 2])
    torn = load_digits(test_fraction=0.25, seed=7)
    assert np.array_equal(torn.test.x, first.test.x)
    assert entry.read_bytes() == whole  # replaced by a whole entry

    np.savez(entry, other=np.zeros(3))
    assert np.array_equal(load_digits(test_fraction=0.25, seed=7).train.y, first.train.y)
    assert entry.read_bytes() == whole

    off = tmp_path / "off"
    monkeypatch.setenv("FEDFLEET_CACHE_DIR", "")
    monkeypatch.chdir(tmp_path)
    off.mkdir()
    assert np.array_equal(load_digits(test_fraction=0.25, seed=7).train.x, first.train.x)
    assert sorted(p.name for p in tmp_path.iterdir()) == [entry.name, "off"]


def test_a_process_with_a_warm_cache_loads_digits_without_scikit_learn(tmp_path) -> None:
    """What the data cache is for (README, datasets): a run, a client or a worker starting
    after the first load does not import scikit-learn (~2 s of CPU each)."""
    import os
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from fedfleet.data import load_digits\n"
        "task = load_digits(test_fraction=0.2, seed=0)\n"
        "print(len(task.train), 'sklearn' in sys.modules)\n"
    )
    env = dict(os.environ, FEDFLEET_CACHE_DIR=str(tmp_path))
    runs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        for _ in range(2)
    ]
    assert all(r.returncode == 0 for r in runs), [r.stderr for r in runs]
    assert [r.stdout.split() for r in runs] == [["1437", "True"], ["1437", "False"]]
