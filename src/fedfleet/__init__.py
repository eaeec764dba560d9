"""fedfleet: federated learning that runs for real.

The public surface, in the order a run uses it::

    import fedfleet as ff

    task = ff.data.load_digits()
    fed = ff.Federation(task, ff.data.partition.dirichlet(task.train.y, 20, alpha=0.5, seed=0))
    trainer = ff.TorchTrainer(lambda: ff.models.mlp(task.input_shape, task.num_classes))
    strategy = ff.FedAvg(clients_per_round=10, local=ff.FitInstructions(epochs=2, lr=0.2))
    result = ff.Simulation(trainer, fed, strategy, seed=0).run(rounds=50)
    result.history[-1]["test_accuracy"], result.model

Names load on first use (PEP 562): ``import fedfleet`` imports neither torch nor any optional
package, so the command line starts fast and a missing extra only matters to what needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fedfleet._version import __version__

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ loads these
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
    from fedfleet.errors import (
        ConfigError,
        DatasetError,
        FedfleetError,
        LayoutError,
        UpdateRejected,
    )
    from fedfleet.params import Layout, TensorSpec
    from fedfleet.privacy.secagg._strategy import SecAggFedAvg
    from fedfleet.runs import RunConfig, load_config
    from fedfleet.sim import (
        ClientClock,
        FedBuffSimulation,
        Federation,
        Simulation,
        SimulationResult,
    )
    from fedfleet.strategies import (
        ClientUpdate,
        DPFedAvg,
        FedAvg,
        FedBuff,
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
        fedprox,  # the function, not its module
        fedyogi,
    )

_SUBMODULES = {"data", "models", "privacy", "transforms"}
_HOMES = {
    "fedfleet.client": [
        "EvalResult", "FitInstructions", "FitResult", "NumpyLogisticRegression",
        "SklearnTrainer", "TorchTrainer", "Trainer", "VmapTrainer",
    ],
    "fedfleet.errors": [
        "ConfigError", "DatasetError", "FedfleetError", "LayoutError", "UpdateRejected",
    ],
    "fedfleet.params": ["Layout", "TensorSpec"],
    "fedfleet.privacy.secagg._strategy": ["SecAggFedAvg"],
    "fedfleet.runs._config": ["RunConfig", "load_config"],
    "fedfleet.sim": [
        "ClientClock", "FedBuffSimulation", "Federation", "Simulation", "SimulationResult",
    ],
    "fedfleet.strategies": [
        "ClientUpdate", "DPFedAvg", "FedAvg", "FedBuff", "FedNova", "FedPer", "FedRep", "QFedAvg",
        "Scaffold", "Stragglers", "Strategy", "fedadagrad", "fedadam", "fedavgm", "fedprox",
        "fedyogi",
    ],
}  # fmt: skip
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> Any:
    """Import a public name's module the first time the name is used, then cache the name."""
    if name in _SUBMODULES:
        value: Any = importlib.import_module(f"fedfleet.{name}")
    elif name in _HOME_OF:
        value = getattr(importlib.import_module(_HOME_OF[name]), name)
    else:
        raise AttributeError(f"module 'fedfleet' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "ClientClock",
    "ClientUpdate",
    "ConfigError",
    "DPFedAvg",
    "DatasetError",
    "EvalResult",
    "FedAvg",
    "FedBuff",
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
