"""The models ``model.name`` may select: each registered with its parameters and a build function.

The networks themselves are in :mod:`fedfleet.models._zoo`; an entry here says which ``[model]``
keys a model takes and builds it from them, sized from the dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from torch import nn

from fedfleet.data import TaskData
from fedfleet.errors import ConfigError
from fedfleet.models import (
    LoraSpec,
    causal_transformer,
    char_lstm,
    cnn,
    from_base,
    logistic_regression,
    lora_factory,
    mlp,
)
from fedfleet.runs._registry import Entry, Params, Registry
from fedfleet.runs._user_code import load_reference, resolve_reference

__all__ = ["MODELS", "MlpParams", "Model", "ModelParams", "lora_spec", "model_factory"]


class ModelParams(Params):
    """What every ``[model]`` section has."""

    backend: Literal["torch", "numpy"] = "torch"
    """'numpy' trains the model with the pure-NumPy trainer (models that have one)."""
    base: str | None = None
    """A safetensors file with the model's pretrained full state, held by every party: where
    fine-tuning starts (never sent). None = weights drawn from the run's seed."""
    base_seed: int | None = None
    """With `base` or LoRA: the seed that draws the starting weights (before `base` loads) and
    LoRA's A factors, the same on every party (None = 0)."""
    lora_rank: int | None = Field(None, ge=1)
    """LoRA (through peft): adapt the model with rank-r adapters and federate only those; the
    frozen base never leaves a party. None = train every weight."""
    lora_alpha: int | None = Field(None, ge=1)
    """LoRA scale numerator: updates are (alpha / rank) * B @ A (None = rank, scale 1)."""
    lora_targets: tuple[str, ...] | None = None
    """Names (or name suffixes) of the modules LoRA adapts (None = every nn.Linear)."""
    lora_dropout: float | None = Field(None, ge=0.0, lt=1.0)
    """Dropout on the adapters' input while training (None = 0)."""
    lora_freeze_a: bool | None = None
    """FFA-LoRA: keep A at its seeded init and train/send B only, so averaging B averages the
    clients' weight updates B @ A exactly (None = false: A and B train, averaged separately)."""

    @model_validator(mode="after")
    def _lora_keys_need_rank(self) -> ModelParams:
        if self.lora_rank is None:
            stray = [
                k
                for k in ("lora_alpha", "lora_targets", "lora_dropout", "lora_freeze_a")
                if getattr(self, k) is not None
            ]
            if stray:
                raise ValueError(f"{', '.join(stray)} set without lora_rank; set lora_rank too")
        if self.backend != "torch" and (self.lora_rank is not None or self.base is not None):
            raise ValueError("lora_rank and base need backend = 'torch'")
        return self

    @property
    def fine_tunes(self) -> bool:
        """Whether the model starts from a base file or trains LoRA adapters."""
        return self.base is not None or self.lora_rank is not None


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

    def plain() -> nn.Module:
        return build(params, task.input_shape, task.num_classes)

    spec = lora_spec(params)
    if spec is not None:
        return lora_factory(plain, spec)
    if params.base is not None:
        return from_base(plain, params.base, seed=params.base_seed or 0)
    return plain


def lora_spec(params: ModelParams) -> LoraSpec | None:
    """The LoRA adaptation ``[model]`` asks for, or None (``lora_rank`` unset)."""
    if params.lora_rank is None:
        return None
    return LoraSpec(
        rank=params.lora_rank,
        alpha=params.lora_alpha,
        targets=params.lora_targets,
        dropout=params.lora_dropout or 0.0,
        freeze_a=bool(params.lora_freeze_a),
        seed=params.base_seed or 0,
        base=params.base,
    )
