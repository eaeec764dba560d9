"""Client-side training: the trainer protocol and its PyTorch and NumPy implementations."""

from fedfleet.client.numpy_trainers import NumpyLogisticRegression, SklearnTrainer
from fedfleet.client.protocol import EvalResult, FitInstructions, FitResult, Trainer
from fedfleet.client.torch_trainer import TorchTrainer, optimizer_names, resolve_optimizer

__all__ = [
    "EvalResult",
    "FitInstructions",
    "FitResult",
    "NumpyLogisticRegression",
    "SklearnTrainer",
    "TorchTrainer",
    "Trainer",
    "optimizer_names",
    "resolve_optimizer",
]
