"""Synthetic(alpha, beta): shapes, seeding contract, the generative model, statistics."""

from __future__ import annotations

import numpy as np
import pytest

from fedfleet.data import synthetic, synthetic_device
from fedfleet.errors import DatasetError


def size_by_formula(seed: int, k: int) -> int:
    """Device k's size, reproduced from the documented seeding: the first draw of the device's
    stream SeedSequence(["SYN", seed], spawn_key=(0, k)) is lognormal(4, 2), plus 50 (FedProx)."""
    rng = np.random.default_rng(np.random.SeedSequence([0x53594E, seed], spawn_key=(0, k)))
    return int(rng.lognormal(4.0, 2.0)) + 50


def test_shapes_names_and_natural_indices() -> None:
    task = synthetic(0.5, 0.5, num_devices=12, seed=3)
    assert task.name == "synthetic(0.5,0.5)" and task.input_shape == (60,)
    assert task.num_classes == 10
    assert task.user_ids == tuple(f"device-{k}" for k in range(12))
    assert task.train.x.dtype == np.float32 and task.train.x.shape[1] == 60
    assert task.train.y.dtype == np.int64
    assert 0 <= task.train.y.min() and task.train.y.max() < 10
    for parts, pool in ((task.natural_train, task.train), (task.natural_test, task.test)):
        np.testing.assert_array_equal(np.concatenate(parts), np.arange(len(pool)))
    for k in range(12):
        n = size_by_formula(3, k)
        n_train, n_test = len(task.natural_train[k]), len(task.natural_test[k])
        assert n >= 50 and n_train + n_test == n
        assert n_test == int(np.floor(0.2 * n + 0.5))
        device = synthetic_device(k, alpha=0.5, beta=0.5, seed=3)
        np.testing.assert_array_equal(task.train.x[task.natural_train[k]], device.x[:n_train])
        np.testing.assert_array_equal(task.test.y[task.natural_test[k]], device.y[n_train:])
    assert synthetic(iid=True, num_devices=2).name == "synthetic-iid"


def test_sizes_follow_the_fedprox_lognormal() -> None:
    sizes = np.array([len(synthetic_device(k, seed=0).y) for k in range(40)])
    np.testing.assert_array_equal(sizes, [size_by_formula(0, k) for k in range(40)])
    assert sizes.min() >= 50
    # log(n - 50) ~ N(4, 2) roughly (int() floors): its mean over 40 devices is near 4.
    assert abs(np.log(np.maximum(sizes - 50, 1)).mean() - 4.0) < 1.2


def test_deterministic_per_seed_and_device() -> None:
    a = synthetic(1.0, 1.0, num_devices=5, seed=7)
    b = synthetic(1.0, 1.0, num_devices=5, seed=7)
    np.testing.assert_array_equal(a.train.x, b.train.x)
    np.testing.assert_array_equal(a.test.y, b.test.y)
    c = synthetic(1.0, 1.0, num_devices=5, seed=8)
    assert a.train.x.shape != c.train.x.shape or not np.array_equal(a.train.x, c.train.x)
    # Device k does not depend on how many devices are generated around it.
    more = synthetic(1.0, 1.0, num_devices=9, seed=7)
    n = len(a.train)
    np.testing.assert_array_equal(more.train.x[:n], a.train.x)


def test_labels_are_argmax_of_the_device_model() -> None:
    d = synthetic_device(2, alpha=1.0, beta=1.0, seed=0)
    assert d.W.shape == (10, 60) and d.b.shape == (10,) and d.v.shape == (60,)
    logits = d.x.astype(np.float64) @ d.W.T + d.b
    np.testing.assert_array_equal(d.y, np.argmax(logits, axis=1))


def test_input_covariance_is_diagonal_j_to_minus_1_2() -> None:
    seed = 0
    k = next(k for k in range(2000) if size_by_formula(seed, k) >= 8000)
    d = synthetic_device(k, seed=seed)
    n = len(d.y)
    centred = d.x.astype(np.float64) - d.v
    target = np.arange(1, 61, dtype=np.float64) ** -1.2
    # The sample variance has relative std sqrt(2 / n) (< 1.6% here); allow about 6 of those.
    np.testing.assert_allclose(centred.var(axis=0), target, rtol=6 * np.sqrt(2 / n))
    assert np.all(np.abs(centred.mean(axis=0)) < 6 * np.sqrt(target / n))
    corr = np.corrcoef(centred, rowvar=False)
    assert np.abs(corr[~np.eye(60, dtype=bool)]).max() < 6 / np.sqrt(n)


def test_iid_variant_shares_the_model_and_inputs() -> None:
    d0, d1 = (synthetic_device(k, iid=True, seed=4) for k in (0, 1))
    np.testing.assert_array_equal(d0.W, d1.W)
    np.testing.assert_array_equal(d0.b, d1.b)
    np.testing.assert_array_equal(d0.v, np.zeros(60))
    np.testing.assert_array_equal(d1.y, np.argmax(d1.x.astype(np.float64) @ d1.W.T + d1.b, 1))
    other_seed = synthetic_device(0, iid=True, seed=5)
    assert not np.array_equal(d0.W, other_seed.W)
    n0, n1 = (synthetic_device(k, alpha=0.0, beta=0.0, seed=4) for k in (0, 1))
    assert not np.array_equal(n0.W, n1.W)  # non-IID: every device draws its own model


def test_alpha_and_beta_control_heterogeneity() -> None:
    def spread(alpha: float, beta: float) -> tuple[float, float]:
        devices = [synthetic_device(k, alpha=alpha, beta=beta, seed=1) for k in range(30)]
        return float(np.std([d.W.mean() for d in devices])), float(
            np.std([d.v.mean() for d in devices])
        )

    w_flat, v_flat = spread(0.0, 0.0)
    w_wide, v_wide = spread(3.0, 3.0)
    # Per-device means of 600 W entries (or 60 v entries) vary by 1/sqrt(600) (1/sqrt(60))
    # when alpha (beta) is 0, and by about 3 when it is 3.
    assert w_flat < 0.15 and v_flat < 0.4
    assert w_wide > 1.5 and v_wide > 1.5


def test_invalid_arguments() -> None:
    with pytest.raises(DatasetError, match="alpha=-1"):
        synthetic(alpha=-1)
    with pytest.raises(DatasetError, match="num_devices must be >= 1, got 0"):
        synthetic(num_devices=0)
    with pytest.raises(DatasetError, match=r"test_fraction must be in \[0, 1\), got 1.5"):
        synthetic(test_fraction=1.5)
