"""The models ``model.name`` may select: each registered with its parameters and a build function.

The networks themselves are in :mod:`fedfleet.models.zoo`; an entry here says which ``[model]``
keys a model takes and builds it from them, sized from the dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field
from torch import nn

from fedfleet.data.base import TaskData
from fedfleet.errors import ConfigError
from fedfleet.models.language import causal_transformer, char_lstm
from fedfleet.models.zoo import cnn, logistic_regression, mlp
from fedfleet.runs.registry import Entry, Params, Registry

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
        tokens: whether it reads windows of token ids (a language model, for text datasets);
            such models train client by client, not in the vectorised cohort.
    """

    build: ModelBuild
    numpy: bool = False
    tokens: bool = False


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


class CharLstmParams(ModelParams):
    name: Literal["char-lstm"] = "char-lstm"
    embed: int = Field(8, ge=1)
    """Embedding width of a character."""
    hidden: int = Field(256, ge=1)
    """Units of each LSTM layer."""
    layers: int = Field(2, ge=1)
    """Stacked LSTM layers."""


class TransformerParams(ModelParams):
    name: Literal["transformer"] = "transformer"
    d_model: int = Field(64, ge=1)
    """Width of the token representations (a multiple of heads)."""
    layers: int = Field(2, ge=1)
    """Transformer blocks."""
    heads: int = Field(4, ge=1)
    """Attention heads per block."""


def _context(name: str, shape: Sequence[int]) -> int:
    if len(shape) != 1:
        raise ConfigError(
            f"model {name!r} reads windows of token ids, shape (context,); this dataset's "
            f"samples have shape {tuple(shape)}: use data.name = 'shakespeare' or 'text'"
        )
    return int(shape[0])


def _char_lstm(p: CharLstmParams, shape: Sequence[int], vocab: int) -> nn.Module:
    _context(p.name, shape)
    return char_lstm(vocab, p.embed, p.hidden, p.layers)


def _transformer(p: TransformerParams, shape: Sequence[int], vocab: int) -> nn.Module:
    return causal_transformer(vocab, _context(p.name, shape), p.d_model, p.layers, p.heads)


MODELS.register(
    Model(
        name="char-lstm",
        params=CharLstmParams,
        summary="character LSTM: embedding 8, two LSTM layers of 256 (LEAF, FedAvg paper)",
        build=_char_lstm,
        tokens=True,
    )
)
MODELS.register(
    Model(
        name="transformer",
        params=TransformerParams,
        summary="small causal transformer (pre-norm blocks, learned positions, no dropout)",
        build=_transformer,
        tokens=True,
    )
)


def model_factory(params: ModelParams, task: TaskData) -> Callable[[], nn.Module]:
    """A function building a fresh copy of the model ``params`` names, sized for ``task`` (what
    every trainer takes)."""
    build = MODELS[params.name].build
    return lambda: build(params, task.input_shape, task.num_classes)
