"""Reference models from the FL papers, sized from the dataset."""

from fedfleet.models.zoo import MODELS, build_model, cnn, logistic_regression, mlp

__all__ = ["MODELS", "build_model", "cnn", "logistic_regression", "mlp"]
