"""fedfleet: federated learning that runs for real.

The public surface, in the order a run uses it::

    import fedfleet as ff

    task = ff.data.load_digits()
    fed = ff.Federation(task, ff.data.partition.dirichlet(task.train.y, 20, alpha=0.5, seed=0))
    trainer = ff.TorchTrainer(lambda: ff.models.mlp(task.input_shape, task.num_classes))
    strategy = ff.FedAvg(clients_per_round=10, local=ff.FitInstructions(epochs=2, lr=0.05))
    result = ff.Simulation(trainer, fed, strategy, seed=0).run(rounds=50)
    result.history[-1]["test_accuracy"], result.model
"""

from fedfleet import data, models, transforms
from fedfleet.client import (
    EvalResult,
    FitInstructions,
    FitResult,
    NumpyLogisticRegression,
    SklearnTrainer,
    TorchTrainer,
    Trainer,
)
from fedfleet.errors import ConfigError, DatasetError, FedfleetError, LayoutError, UpdateRejected
from fedfleet.params import Layout, TensorSpec
from fedfleet.runs.config import RunConfig, load_config
from fedfleet.sim import Federation, Simulation, SimulationResult
from fedfleet.strategies import ClientUpdate, FedAvg, Strategy

__version__ = "0.1.0"

__all__ = [
    "ClientUpdate",
    "ConfigError",
    "DatasetError",
    "EvalResult",
    "FedAvg",
    "Federation",
    "FedfleetError",
    "FitInstructions",
    "FitResult",
    "Layout",
    "LayoutError",
    "NumpyLogisticRegression",
    "RunConfig",
    "Simulation",
    "SimulationResult",
    "SklearnTrainer",
    "Strategy",
    "TensorSpec",
    "TorchTrainer",
    "Trainer",
    "UpdateRejected",
    "__version__",
    "data",
    "load_config",
    "models",
    "transforms",
]
