"""VmapTrainer: a cohort trained at once equals the same clients trained one by one.

The reference is TorchTrainer (itself tested against a plain PyTorch loop) and, for FedProx's
proximal term and SCAFFOLD's correction, a hand-written PyTorch loop.
"""

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fedfleet.client import FitInstructions, TorchTrainer, VmapTrainer
from fedfleet.data import ArrayDataset
from fedfleet.errors import ConfigError, DatasetError

ATOL = 1e-5


def _mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 4))


def _deep_mlp():  # three layers, one without bias: every branch of the hand-written path
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(10, 8),
        nn.ReLU(),
        nn.Linear(8, 8, bias=False),
        nn.ReLU(),
        nn.Linear(8, 4),
    )


def _logreg():
    return nn.Sequential(nn.Linear(10, 4))


def _tanh_net():  # not a plain MLP: always the generic torch.func path
    return nn.Sequential(nn.Linear(10, 12), nn.Tanh(), nn.Linear(12, 4, bias=False))


def _cnn():
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(3 * 3 * 3, 4),
    )


def _datasets(sizes, dim=10, seed=0, shape=None):
    rng = np.random.default_rng(seed)
    out = []
    for n in sizes:
        y = rng.integers(0, 4, n)
        x = (rng.normal(size=(n, dim)) + y[:, None]).astype(np.float32)
        out.append(ArrayDataset(x.reshape(n, *shape) if shape else x, y.astype(np.int64)))
    return out


def _sequential(trainer, w0, datasets, instructions, seeds):
    return [trainer.fit(w0, d, i, s) for d, i, s in zip(datasets, instructions, seeds, strict=True)]


def _assert_same(got, ref, atol=ATOL):
    assert len(got) == len(ref)
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_allclose(g.vector, r.vector, atol=atol, rtol=0)
        assert g.num_steps == r.num_steps and g.num_samples == r.num_samples
        assert g.metrics.keys() == r.metrics.keys()
        if "train_loss" in r.metrics:
            assert g.metrics["train_loss"] == pytest.approx(r.metrics["train_loss"], abs=1e-5)


FACTORIES = {
    "mlp-fast": (_mlp, True),
    "mlp-generic": (_mlp, False),
    "deep-fast": (_deep_mlp, True),
    "logreg-fast": (_logreg, True),
    "tanh": (_tanh_net, True),
}


@pytest.fixture(params=sorted(FACTORIES))
def model(request):
    return FACTORIES[request.param]


def test_equal_clients_match_sequential_fits(model):
    factory, fast = model
    ref, vm = TorchTrainer(factory), VmapTrainer(factory, fast_path=fast)
    assert vm.uses_fast_path == (fast and factory is not _tanh_net)
    w0 = ref.init_vector(0)
    data = _datasets([40] * 5)
    instr = [FitInstructions(epochs=2, batch_size=8, lr=0.1)] * 5
    seeds = [11, 12, 13, 14, 15]
    got = vm.fit_cohort(w0, data, instr, seeds)
    _assert_same(got, _sequential(ref, w0, data, instr, seeds))
    assert not np.array_equal(got[0].vector, got[1].vector)  # each client its own batches


def test_ragged_cohort_matches_sequential_fits(model):
    """Unequal sizes (partial last batches of different sizes, different step counts) and
    per-client lr, epochs, batch size and max_steps, including clients that take no step."""
    factory, fast = model
    ref, vm = TorchTrainer(factory), VmapTrainer(factory, fast_path=fast)
    w0 = ref.init_vector(1)
    sizes = [50, 37, 8, 0, 21, 64, 5, 13]
    instr = [
        FitInstructions(epochs=2, batch_size=8, lr=0.1),
        FitInstructions(epochs=1, batch_size=8, lr=0.05),
        FitInstructions(epochs=3, batch_size=8, lr=0.2, max_steps=2),
        FitInstructions(epochs=1, batch_size=8, lr=0.1),  # no data
        FitInstructions(epochs=2, batch_size=6, lr=0.1, max_steps=5),
        FitInstructions(epochs=1, batch_size=16, lr=0.3),
        FitInstructions(epochs=0, batch_size=8, lr=0.1),  # no epochs
        FitInstructions(epochs=4, batch_size=3, lr=0.02),
    ]
    seeds = list(range(len(sizes)))
    got = vm.fit_cohort(w0, _datasets(sizes), instr, seeds)
    want = _sequential(ref, w0, _datasets(sizes), instr, seeds)
    _assert_same(got, want)
    assert [r.num_steps for r in got] == [14, 5, 2, 0, 5, 4, 0, 20]
    for r in (got[3], got[6]):
        assert np.array_equal(r.vector, w0) and r.metrics == {}


