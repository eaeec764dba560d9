"""Shared fixtures: small seeded tasks built in memory, and where the shared data lives."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fedfleet.data import ArrayDataset, TaskData

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    """One data cache for the whole session (the controller makes it; xdist workers and every
    subprocess inherit the variable), instead of the user's ``~/.cache/fedfleet``."""
    if "FEDFLEET_CACHE_DIR" not in os.environ:
        os.environ["FEDFLEET_CACHE_DIR"] = tempfile.mkdtemp(prefix="fedfleet-test-cache-")
        config._fedfleet_cache = os.environ["FEDFLEET_CACHE_DIR"]  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    made = getattr(config, "_fedfleet_cache", None)
    if made is not None:
        shutil.rmtree(made, ignore_errors=True)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests run on 2 cores, often in parallel: one torch thread each keeps them from fighting."""
    torch.set_num_threads(1)


def blob_task(
    n_train: int = 400, n_test: int = 200, dim: int = 10, classes: int = 4, seed: int = 0
) -> TaskData:
    """A linearly separable-ish Gaussian-blob task, small enough for any test."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 2.0, size=(classes, dim))

    def draw(n: int) -> ArrayDataset:
        y = rng.integers(0, classes, size=n)
        x = (means[y] + rng.normal(0, 1.0, size=(n, dim))).astype(np.float32)
        return ArrayDataset(x, y.astype(np.int64))

    return TaskData("blobs", draw(n_train), draw(n_test), classes, (dim,))


@pytest.fixture
def blobs() -> TaskData:
    return blob_task()
