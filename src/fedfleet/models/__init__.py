"""Reference models from the FL papers, sized from the dataset; pretrained bases and LoRA."""

from fedfleet.models._language import CausalTransformer, CharLSTM, causal_transformer, char_lstm
from fedfleet.models._lora import (
    LoraFactors,
    LoraSpec,
    adapter_factors,
    adapter_name,
    lora_factory,
    product_gap,
)
from fedfleet.models._pretrained import (
    from_base,
    load_base,
    pretrain_base,
    save_base,
    split_for_pretraining,
)
from fedfleet.models._zoo import MODELS, build_model, cnn, logistic_regression, mlp

__all__ = [
    "MODELS",
    "CausalTransformer",
    "CharLSTM",
    "LoraFactors",
    "LoraSpec",
    "adapter_factors",
    "adapter_name",
    "build_model",
    "causal_transformer",
    "char_lstm",
    "cnn",
    "from_base",
    "load_base",
    "logistic_regression",
    "lora_factory",
    "mlp",
    "pretrain_base",
    "product_gap",
    "save_base",
    "split_for_pretraining",
]