@pytest.mark.parametrize(
    "args",
    [
        {"momentum": 0.9},
        {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-2},
        {"momentum": 0.5, "dampening": 0.3},
        {"weight_decay": 5e-2},
    ],
)
def test_sgd_options_match_torch_optim_sgd(model, args):
    factory, fast = model
    ref = TorchTrainer(factory, optimizer="sgd", optimizer_args=args)
    vm = VmapTrainer(factory, optimizer_args=args, fast_path=fast)
    w0 = ref.init_vector(2)
    data = _datasets([30, 17, 45])
    instr = [FitInstructions(epochs=2, batch_size=8, lr=lr) for lr in (0.05, 0.1, 0.02)]
    got = vm.fit_cohort(w0, data, instr, [5, 6, 7])
    _assert_same(got, _sequential(ref, w0, data, instr, [5, 6, 7]))
    plain = VmapTrainer(factory, fast_path=fast).fit_cohort(w0, data, instr, [5, 6, 7])
    assert np.abs(got[0].vector - plain[0].vector).max() > 1e-3  # the options do something


def _reference_with_terms(factory, w0, layout, data, instr, seed, momentum):
    """A textbook loop adding mu * (w - w0) + correction to every gradient."""
    model = factory()
    model.load_state_dict(layout.to_state_dict(w0))
    opt = torch.optim.SGD(model.parameters(), lr=instr.lr, momentum=momentum)
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    mu = instr.config.get("prox_mu", 0.0)
    corr = instr.payload.get("grad_correction")
    corr = layout.to_state_dict(corr) if corr is not None else None
    rng = np.random.default_rng(seed)
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    steps = 0
    for _ in range(instr.epochs):
        order = rng.permutation(len(y))
        for s in range(0, len(y), instr.batch_size):
            if instr.max_steps is not None and steps >= instr.max_steps:
                break
            idx = torch.from_numpy(order[s : s + instr.batch_size])
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.grad += mu * (p - anchor[n])
                    if corr is not None:
                        p.grad += corr[n]
            opt.step()
            steps += 1
    return layout.flatten(model.state_dict())


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_prox_mu_and_grad_correction_match_a_hand_written_loop(model, momentum):
    factory, fast = model
    vm = VmapTrainer(factory, optimizer_args={"momentum": momentum}, fast_path=fast)
    w0 = vm.init_vector(3)
    rng = np.random.default_rng(9)
    data = _datasets([33, 20, 41, 12])

    def corr():
        return rng.normal(0, 0.5, vm.layout.size).astype(np.float32)

    instr = [
        FitInstructions(epochs=2, batch_size=8, lr=0.1, config={"prox_mu": 0.5}),
        FitInstructions(epochs=2, batch_size=8, lr=0.05, payload={"grad_correction": corr()}),
        FitInstructions(
            epochs=1,
            batch_size=8,
            lr=0.1,
            config={"prox_mu": 0.1},
            payload={"grad_correction": corr()},
        ),
        FitInstructions(epochs=3, batch_size=5, lr=0.1),  # plain, in the same cohort
    ]
    got = vm.fit_cohort(w0, data, instr, [1, 2, 3, 4])
    for r, d, i, s in zip(got, data, instr, [1, 2, 3, 4], strict=True):
        want = _reference_with_terms(factory, w0, vm.layout, d, i, s, momentum)
        np.testing.assert_allclose(r.vector, want, atol=ATOL, rtol=0)


