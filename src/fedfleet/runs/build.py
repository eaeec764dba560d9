"""From a :class:`RunConfig` to the pieces of a run: task, federation, trainer, strategy."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedfleet.client.numpy_trainers import NumpyLogisticRegression
from fedfleet.client.protocol import FitInstructions, Trainer
from fedfleet.client.torch_trainer import TorchTrainer
from fedfleet.data import partition as part
from fedfleet.data.base import TaskData
from fedfleet.data.registry import load_task
from fedfleet.models.zoo import build_model
from fedfleet.runs.config import RunConfig
from fedfleet.sim.engine import Simulation
from fedfleet.sim.federation import Federation
from fedfleet.strategies.fedavg import FedAvg
from fedfleet.transforms.base import sgd

__all__ = ["RunPieces", "build_federation", "build_run", "build_trainer", "load_task_for"]

_OPTIMIZERS_WITH_MOMENTUM = {"sgd", "rmsprop"}


@dataclass(frozen=True)
class RunPieces:
    task: TaskData
    simulation: Simulation


def load_task_for(config: RunConfig) -> TaskData:
    d = config.data
    if d.name == "digits":
        return load_task("digits", test_fraction=d.test_fraction, seed=config.seed)
    if d.name in ("synthetic", "synthetic-iid"):
        return load_task(
            d.name,
            alpha=d.synthetic_alpha,
            beta=d.synthetic_beta,
            num_devices=d.num_devices,
            test_fraction=d.test_fraction,
            seed=config.seed,
        )
    return load_task(d.name, path=d.path)


def build_federation(config: RunConfig, task: TaskData) -> Federation:
    d, seed = config.data, config.seed
    n = len(task.train)
    if d.partition == "natural":
        parts = part.natural(task)
        return Federation(task, parts, task.natural_test, test_from_task_test=True)
    if d.partition == "iid":
        parts = part.iid(n, d.num_clients, seed=seed)
    elif d.partition == "dirichlet":
        parts = part.dirichlet(task.train.y, d.num_clients, d.alpha, seed=seed)
    elif d.partition == "shards":
        parts = part.shards(task.train.y, d.num_clients, d.shards_per_client, seed=seed)
    else:
        parts = part.quantity_skew(
            n,
            d.num_clients,
            seed=seed,
            distribution=d.quantity_distribution,
            sigma=d.quantity_sigma,
            exponent=d.quantity_exponent,
        )
    if d.client_test_fraction > 0:
        train, test = part.train_test_split_clients(parts, d.client_test_fraction, seed=seed)
        return Federation(task, train, test)
    return Federation(task, parts)


def build_trainer(config: RunConfig, task: TaskData) -> Trainer:
    m, c = config.model, config.client
    if m.backend == "numpy":
        return NumpyLogisticRegression(task.input_shape, task.num_classes)
    args: dict[str, float] = {"weight_decay": c.weight_decay}
    if c.optimizer in _OPTIMIZERS_WITH_MOMENTUM:
        args["momentum"] = c.momentum
    return TorchTrainer(
        lambda: build_model(m.name, task.input_shape, task.num_classes, hidden=m.hidden),
        optimizer=c.optimizer,
        optimizer_args=args,
    )


def build_run(config: RunConfig) -> RunPieces:
    """Load the data and assemble a ready-to-run :class:`Simulation`."""
    torch.set_num_threads(config.threads)
    task = load_task_for(config)
    s, c = config.strategy, config.client
    strategy = FedAvg(
        clients_per_round=None if s.fraction is not None else s.clients_per_round,
        fraction=s.fraction,
        local=FitInstructions(epochs=c.epochs, batch_size=c.batch_size, lr=c.lr),
        server_optimizer=sgd(s.server_lr, s.server_momentum),
    )
    sim = Simulation(
        trainer=build_trainer(config, task),
        federation=build_federation(config, task),
        strategy=strategy,
        seed=config.seed,
        eval_every=config.eval.every,
        federated_eval_every=config.eval.federated_every,
    )
    return RunPieces(task, sim)
