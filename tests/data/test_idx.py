"""IDX loading: exact values from hand-written files, every error path, and the real MNIST files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from fedfleet.data import fashion_mnist, load_idx, mnist
from fedfleet.errors import DatasetError

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

ROWS, COLS = 4, 3


def idx_bytes(values: np.ndarray, magic: int) -> bytes:
    """An IDX file: big-endian magic, one uint32 per dimension, then the uint8 values."""
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in values.shape)
    return header + values.astype(np.uint8).tobytes()


def write(path: Path, data: bytes, gz: bool) -> Path:
    target = path.with_name(path.name + ".gz") if gz else path
    target.write_bytes(gzip.compress(data) if gz else data)
    return target


def make_split(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    images = rng.integers(0, 256, size=(n, ROWS, COLS), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255  # both ends of the pixel range
    return images, rng.integers(0, 10, size=n).astype(np.uint8)


@pytest.fixture
def idx_dir(tmp_path: Path) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Train (7 images) and test (5) in mixed storage: images gzipped, labels raw."""
    rng = np.random.default_rng(0)
    data = {"train": make_split(rng, 7), "t10k": make_split(rng, 5)}
    for split, (images, labels) in data.items():
        write(tmp_path / f"{split}-images-idx3-ubyte", idx_bytes(images, 2051), gz=True)
        write(tmp_path / f"{split}-labels-idx1-ubyte", idx_bytes(labels, 2049), gz=False)
    return tmp_path, data


def expected_pixels(images: np.ndarray, mean: float, std: float) -> np.ndarray:
    return ((images.astype(np.float64) / 255.0 - mean) / std).astype(np.float32)[:, None]


@pytest.mark.parametrize("gz", [True, False])
def test_values_are_scaled_then_normalised(tmp_path: Path, gz: bool) -> None:
    rng = np.random.default_rng(1)
    data = {"train": make_split(rng, 6), "t10k": make_split(rng, 3)}
    for split, (images, labels) in data.items():
        write(tmp_path / f"{split}-images-idx3-ubyte", idx_bytes(images, 2051), gz)
        write(tmp_path / f"{split}-labels-idx1-ubyte", idx_bytes(labels, 2049), gz)
    task = mnist(tmp_path)
    assert task.name == "mnist" and task.num_classes == 10
    assert task.input_shape == (1, ROWS, COLS)
    assert task.train.x.dtype == np.float32 and task.train.y.dtype == np.int64
    np.testing.assert_array_equal(task.train.x, expected_pixels(data["train"][0], 0.1307, 0.3081))
    np.testing.assert_array_equal(task.test.x, expected_pixels(data["t10k"][0], 0.1307, 0.3081))
    np.testing.assert_array_equal(task.train.y, data["train"][1])
    np.testing.assert_array_equal(task.test.y, data["t10k"][1])
    # Pixel 0 and 255 by hand: (0 - 0.1307) / 0.3081 and (1 - 0.1307) / 0.3081.
    assert task.train.x[0, 0, 0, 0] == pytest.approx(-0.424212917, abs=1e-6)
    assert task.train.x[0, 0, 0, 1] == pytest.approx(2.821486530, abs=1e-6)


def test_fashion_mnist_uses_its_own_constants(idx_dir) -> None:
    root, data = idx_dir
    task = fashion_mnist(root)
    assert task.name == "fashion-mnist"
    np.testing.assert_array_equal(task.train.x, expected_pixels(data["train"][0], 0.2860, 0.3530))


def test_unknown_name_is_rejected(idx_dir) -> None:
    with pytest.raises(DatasetError, match=r"'emnist'.*fashion-mnist, mnist"):
        load_idx(idx_dir[0], "emnist")


def test_missing_directory_lists_expected_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as e:
        mnist(tmp_path / "nowhere")
    msg = str(e.value)
    assert "nowhere" in msg and "does not exist" in msg
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        assert name in msg