def test_a_small_cnn_matches_sequential_fits():
    ref = TorchTrainer(_cnn, optimizer_args={"momentum": 0.9})
    vm = VmapTrainer(_cnn, optimizer_args={"momentum": 0.9})
    w0 = ref.init_vector(4)
    data = _datasets([20, 13, 26], dim=36, shape=(1, 6, 6))
    instr = [FitInstructions(epochs=2, batch_size=8, lr=lr) for lr in (0.1, 0.05, 0.1)]
    _assert_same(
        vm.fit_cohort(w0, data, instr, [1, 2, 3]), _sequential(ref, w0, data, instr, [1, 2, 3])
    )


def test_custom_loss_with_ragged_batches():
    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.2)

    ref, vm = TorchTrainer(_mlp, loss_fn=loss_fn), VmapTrainer(_mlp, loss_fn=loss_fn)
    assert not vm.uses_fast_path  # a custom loss takes the generic path
    w0 = ref.init_vector(5)
    data = _datasets([19, 30, 7])
    instr = [FitInstructions(epochs=2, batch_size=8, lr=0.1)] * 3
    _assert_same(
        vm.fit_cohort(w0, data, instr, [1, 2, 3]), _sequential(ref, w0, data, instr, [1, 2, 3])
    )


def test_frozen_parameters_and_constant_buffers_stay_global():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = _tanh_net()
            self.register_buffer("scale", torch.tensor([1.5]))
            self.body[0].bias.requires_grad_(False)

        def forward(self, x):
            return self.body(x) * self.scale

    ref, vm = TorchTrainer(Scaled), VmapTrainer(Scaled)
    w0 = ref.init_vector(6)
    data = _datasets([25, 14])
    instr = [FitInstructions(epochs=2, batch_size=8, lr=0.1)] * 2
    got = vm.fit_cohort(w0, data, instr, [1, 2])
    _assert_same(got, _sequential(ref, w0, data, instr, [1, 2]))
    spec = {s.name: s for s in vm.layout.specs}["body.0.bias"]
    frozen = slice(spec.offset, spec.offset + spec.numel)
    assert np.array_equal(got[0].vector[frozen], w0[frozen])


@pytest.mark.parametrize("fast", [True, False])
def test_chunks_and_workers_give_bit_identical_results(fast):
    """Batch widths and weighting are fixed per step for the whole cohort, so how it is cut
    into chunks (or spread over worker threads) does not change a client's arithmetic."""
    data = _datasets([40, 37, 8, 21, 64, 13, 30])
    instr = [FitInstructions(epochs=2, batch_size=8, lr=0.05 * (1 + i % 3)) for i in range(7)]
    seeds = list(range(7))
    whole = VmapTrainer(_mlp, fast_path=fast)
    w0 = whole.init_vector(7)
    one = whole.fit_cohort(w0, data, instr, seeds)
    for kw in ({"max_cohort_chunk": 2}, {"max_chunk_bytes": 1}, {"workers": 2, "num_threads": 1}):
        got = VmapTrainer(_mlp, fast_path=fast, **kw).fit_cohort(w0, data, instr, seeds)
        for g, o in zip(got, one, strict=True):
            assert np.array_equal(g.vector, o.vector) and g.metrics == o.metrics


def test_deterministic_and_does_not_mutate_the_global_vector():
    vm = VmapTrainer(_mlp)
    w0 = vm.init_vector(8)
    keep = w0.copy()
    data = _datasets([30, 17, 45])
    instr = [FitInstructions(epochs=2, batch_size=8, lr=0.1)] * 3
    a = vm.fit_cohort(w0, data, instr, [1, 2, 3])
    b = vm.fit_cohort(w0, data, instr, [1, 2, 3])  # reuses the first call's buffers
    held = [r.vector.copy() for r in a]
    c = VmapTrainer(_mlp).fit_cohort(w0, data, instr, [1, 2, 3])
    assert np.array_equal(w0, keep)
    for x, y, z, h in zip(a, b, c, held, strict=True):
        assert np.array_equal(x.vector, y.vector) and np.array_equal(x.vector, z.vector)
        assert np.array_equal(x.vector, h)  # results still held are never overwritten
        assert x.metrics == y.metrics


