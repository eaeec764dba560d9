"""fedfleet: federated learning that runs for real.

The public surface, in the order a run uses it::

    import fedfleet as ff

    task = ff.data.load_digits()
    fed = ff.Federation(task, ff.data.partition.dirichlet(task.train.y, 20, alpha=0.5, seed=0))
    trainer = ff.TorchTrainer(lambda: ff.models.mlp(task.input_shape, task.num_classes))
    strategy = ff.FedAvg(clients_per_round=10, local=ff.FitInstructions(epochs=2, lr=0.2))
    result = ff.Simulation(trainer, fed, strategy, seed=0).run(rounds=50)
    result.history[-1]["test_accuracy"], result.model
"""

from fedfleet import data, models, privacy, transforms
from fedfleet.client import (
    EvalResult,
    FitInstructions,
    FitResult,
    NumpyLogisticRegression,
    SklearnTrainer,
    TorchTrainer,
    Trainer,
    VmapTrainer,
)
from fedfleet.errors import ConfigError, DatasetError, FedfleetError, LayoutError, UpdateRejected
from fedfleet.params import Layout, TensorSpec
from fedfleet.privacy.secagg.strategy import SecAggFedAvg
from fedfleet.runs.config import RunConfig, load_config
from fedfleet.sim import ClientClock, FedBuffSimulation, Federation, Simulation, SimulationResult
from fedfleet.strategies import (
    ClientUpdate,
    DPFedAvg,
    FedAvg,
    FedNova,
    FedPer,
    FedRep,
    QFedAvg,
    Scaffold,
    Stragglers,
    Strategy,
    fedadagrad,
    fedadam,
    fedavgm,
    fedprox,
    fedyogi,
)

__version__ = "0.1.0"

__all__ = [
    "ClientClock",
    "ClientUpdate",
    "ConfigError",
    "DPFedAvg",
    "DatasetError",
    "EvalResult",
    "FedAvg",
    "FedBuffSimulation",
    "FedNova",
    "FedPer",
    "FedRep",
    "Federation",
    "FedfleetError",
    "FitInstructions",
    "FitResult",
    "Layout",
    "LayoutError",
    "NumpyLogisticRegression",
    "QFedAvg",
    "RunConfig",
    "Scaffold",
    "SecAggFedAvg",
    "Simulation",
    "SimulationResult",
    "SklearnTrainer",
    "Stragglers",
    "Strategy",
    "TensorSpec",
    "TorchTrainer",
    "Trainer",
    "UpdateRejected",
    "VmapTrainer",
    "__version__",
    "data",
    "fedadagrad",
    "fedadam",
    "fedavgm",
    "fedprox",
    "fedyogi",
    "load_config",
    "models",
    "privacy",
    "transforms",
]