def test_missing_file_is_named(idx_dir) -> None:
    root, _ = idx_dir
    (root / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError, match=r"missing file .*t10k-labels-idx1-ubyte\[\.gz\]"):
        mnist(root)


def test_swapped_files_report_the_magic_number(idx_dir) -> None:
    root, data = idx_dir
    images_file = root / "train-images-idx3-ubyte.gz"
    images_file.write_bytes(gzip.compress(idx_bytes(data["train"][1], 2049)))
    with pytest.raises(DatasetError) as e:
        mnist(root)
    msg = str(e.value)
    assert str(images_file) in msg
    assert "magic number 2049" in msg and "expected 2051" in msg and "labels file" in msg


def test_truncated_file_reports_sizes(idx_dir) -> None:
    root, data = idx_dir
    full = idx_bytes(data["train"][0], 2051)
    write(root / "train-images-idx3-ubyte", full[:-5], gz=True)
    with pytest.raises(DatasetError) as e:
        mnist(root)
    msg = str(e.value)
    assert "train-images-idx3-ubyte.gz is truncated" in msg
    assert f"7 * {ROWS} * {COLS} = {7 * ROWS * COLS} bytes" in msg
    assert f"found {7 * ROWS * COLS - 5}" in msg


def test_truncated_header(idx_dir) -> None:
    root, _ = idx_dir
    write(root / "t10k-labels-idx1-ubyte", struct.pack(">I", 2049) + b"\x00\x00", gz=False)
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte is truncated: its header"):
        mnist(root)


def test_corrupt_gzip_is_named(idx_dir) -> None:
    root, _ = idx_dir
    path = root / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])  # a gzip stream cut short
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\.gz is not a valid gzip"):
        mnist(root)
    path.write_bytes(b"definitely not gzip data")
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\.gz is not a valid gzip"):
        mnist(root)


def test_count_mismatch_names_both_files(idx_dir) -> None:
    root, data = idx_dir
    write(root / "t10k-labels-idx1-ubyte", idx_bytes(data["t10k"][1][:4], 2049), gz=False)
    with pytest.raises(DatasetError) as e:
        mnist(root)
    msg = str(e.value)
    assert "t10k-images-idx3-ubyte.gz holds 5 images" in msg
    assert "t10k-labels-idx1-ubyte holds 4 labels" in msg


def test_out_of_range_label(idx_dir) -> None:
    root, data = idx_dir
    labels = data["train"][1].copy()
    labels[2] = 12
    write(root / "train-labels-idx1-ubyte", idx_bytes(labels, 2049), gz=False)
    with pytest.raises(DatasetError, match=r"train-labels-idx1-ubyte: label 12 is out of range"):
        mnist(root)


@pytest.fixture(scope="module")
def real_mnist():
    path = SHARED_DATA / "mnist"
    if not path.is_dir():
        pytest.skip(f"real MNIST not found at {path}")
    return mnist(path)


def test_real_mnist(real_mnist) -> None:
    task = real_mnist
    assert task.train.x.shape == (60000, 1, 28, 28) and task.test.x.shape == (10000, 1, 28, 28)
    assert task.train.x.dtype == np.float32
    counts = np.bincount(task.train.y, minlength=10)
    assert counts[1] == 6742 and counts[5] == 5421 and counts.sum() == 60000
    assert np.bincount(task.test.y, minlength=10)[1] == 1135
    # The constants are MNIST's train statistics, so the train pool comes out standardised.
    assert abs(float(task.train.x.mean())) < 1e-3
    assert float(task.train.x.std()) == pytest.approx(1.0, abs=1e-3)


def test_real_fashion_mnist() -> None:
    path = SHARED_DATA / "fashion-mnist"
    if not path.is_dir():
        pytest.skip(f"real Fashion-MNIST not found at {path}")
    task = fashion_mnist(path)
    assert task.train.x.shape == (60000, 1, 28, 28) and task.test.x.shape == (10000, 1, 28, 28)
    np.testing.assert_array_equal(np.bincount(task.train.y), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(task.test.y), np.full(10, 1000))
