"""Client-side training: the trainer protocol and its PyTorch and NumPy implementations."""

from fedfleet.client.numpy_trainers import NumpyLogisticRegression, SklearnTrainer
from fedfleet.client.protocol import EvalResult, FitInstructions, FitResult, Trainer
from fedfleet.client.state_store import (
    ClientState,
    ClientStateStore,
    DiskStateStore,
    MemoryStateStore,
)
from fedfleet.client.torch_trainer import TorchTrainer, optimizer_names, resolve_optimizer

__all__ = [
    "ClientState",
    "ClientStateStore",
    "DiskStateStore",
    "EvalResult",
    "FitInstructions",
    "FitResult",
    "MemoryStateStore",
    "NumpyLogisticRegression",
    "SklearnTrainer",
    "TorchTrainer",
    "Trainer",
    "optimizer_names",
    "resolve_optimizer",
]
