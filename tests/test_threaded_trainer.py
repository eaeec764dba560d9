"""ThreadedTrainer: the sequential loop on worker threads gives the sequential loop's bits."""

import numpy as np
import pytest
import torch
from torch import nn

from fedfleet.client import FitInstructions, ThreadedTrainer, TorchTrainer
from fedfleet.client._vmap_schedule import torch_threads
from fedfleet.data import ArrayDataset
from fedfleet.errors import ConfigError, DatasetError
from fedfleet.runs import load_config
from fedfleet.runs._build import build_run


def _net() -> nn.Module:  # BatchNorm: running statistics are federated state too
    return nn.Sequential(
        nn.Unflatten(1, (1, 6, 6)),
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    )


def _cohort(k: int = 7) -> list[ArrayDataset]:
    rng = np.random.default_rng(0)
    sizes = rng.integers(5, 60, size=k)  # ragged: lanes finish at different times
    return [
        ArrayDataset(rng.normal(size=(n, 36)).astype(np.float32), rng.integers(0, 3, n))
        for n in sizes
    ]


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_fit_cohort_is_each_clients_sequential_fit_bit_for_bit(workers, optimizer):
    data = _cohort()
    instr = [FitInstructions(epochs=2, batch_size=8, lr=0.05) for _ in data]
    seeds = list(range(10, 10 + len(data)))
    threaded = ThreadedTrainer(_net, optimizer=optimizer, workers=workers)
    w0 = threaded.init_vector(seed=1)
    keep = w0.copy()
    got = threaded.fit_cohort(w0, data, instr, seeds)
    ref = TorchTrainer(_net, optimizer=optimizer)
    with torch_threads(1):
        want = [ref.fit(w0, d, i, s) for d, i, s in zip(data, instr, seeds, strict=True)]
    assert np.array_equal(w0, keep)
    for g, w in zip(got, want, strict=True):
        assert np.array_equal(g.vector, w.vector)
        assert (g.num_samples, g.num_steps) == (w.num_samples, w.num_steps)
        assert g.metrics == w.metrics
    assert len({r.vector.tobytes() for r in got}) == len(data)  # each client trained its own


def test_the_callers_torch_generator_and_thread_count_are_restored():
    threaded = ThreadedTrainer(_net, workers=2)
    w0 = threaded.init_vector(seed=0)
    torch.manual_seed(123)
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    data = _cohort(4)
    threaded.fit_cohort(w0, data, [FitInstructions()] * 4, [1, 2, 3, 4])
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.get_num_threads() == threads


def test_random_layers_are_refused_on_more_than_one_lane():
    def dropout_net() -> nn.Module:
        return nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2))

    with pytest.raises(ConfigError, match=r"refuses random layers \(Dropout\)"):
        ThreadedTrainer(dropout_net, workers=2)
    ThreadedTrainer(dropout_net, workers=1)  # one lane: the sequential loop itself
    with pytest.raises(ConfigError, match="workers must be >= 1"):
        ThreadedTrainer(_net, workers=0)


def test_mismatched_arguments_and_a_wrong_vector_are_refused():
    threaded = ThreadedTrainer(_net, workers=2)
    w0 = threaded.init_vector(seed=0)
    with pytest.raises(ConfigError, match="2 datasets, 1 instructions and 2 seeds"):
        threaded.fit_cohort(w0, _cohort(2), [FitInstructions()], [1, 2])
    with pytest.raises(Exception, match="the global vector has shape"):
        threaded.fit_cohort(w0[:-1], _cohort(2), [FitInstructions()] * 2, [1, 2])


def test_executor_threaded_by_name_runs_any_strategy_like_the_sequential_loop():
    common = ["rounds=2", "data.num_clients=8", "strategy.clients_per_round=4"]
    for strategy in ("fedavg", "scaffold"):  # scaffold trains through its own client_fit
        over = [*common, f"strategy.name={strategy}", "client.optimizer=sgd"]
        run = build_run(load_config(None, [*over, "executor=threaded"]))
        assert run.executor.startswith("threaded (the sequential loop")
        assert isinstance(run.simulation.trainer, ThreadedTrainer)
        a = run.simulation.run(2)
        b = build_run(load_config(None, [*over, "executor=sequential"])).simulation.run(2)
        assert np.array_equal(a.vector, b.vector)
    with pytest.raises(ConfigError, match="DP-SGD trains client by client"):
        build_run(
            load_config(None, [*common, "executor=threaded", "privacy.sgd_noise_multiplier=1.0"])
        )


