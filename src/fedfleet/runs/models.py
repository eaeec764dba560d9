"""The models ``model.name`` may select: each registered with its parameters and a build function.

The networks themselves are in :mod:`fedfleet.models.zoo`; an entry here says which ``[model]``
keys a model takes and builds it from them, sized from the dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationInfo, field_validator
from torch import nn

from fedfleet.data.base import TaskData
from fedfleet.errors import ConfigError
from fedfleet.models.zoo import cnn, logistic_regression, mlp
from fedfleet.runs.registry import Entry, Params, Registry
from fedfleet.runs.user_code import load_reference, resolve_reference

__all__ = ["MODELS", "MlpParams", "Model", "ModelParams", "model_factory"]


class ModelParams(Params):
    """What every ``[model]`` section has."""

    backend: Literal["torch", "numpy"] = "torch"
    """'numpy' trains the model with the pure-NumPy trainer (models that have one)."""


ModelBuild = Callable[[Any, Sequence[int], int], nn.Module]
"""``build(params, input_shape, num_classes) -> nn.Module``."""


@dataclass(frozen=True, kw_only=True)
class Model(Entry[Any]):
    """A registered model.

    Attributes:
        build: the network for a dataset's input shape and number of classes.
        numpy: whether ``model.backend = 'numpy'`` can train it (the pure-NumPy trainer).
    """

    build: ModelBuild
    numpy: bool = False


MODELS: Registry[Model, ModelParams] = Registry(
    kind="model", section="model", base=ModelParams, default="mlp"
)
"""Every model the config can name, in the order ``fedfleet`` lists them."""


class LogregParams(ModelParams):
    name: Literal["logreg"] = "logreg"


class MlpParams(ModelParams):
    name: Literal["mlp"] = "mlp"
    hidden: tuple[int, ...] = (128,)
    """Hidden layer widths, e.g. [200, 200]."""


class TwoNNParams(ModelParams):
    name: Literal["2nn"] = "2nn"


class CnnParams(ModelParams):
    name: Literal["cnn"] = "cnn"


MODELS.register(
    Model(
        name="logreg",
        params=LogregParams,
        summary="multinomial logistic regression (one linear layer)",
        build=lambda p, shape, classes: logistic_regression(shape, classes),
        numpy=True,
    )
)
MODELS.register(
    Model(
        name="mlp",
        params=MlpParams,
        summary="ReLU MLP with `hidden` widths (784-128-10 on MNIST)",
        build=lambda p, shape, classes: mlp(shape, classes, hidden=p.hidden),
    )
)
MODELS.register(
    Model(
        name="2nn",
        params=TwoNNParams,
        summary="the FedAvg paper's 2NN: MLP 200-200 (McMahan et al. 2017)",
        build=lambda p, shape, classes: mlp(shape, classes, hidden=(200, 200)),
    )
)
MODELS.register(
    Model(
        name="cnn",
        params=CnnParams,
        summary="the FedAvg paper's CNN: two 5x5 convolutions, 512 ReLU units",
        build=lambda p, shape, classes: cnn(shape, classes),
    )
)


class CustomModelParams(ModelParams):
    name: Literal["custom"] = "custom"
    factory: str | None = None
    """Your model: 'FILE.py:FUNCTION' (FILE relative to the config file), called as
    FUNCTION(input_shape, num_classes) -> torch.nn.Module."""

    @field_validator("factory")
    @classmethod
    def _resolve(cls, value: str | None, info: ValidationInfo) -> str | None:
        return resolve_reference(value, info)


def _custom(p: CustomModelParams, shape: Sequence[int], classes: int) -> nn.Module:
    if p.factory is None:
        raise ConfigError(
            "model.name = 'custom' builds your model with model.factory = 'FILE.py:FUNCTION' "
            "(e.g. 'model.py:build'); set it"
        )
    model = load_reference(p.factory, "model.factory")(tuple(shape), classes)
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model.factory = {p.factory!r} returned {type(model).__name__}, not a "
            "torch.nn.Module; return the network"
        )
    return model


MODELS.register(
    Model(
        name="custom",
        params=CustomModelParams,
        summary="your own torch.nn.Module, built by model.factory = 'FILE.py:FUNCTION' "
        "(fedfleet new writes one)",
        build=_custom,
    )
)


def model_factory(params: ModelParams, task: TaskData) -> Callable[[], nn.Module]:
    """A function building a fresh copy of the model ``params`` names, sized for ``task`` (what
    every trainer takes)."""
    build = MODELS[params.name].build
    return lambda: build(params, task.input_shape, task.num_classes)
