"""The sequential trainer's channels-last working copy for convolutional models.

On CPU, ``memory_format="auto"`` stores Conv2d weights OHWI inside the trainer's buffer. These
tests check that only the buffer is permuted: vectors in and out keep the layout's order, and
training agrees with an NCHW PyTorch loop (and with the contiguous trainer, FedProx and SCAFFOLD
included) to float32 rounding.
"""

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fedfleet.client import FitInstructions, TorchTrainer
from fedfleet.data import ArrayDataset
from fedfleet.errors import ConfigError


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Unflatten(1, (2, 8, 8)),
        nn.Conv2d(2, 5, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(5, 7, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(7 * 2 * 2, 4),
    )


@pytest.fixture
def images() -> ArrayDataset:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 128)).astype(np.float32)
    y = (x[:, :4].argmax(axis=1)).astype(np.int64)
    return ArrayDataset(x, y)


def _conv_weights(trainer: TorchTrainer) -> list[torch.Tensor]:
    return [m.weight for m in trainer.model.modules() if isinstance(m, nn.Conv2d)]


def test_auto_is_channels_last_on_cpu_for_conv_models_only():
    cnn = TorchTrainer(_cnn)
    assert cnn.memory_format == "channels_last"
    for w in _conv_weights(cnn):
        assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    mlp = TorchTrainer(lambda: nn.Sequential(nn.Linear(4, 3)))
    assert mlp.memory_format == "contiguous"
    assert TorchTrainer(_cnn, memory_format="contiguous").memory_format == "contiguous"
    with pytest.raises(ConfigError, match="memory_format 'nhwc' is not one of auto"):
        TorchTrainer(_cnn, memory_format="nhwc")


def test_vectors_keep_the_layout_order(images):
    trainer = TorchTrainer(_cnn)
    w0 = trainer.init_vector(seed=3)
    # lr 0: training changes nothing, so what comes out is exactly what went in
    out = trainer.fit(w0, images, FitInstructions(epochs=1, batch_size=16, lr=0.0), seed=1)
    assert np.array_equal(out.vector, w0)
    # the module holds the vector's weights, each tensor at its layout name
    state = trainer.model.state_dict()
    for name, value in trainer.layout.unflatten(w0).items():
        assert np.array_equal(state[name].numpy(), value), name
    exported = trainer.export(w0)
    assert np.array_equal(trainer.layout.flatten(exported.state_dict()), w0)


def test_fit_equals_an_nchw_pytorch_loop(images):
    trainer = TorchTrainer(_cnn, optimizer_args={"momentum": 0.9})
    w0 = trainer.init_vector(seed=0)
    res = trainer.fit(w0, images, FitInstructions(epochs=2, batch_size=16, lr=0.05), seed=5)

    ref = _cnn()
    ref.load_state_dict(trainer.layout.to_state_dict(w0))
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    rng = np.random.default_rng(5)
    x, y = torch.from_numpy(images.x), torch.from_numpy(images.y)
    for _ in range(2):
        order = rng.permutation(len(y))
        for s in range(0, len(y), 16):
            idx = torch.from_numpy(order[s : s + 16])
            opt.zero_grad()
            F.cross_entropy(ref(x[idx]), y[idx]).backward()
            opt.step()
    expected = trainer.layout.flatten(ref.state_dict())
    assert np.abs(res.vector - w0).max() > 1e-2  # it trained
    np.testing.assert_allclose(res.vector, expected, atol=1e-5)


@pytest.mark.parametrize("terms", ["prox", "correction", "both"])
def test_fedprox_and_scaffold_terms_match_the_contiguous_trainer(images, terms):
    fast, plain = TorchTrainer(_cnn), TorchTrainer(_cnn, memory_format="contiguous")
    w0 = fast.init_vector(seed=1)
    rng = np.random.default_rng(2)
    config = {"prox_mu": 0.5} if terms in ("prox", "both") else {}
    payload = {}
    if terms in ("correction", "both"):
        payload["grad_correction"] = rng.normal(scale=0.3, size=w0.shape).astype(np.float32)
    instr = FitInstructions(epochs=2, batch_size=16, lr=0.05, config=config, payload=payload)
    a = fast.fit(w0, images, instr, seed=4).vector
    b = plain.fit(w0, images, instr, seed=4).vector
    plain_fedavg = plain.fit(w0, images, FitInstructions(epochs=2, batch_size=16, lr=0.05), 4)
    assert np.abs(b - plain_fedavg.vector).max() > 1e-3  # the terms change the result
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_same_seed_same_bits_and_evaluate_agrees(images):
    trainer = TorchTrainer(_cnn)
    plain = TorchTrainer(_cnn, memory_format="contiguous")
    w0 = trainer.init_vector(seed=2)
    instr = FitInstructions(epochs=1, batch_size=8, lr=0.1)
    a = trainer.fit(w0, images, instr, seed=9).vector
    b = trainer.fit(w0, images, instr, seed=9).vector
    assert np.array_equal(a, b)
    ea, eb = trainer.evaluate(a, images), plain.evaluate(a, images)
    assert ea.num_samples == eb.num_samples == 90
    assert ea.accuracy == eb.accuracy and abs(ea.loss - eb.loss) < 1e-5
