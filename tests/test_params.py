import numpy as np
import pytest
import torch
from torch import nn

from fedfleet.errors import LayoutError
from fedfleet.models import cnn, mlp
from fedfleet.params import Layout


def test_round_trip_state_dict_is_exact():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    )
    model(torch.randn(5, 1, 8, 8))  # moves BatchNorm running stats away from their init
    layout = Layout.from_module(model)
    vec = layout.flatten(model.state_dict())
    assert vec.dtype == np.float32 and vec.shape == (layout.size,)
    # every float tensor is in, the integer counter is not
    assert "1.num_batches_tracked" not in layout.names
    assert "1.running_mean" in layout.names
    assert layout.size == sum(
        t.numel() for t in model.state_dict().values() if t.is_floating_point()
    )
    restored = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 3))
    restored.load_state_dict(layout.to_state_dict(vec), strict=False)
    for (k, a), (_, b) in zip(
        model.state_dict().items(), restored.state_dict().items(), strict=True
    ):
        if a.is_floating_point():
            assert torch.equal(a, b), k


def test_offsets_follow_state_dict_order():
    layout = Layout.from_module(nn.Linear(3, 2))
    assert [(s.name, s.shape, s.offset) for s in layout.specs] == [
        ("weight", (2, 3), 0),
        ("bias", (2,), 6),
    ]
    vec = np.arange(8, dtype=np.float32)
    parts = layout.unflatten(vec)
    np.testing.assert_array_equal(parts["weight"], [[0, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(parts["bias"], [6, 7])


def test_half_precision_round_trips_and_float64_is_refused():
    half = nn.Linear(3, 2).to(torch.bfloat16)
    layout = Layout.from_module(half)
    back = layout.to_state_dict(layout.flatten(half.state_dict()))
    assert back["weight"].dtype == torch.bfloat16
    assert torch.equal(back["weight"], half.state_dict()["weight"])
    with pytest.raises(LayoutError, match="float64"):
        Layout.from_module(nn.Linear(3, 2).double())


def test_fingerprint_separates_models():
    a = Layout.from_module(mlp((1, 28, 28), 10))
    b = Layout.from_module(mlp((1, 28, 28), 10, hidden=(200, 200)))
    assert a.fingerprint == Layout.from_module(mlp((1, 28, 28), 10)).fingerprint
    assert a.fingerprint != b.fingerprint


def test_reference_model_sizes_match_the_papers():
    assert Layout.from_module(mlp((1, 28, 28), 10)).size == 101_770
    assert Layout.from_module(mlp((1, 28, 28), 10, hidden=(200, 200))).size == 199_210
    assert Layout.from_module(cnn((1, 28, 28), 10)).size == 1_663_370


def test_check_names_the_mismatch():
    layout = Layout.from_module(nn.Linear(3, 2))
    with pytest.raises(LayoutError, match=r"shape \(7,\).*expected \(8,\)"):
        layout.check(np.zeros(7, dtype=np.float32))
    with pytest.raises(LayoutError, match="float64"):
        layout.check(np.zeros(8))


def test_bind_makes_parameters_views_of_one_buffer():
    model = nn.Linear(3, 2)
    layout = Layout.from_module(model)
    before = layout.flatten(model.state_dict())
    flat = torch.zeros(layout.size)
    layout.bind(model, flat)
    assert np.array_equal(flat.numpy(), before)  # binding keeps the weights
    flat.copy_(torch.arange(8, dtype=torch.float32))
    assert torch.equal(model.bias.detach(), torch.tensor([6.0, 7.0]))
    with torch.no_grad():
        model.weight.add_(1.0)  # an optimizer step writes straight into the buffer
    assert flat[0].item() == 1.0
