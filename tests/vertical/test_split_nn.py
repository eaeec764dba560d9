"""Split learning: equal to the composed model trained in one place; what each party sees."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer

from fedfleet.errors import ConfigError
from fedfleet.vertical import LocalNetwork, SplitNN, run_parties, split_columns

COLUMNS = [list(range(0, 10)), list(range(10, 20)), list(range(20, 30))]


def _parties():
    x, y = load_breast_cancer(return_X_y=True)
    return x, y, split_columns(x, y, COLUMNS)


def _run(split: SplitNN):
    x, y, parties = _parties()
    net = LocalNetwork([p.name for p in parties])
    out = run_parties(net, split.programs({p.name: p for p in parties}))
    return x, y, parties, net, out


def _central(split: SplitNN, x: np.ndarray, y: np.ndarray):
    """The same bottoms and top as one torch model, trained on all columns in one place."""
    train, test = split.train_test(len(x))
    mean, std = x[train].mean(axis=0), x[train].std(axis=0)
    xs = torch.from_numpy(((x - mean) / np.where(std > 0, std, 1.0)).astype(np.float32))
    yt = torch.from_numpy(y.astype(np.int64))
    bottoms = [split.bottom_model(len(cols), i) for i, cols in enumerate(COLUMNS)]
    top = split.top_model(split.cut_width * len(COLUMNS), 2)
    params = [p for m in [top, *bottoms] for p in m.parameters()]
    opt = torch.optim.SGD(params, lr=split.lr)

    def forward(rows: torch.Tensor) -> torch.Tensor:
        cut = [b(xs[rows][:, cols]) for b, cols in zip(bottoms, COLUMNS, strict=True)]
        return top(torch.cat(cut, dim=1))

    for epoch in range(split.epochs):
        for batch in split.batches(epoch, train):
            rows = torch.from_numpy(batch)
            loss = torch.nn.functional.cross_entropy(forward(rows), yt[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        pred = forward(torch.from_numpy(test)).argmax(dim=1).numpy()
    return bottoms, top, float(np.mean(pred == y[test]))


def test_split_training_equals_the_composed_model_trained_centrally() -> None:
    split = SplitNN(bottom_widths=(8, 4), top_widths=(8,), epochs=5, batch_size=32, lr=0.3)
    x, y, _, _, out = _run(split)
    bottoms, top, central_accuracy = _central(split, x, y)
    for name, bottom in zip(["guest", "host-0", "host-1"], bottoms, strict=True):
        for key, value in bottom.state_dict().items():
            np.testing.assert_allclose(out[name].bottom[key], value.numpy(), rtol=0, atol=1e-6)
    for key, value in top.state_dict().items():
        np.testing.assert_allclose(out["guest"].top[key], value.numpy(), rtol=0, atol=1e-6)
    metrics = out["guest"].metrics
    assert metrics["accuracy"] == central_accuracy
    assert metrics["accuracy"] > 0.9 and metrics["auc"] > 0.95
    assert metrics["loss"][-1] < metrics["loss"][0]
    assert out["host-0"].top is None and out["host-0"].metrics["batches"] == 5 * 14


def test_same_seed_same_models_other_seed_other_models() -> None:
    split = SplitNN(epochs=1, batch_size=64)
    a = _run(split)[4]
    b = _run(split)[4]
    c = _run(SplitNN(epochs=1, batch_size=64, seed=1))[4]
    for key in a["host-1"].bottom:
        np.testing.assert_array_equal(a["host-1"].bottom[key], b["host-1"].bottom[key])
    assert not np.array_equal(a["host-1"].bottom["0.weight"], c["host-1"].bottom["0.weight"])


def test_what_each_party_sees() -> None:
    split = SplitNN(bottom_widths=(4,), top_widths=(), epochs=1, batch_size=100)
    x, y, _, net, _ = _run(split)
    train, test = split.train_test(len(x))
    for host in ["host-0", "host-1"]:
        seen = net.received(host)
        # a host gets one gradient array per batch from the guest, of its own cut's shape,
        # and nothing else: no labels, no other party's features or activations
        assert {d.sender for d in seen} == {"guest"} and {d.kind for d in seen} == {"gradients"}
        for d in seen:
            m = d.decoded()
            assert len(m.arrays) == 1 and m.arrays[0].shape[1] == 4
            assert set(m.body) == {"epoch", "batch"}
            assert not np.isin(m.arrays[0], y).all()
    seen = net.received("guest")
    assert {d.sender for d in seen} == {"host-0", "host-1"}
    assert {d.kind for d in seen} == {"activations", "test-activations"}
    host_values = x[:, 10:30].astype(np.float32)
    for d in seen:
        (a,) = d.decoded().arrays
        assert a.shape[1] == 4 and a.dtype == np.float32  # the cut's width, not the 10 columns
        assert not np.isin(a[a != 0], host_values).any()  # no raw host feature value travels
    assert net.received("guest")[-1].decoded().arrays[0].shape[0] == len(test)
    assert sum(d.kind == "activations" for d in seen) == 2 * int(np.ceil(len(train) / 100))


def test_dp_noise_changes_what_travels_and_nothing_else_in_the_recipe() -> None:
    kw = dict(bottom_widths=(4,), top_widths=(), epochs=1, batch_size=100)
    clean = _run(SplitNN(**kw))[3]
    noisy_split = SplitNN(**kw, dp_noise=0.5)
    noisy = _run(noisy_split)[3]
    # the first step's activations come from the same initial bottoms: they differ by the noise
    first_clean = next(d for d in clean.received("guest") if d.sender == "host-1")
    first_noisy = next(d for d in noisy.received("guest") if d.sender == "host-1")
    diff = first_noisy.decoded().arrays[0] - first_clean.decoded().arrays[0]
    assert 0.4 < float(diff.std()) < 0.6 and abs(float(diff.mean())) < 0.1
    g_clean = clean.received("host-0")[0].decoded().arrays[0]
    g_noisy = noisy.received("host-0")[0].decoded().arrays[0]
    assert not np.allclose(g_clean, g_noisy)
    assert 0.4 < float((g_noisy - g_clean).std()) < 0.6
    again = _run(noisy_split)[3]
    # the same seed draws the same noise (the log interleaves the hosts as threads ran: compare
    # each pair's messages in order)
    for party in ["guest", "host-0", "host-1"]:
        for sender in ["guest", "host-0", "host-1"]:
            a = [d.frame for d in again.received(party) if d.sender == sender]
            b = [d.frame for d in noisy.received(party) if d.sender == sender]
            assert a == b


def test_bad_settings_are_named() -> None:
    with pytest.raises(ConfigError, match="bottom_widths"):
        SplitNN(bottom_widths=())
    with pytest.raises(ConfigError, match="test_fraction"):
        SplitNN(test_fraction=1.0)
