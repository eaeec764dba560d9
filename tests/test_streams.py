"""Random streams: every key the library draws from is registered once, and no two coincide."""

from __future__ import annotations

import ast
import inspect
import itertools
from pathlib import Path

import numpy as np
from torch import nn

import fedfleet
from fedfleet import _streams
from fedfleet.client import FitInstructions
from fedfleet.data import ArrayDataset
from fedfleet.privacy import DPSGDTrainer, LocalDP
from fedfleet.privacy.secagg._strategy import SecAggFedAvg
from fedfleet.sim._engine import _sampling_rng
from fedfleet.strategies import FedAvg

INDICES = range(0, 12)  # rounds, clients, fields: enough to meet every structural clash


def _keys(fn) -> set[tuple[int, ...]]:
    arity = len(inspect.signature(fn).parameters)
    return {tuple(fn(*args)) for args in itertools.product(INDICES, repeat=arity)}


def test_no_two_registered_streams_share_a_key_under_one_root():
    seen: dict[tuple[str, tuple[int, ...]], str] = {}
    for name, (root, fn) in _streams.REGISTRY.items():
        for key in _keys(fn):
            other = seen.setdefault((root, key), name)
            assert other == name, f"{name} and {other} both draw from {root} key {key}"


def test_each_stream_gives_distinct_keys_for_distinct_indices():
    for name, (_, fn) in _streams.REGISTRY.items():
        arity = len(inspect.signature(fn).parameters)
        assert len(_keys(fn)) == len(INDICES) ** arity, name


def test_the_issue_collisions_are_gone():
    assert _streams.LOCAL_DP_NOISE != _streams.DPSGD_NOISE
    assert _streams.FEDREP_HEAD not in (_streams.LOCAL_DP_NOISE, _streams.DPSGD_NOISE)
    assert all(_streams.secagg_round(r) != _streams.sampling(r) for r in INDICES)
    # SecAgg's round graph no longer replays the engine's cohort draw
    _, graph = SecAggFedAvg(clip_norm=1.0, clients_per_round=2, seed=7).round_setup(3, 10)
    assert graph.random() != _sampling_rng(7, 3).random()


def test_unchanged_keys_keep_their_numbers():
    # bit-identity with earlier runs: sampling, client seeds and local DP noise did not move
    ref = np.random.default_rng(np.random.SeedSequence(5, spawn_key=(2, 0))).random(4)
    np.testing.assert_array_equal(_streams.generator(5, _streams.sampling(2)).random(4), ref)
    seed = int(np.random.SeedSequence(5, spawn_key=(2, 1, 9)).generate_state(1)[0])
    assert _streams.derive_seed(5, _streams.client_training(2, 9)) == seed


def test_local_dp_and_dpsgd_noise_with_both_enabled_are_different_streams():
    # the same client seed feeds both; on zero inputs a one-logit linear model has zero loss and
    # zero gradients, so one DP-SGD step moves the weights by exactly -lr * noise / B
    seed, dim = 1234, 400
    trainer = DPSGDTrainer(
        lambda: nn.Linear(dim, 1, bias=False), clip_norm=1.0, noise_multiplier=1.0,
        sampling="fixed",
    )  # fmt: skip
    data = ArrayDataset(np.zeros((8, dim), np.float32), np.zeros(8, np.int64))
    w0 = np.zeros(trainer.layout.size, np.float32)
    ins = FitInstructions(epochs=1, batch_size=8, lr=1.0)
    sgd_noise = trainer.fit(w0, data, ins, seed).vector.astype(np.float64) * -8.0
    local = LocalDP(strategy=FedAvg(), clip_norm=1.0, noise_multiplier=1.0)
    local_noise, _ = local.privatize(np.zeros(dim), seed)
    assert np.all(sgd_noise != 0) and np.all(local_noise != 0)
    corr = np.corrcoef(sgd_noise, local_noise)[0, 1]
    assert abs(corr) < 4 / np.sqrt(dim)  # independent: |r| ~ 1/sqrt(n)
    # each one is its registered stream
    want = _streams.generator(seed, _streams.LOCAL_DP_NOISE).normal(0.0, 1.0, dim)
    np.testing.assert_allclose(local_noise, want, rtol=1e-12)
    want = _streams.generator(seed, _streams.DPSGD_NOISE).normal(0.0, 1.0, dim)
    np.testing.assert_allclose(sgd_noise, want, rtol=1e-5, atol=1e-6)


# fedfleet/sim/_profiles.py is owned by another change; its keys (0, 3, f) and (r, 4) are
# registered above (profile_field, availability) and move to the registry with it
NOT_YET_MOVED = {"sim/_profiles.py"}


def test_every_spawn_key_in_the_library_comes_from_the_registry():
    root = Path(fedfleet.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel == "_streams.py" or rel in NOT_YET_MOVED:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", getattr(node.func, "id", None)) == "SeedSequence"
                and any(k.arg == "spawn_key" for k in node.keywords)
            ):
                offenders.append(f"{rel}:{node.lineno}")
    assert not offenders, f"spawn keys outside fedfleet/_streams.py: {offenders}"