def test_a_clients_bad_input_is_refused_naming_it_and_no_lane_goes_on():
    threaded = ThreadedTrainer(_net, workers=2)
    w0 = threaded.init_vector(seed=0)
    data = _cohort(3)
    bad = [FitInstructions(), FitInstructions(batch_size=0), FitInstructions()]
    with pytest.raises(ConfigError, match="client 1: batch_size must be >= 1"):
        threaded.fit_cohort(w0, data, bad, [1, 2, 3])
    wrong = [data[0], ArrayDataset(data[1].x[:, :35], data[1].y), data[2]]
    with pytest.raises(DatasetError, match=r"client 1's samples have shape \(35,\)"):
        threaded.fit_cohort(w0, wrong, [FitInstructions()] * 3, [1, 2, 3])
    labels = [data[0], data[1], ArrayDataset(data[2].x, np.full(len(data[2]), 7))]
    with pytest.raises(IndexError) as info:
        threaded.fit_cohort(w0, labels, [FitInstructions()] * 3, [1, 2, 3])
    assert "while training client 2 of the cohort" in " ".join(info.value.__notes__)


class _DropsInForward(nn.Module):  # a random draw no module type would reveal
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(36, 3)

    def forward(self, x):
        return self.fc(nn.functional.dropout(x, 0.5, self.training))


def test_models_that_draw_random_numbers_in_forward_are_refused_on_lanes():
    threaded = ThreadedTrainer(_DropsInForward, workers=2)
    w0 = threaded.init_vector(seed=0)
    with pytest.raises(ConfigError, match="draw random numbers in training"):
        threaded.fit_cohort(w0, _cohort(3), [FitInstructions()] * 3, [1, 2, 3])
    one = ThreadedTrainer(_DropsInForward, workers=1)  # one lane: seeded like the loop
    a = one.fit_cohort(w0, _cohort(3), [FitInstructions()] * 3, [1, 2, 3])
    b = one.fit_cohort(w0, _cohort(3), [FitInstructions()] * 3, [1, 2, 3])
    assert all(np.array_equal(x.vector, y.vector) for x, y in zip(a, b, strict=True))


def test_a_clients_bits_do_not_depend_on_its_cohorts_size():
    threaded = ThreadedTrainer(_net, workers=2)
    w0 = threaded.init_vector(seed=0)
    data = _cohort(2)
    with torch_threads(2):
        alone = threaded.fit_cohort(w0, data[:1], [FitInstructions()], [5])[0]
        pair = threaded.fit_cohort(w0, data, [FitInstructions()] * 2, [5, 6])[0]
    assert np.array_equal(alone.vector, pair.vector)


def _cumulative_bn() -> nn.Module:  # momentum=None: the statistics use num_batches_tracked
    return nn.Sequential(nn.Linear(36, 8), nn.BatchNorm1d(8, momentum=None), nn.Linear(8, 3))


def test_client_local_buffers_restart_with_every_fit():
    trainer = TorchTrainer(_cumulative_bn)
    w0 = trainer.init_vector(seed=0)
    data = _cohort(3)
    instr = FitInstructions(epochs=3, batch_size=64, lr=0.05)  # whole-client batches (>= 5)
    first = trainer.fit(w0, data[0], instr, seed=1).vector
    trainer.fit(w0, data[1], instr, seed=2)  # another client in between
    assert np.array_equal(trainer.fit(w0, data[0], instr, seed=1).vector, first)
    threaded = ThreadedTrainer(_cumulative_bn, workers=2)
    got = threaded.fit_cohort(w0, data, [instr] * 3, [1, 2, 3])
    ref = TorchTrainer(_cumulative_bn)
    with torch_threads(1):
        want = [ref.fit(w0, d, instr, s) for d, s in zip(data, [1, 2, 3], strict=True)]
    for g, w in zip(got, want, strict=True):
        assert np.array_equal(g.vector, w.vector)
