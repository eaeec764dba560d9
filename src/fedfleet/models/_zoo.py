"""Reference models: logistic regression, MLPs and the FedAvg paper's CNN.

All take the dataset's ``input_shape`` and ``num_classes`` so one config fits digits (1x8x8),
MNIST/FEMNIST (1x28x28) and Synthetic (60,).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import prod

from torch import nn

from fedfleet.errors import ConfigError

__all__ = ["MODELS", "build_model", "cnn", "logistic_regression", "mlp"]


def logistic_regression(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Multinomial logistic regression: one linear layer on the flattened input."""
    return nn.Sequential(nn.Flatten(), nn.Linear(prod(input_shape), num_classes))


def mlp(input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (128,)) -> nn.Module:
    """A ReLU MLP. ``hidden=(128,)`` on MNIST is 784-128-10; ``(200, 200)`` is the FedAvg
    paper's "2NN" (McMahan et al. 2017)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = prod(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def cnn(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """The FedAvg paper's CNN (McMahan et al. 2017): two 5x5 convolutions with 32 and 64
    channels ('same' padding), each followed by 2x2 max-pooling, a 512-unit ReLU layer and a
    linear output. 1,663,370 parameters on 1x28x28 inputs with 10 classes."""
    if len(input_shape) != 3:
        raise ConfigError(
            f"the cnn model needs image inputs (channels, height, width); this dataset's samples "
            f"have shape {tuple(input_shape)}; use model.name = 'mlp' or 'logreg'"
        )
    c, h, w = input_shape
    return nn.Sequential(
        nn.Conv2d(c, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * (h // 4) * (w // 4), 512),
        nn.ReLU(),
        nn.Linear(512, num_classes),
    )


MODELS: dict[str, Callable[..., nn.Module]] = {
    "logreg": logistic_regression,
    "mlp": mlp,
    "2nn": lambda input_shape, num_classes: mlp(input_shape, num_classes, hidden=(200, 200)),
    "cnn": cnn,
}


def build_model(
    name: str, input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] | None = None
) -> nn.Module:
    """Build a reference model by name (one of ``MODELS``)."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")
    if hidden is not None and name == "mlp":
        return mlp(input_shape, num_classes, hidden=tuple(hidden))
    return MODELS[name](input_shape, num_classes)
