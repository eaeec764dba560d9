"""Client-side training: the trainer protocol and its PyTorch and NumPy implementations."""

from fedfleet.client._numpy_trainers import NumpyLogisticRegression, SklearnTrainer
from fedfleet.client._protocol import (
    GRAD_CORRECTION,
    PROX_MU,
    EvalResult,
    FitInstructions,
    FitResult,
    Trainer,
    gradient_terms,
)
from fedfleet.client._state_store import (
    ClientState,
    ClientStateStore,
    DiskStateStore,
    MemoryStateStore,
)
from fedfleet.client._threaded_trainer import ThreadedTrainer
from fedfleet.client._torch_trainer import TorchTrainer, optimizer_names, resolve_optimizer
from fedfleet.client._vmap_trainer import VmapTrainer

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
