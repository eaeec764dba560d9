"""Client-side training: the trainer protocol and its PyTorch and NumPy implementations."""

from fedfleet.client.numpy_trainers import NumpyLogisticRegression, SklearnTrainer
from fedfleet.client.protocol import (
    GRAD_CORRECTION,
    PROX_MU,
    EvalResult,
    FitInstructions,
    FitResult,
    Trainer,
    gradient_terms,
)
from fedfleet.client.state_store import (
    ClientState,
    ClientStateStore,
    DiskStateStore,
    MemoryStateStore,
)
from fedfleet.client.threaded_trainer import ThreadedTrainer
from fedfleet.client.torch_trainer import TorchTrainer, optimizer_names, resolve_optimizer
from fedfleet.client.vmap_trainer import VmapTrainer

__all__ = [
    "GRAD_CORRECTION",
    "PROX_MU",
    "ClientState",
    "ClientStateStore",
    "DiskStateStore",
    "EvalResult",
    "FitInstructions",
    "FitResult",
    "MemoryStateStore",
    "NumpyLogisticRegression",
    "SklearnTrainer",
    "ThreadedTrainer",
    "TorchTrainer",
    "Trainer",
    "VmapTrainer",
    "gradient_terms",
    "optimizer_names",
    "resolve_optimizer",
]
