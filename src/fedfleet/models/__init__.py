"""Reference models from the FL papers, sized from the dataset."""

from fedfleet.models.language import CausalTransformer, CharLSTM, causal_transformer, char_lstm
from fedfleet.models.zoo import MODELS, build_model, cnn, logistic_regression, mlp

__all__ = [
    "MODELS",
    "CausalTransformer",
    "CharLSTM",
    "build_model",
    "causal_transformer",
    "char_lstm",
    "cnn",
    "logistic_regression",
    "mlp",
]
