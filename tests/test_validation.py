import numpy as np
import pytest

from fedfleet.errors import UpdateRejected
from fedfleet.params import Layout
from fedfleet.strategies import ClientUpdate
from fedfleet.validation import validate_update

LAYOUT = Layout.from_shapes({"w": (3, 2), "b": (3,)})


def _update(**kw):
    base = dict(client_id=4, delta=np.zeros(9, np.float32), num_samples=10, num_steps=2)
    base.update(kw)
    return ClientUpdate(**base)


def test_good_update_passes():
    validate_update(_update(), LAYOUT, 3, {4}, max_samples=10)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(client_id=9), "client 9 rejected: this client was not selected"),
        (dict(delta=np.zeros(8, np.float32)), r"shape \(8,\), expected \(9,\)"),
        (dict(delta=np.zeros((9, 1), np.float32)), r"shape \(9, 1\)"),
        (dict(delta=np.zeros(9, np.float64)), "dtype float64"),
        (dict(delta=np.array([0, 1, np.nan, 0, 0, np.inf, 0, 0, 0], np.float32)), "2 non-finite"),
        (dict(delta=[0.0] * 9), "is a list"),
        (dict(num_samples=0), "num_samples must be a positive integer"),
        (dict(num_samples=2.5), "num_samples must be a positive integer"),
        (dict(num_samples=11), "declared 11 samples but holds only 10"),
        (dict(num_steps=-1), "num_steps"),
    ],
)
def test_bad_updates_are_rejected_with_who_and_what(kw, message):
    with pytest.raises(UpdateRejected, match=message) as info:
        validate_update(_update(**kw), LAYOUT, 3, {4}, max_samples=10)
    assert info.value.round == 3
    assert str(info.value).startswith("round 3: update from client")


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        ({"train_loss": float("nan")}, "metric 'train_loss' is nan"),
        ({"train_loss": float("inf")}, "metric 'train_loss' is inf"),
        ({"train_loss": "low"}, "metric 'train_loss' is 'low', expected a number"),
        ({"flag": True}, "expected a number"),
    ],
)
def test_metrics_must_be_finite_numbers(metrics, message):
    with pytest.raises(UpdateRejected, match=message):
        validate_update(_update(metrics=metrics), LAYOUT, 3, {4}, max_samples=10)