def test_fit_is_a_cohort_of_one_and_evaluate_is_torch_trainers():
    ref, vm = TorchTrainer(_mlp, eval_batch_size=16), VmapTrainer(_mlp, eval_batch_size=16)
    w0 = vm.init_vector(9)
    assert np.array_equal(w0, ref.init_vector(9))
    data = _datasets([43])[0]
    instr = FitInstructions(epochs=2, batch_size=8, lr=0.1, max_steps=9)
    single = vm.fit(w0, data, instr, seed=4)
    cohort = vm.fit_cohort(w0, [data], [instr], [4])[0]
    assert np.array_equal(single.vector, cohort.vector) and single.num_steps == 9
    _assert_same([single], [ref.fit(w0, data, instr, seed=4)])
    test = _datasets([50], seed=1)[0]
    assert vm.evaluate(single.vector, test) == ref.evaluate(single.vector, test)
    assert vm.fit_cohort(w0, [], [], []) == []


def test_batchnorm_dropout_and_other_optimizers_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match=r"BatchNorm1d.*use TorchTrainer"):
        VmapTrainer(lambda: nn.Sequential(nn.Linear(10, 8), nn.BatchNorm1d(8), nn.Linear(8, 4)))
    with pytest.raises(ConfigError, match=r"Dropout.*use TorchTrainer"):
        VmapTrainer(lambda: nn.Sequential(nn.Linear(10, 8), nn.Dropout(0.5), nn.Linear(8, 4)))
    with pytest.raises(ConfigError, match=r"SGD only.*use TorchTrainer"):
        VmapTrainer(_mlp, optimizer="adam")
    with pytest.raises(ConfigError, match=r"maximize.*valid optimizer_args: dampening"):
        VmapTrainer(_mlp, optimizer_args={"maximize": True})


def test_a_model_that_changes_a_buffer_in_training_is_refused():
    class Counter(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(10, 4)
            self.register_buffer("seen", torch.zeros(()))

        def forward(self, x):
            self.seen += len(x)
            return self.lin(x)

    vm = VmapTrainer(Counter)
    with pytest.raises(ConfigError, match=r"changes its buffers \['seen'\].*use TorchTrainer"):
        vm.fit_cohort(vm.init_vector(0), _datasets([8]), [FitInstructions()], [0])


def test_mismatched_cohorts_are_refused_with_who_and_what():
    vm = VmapTrainer(_mlp)
    w0 = vm.init_vector(0)
    with pytest.raises(ConfigError, match="2 datasets, 1 instructions and 2 seeds"):
        vm.fit_cohort(w0, _datasets([8, 8]), [FitInstructions()], [0, 1])
    odd = _datasets([8, 8]) + _datasets([8], dim=10, shape=(2, 5))
    with pytest.raises(DatasetError, match=r"client 2's samples have shape \(2, 5\)"):
        vm.fit_cohort(w0, odd, [FitInstructions()] * 3, [0, 1, 2])


def test_batches_staged_a_window_at_a_time_give_the_same_bits(monkeypatch):
    """Clients with more steps than a staging window (a Synthetic(1,1) device can have 47,000)
    are staged window by window; the arithmetic is the same as staging every step at once."""
    import fedfleet.client._vmap_trainer as vmap_module

    sizes = [50, 37, 8, 21, 64, 13]
    instr = [FitInstructions(epochs=2, batch_size=4, lr=0.05)] * len(sizes)
    seeds = list(range(len(sizes)))
    trainer = VmapTrainer(_mlp)
    w0 = trainer.init_vector(2)
    whole = [r.vector.copy() for r in trainer.fit_cohort(w0, _datasets(sizes), instr, seeds)]
    assert max(r.num_steps for r in trainer.fit_cohort(w0, _datasets(sizes), instr, seeds)) == 32
    monkeypatch.setattr(vmap_module, "STAGE_STEPS", 3)  # 11 windows for the longest client
    got = VmapTrainer(_mlp).fit_cohort(w0, _datasets(sizes), instr, seeds)
    for g, v in zip(got, whole, strict=True):
        assert np.array_equal(g.vector, v)
    want = _sequential(TorchTrainer(_mlp), w0, _datasets(sizes), instr, seeds)
    _assert_same(got, want)
