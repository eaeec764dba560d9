"""From a :class:`RunConfig` to the pieces of a run: task, federation, trainer, strategy."""

from __future__ import annotations

import hashlib
import math
import os
import tomllib
from dataclasses import dataclass

import torch

from fedfleet.client import FitInstructions, NumpyLogisticRegression, TorchTrainer, Trainer
from fedfleet.data import TaskData
from fedfleet.data import partition as part
from fedfleet.errors import ConfigError, FedfleetError
from fedfleet.privacy import DPSGDLedger, DPSGDTrainer, LocalDP
from fedfleet.runs._config import RunConfig, validate_config
from fedfleet.runs._datasets import DATASETS, PartitionParams, partition_clients
from fedfleet.runs._executors import choose_executor
from fedfleet.runs._models import model_factory
from fedfleet.runs.algorithms import ALGORITHMS, BuildContext, CohortParams, WeightedParams
from fedfleet.sim import (
    ClientProfiles,
    FedBuffSimulation,
    Lognormal,
    ProfileSpec,
    Simulation,
    SyntheticPopulation,
    load_profiles_csv,
)
from fedfleet.sim._deadline import DeadlinePolicy, DropLate, OverSelect, PartialWork
from fedfleet.sim._federation import ClientPopulation, Federation
from fedfleet.sim._ray_executor import WorkerRun
from fedfleet.strategies import OortSelection, Reweighted, Strategy, by_steps, uniform
from fedfleet.strategies._compensation import Compensation, CompensationRule, MoreEpochs, ScaleLR
from fedfleet.strategies._fedbuff import FedBuff

__all__ = [
    "RunPieces",
    "build_federation",
    "build_population",
    "build_profiles",
    "build_run",
    "build_strategy",
    "build_trainer",
    "check_device",
    "choose_executor",
    "load_task_for",
    "worker_run",
]


@dataclass(frozen=True)
class RunPieces:
    task: TaskData
    simulation: Simulation | FedBuffSimulation
    executor: str = "sequential"
    """The cohort executor chosen, with the reason (printed by the CLI)."""


def load_task_for(config: RunConfig) -> TaskData:
    """The task ``config.data`` names: its train pool and the server's test set."""
    return DATASETS[config.data.name].load(config.data, config.seed)


def build_population(config: RunConfig) -> SyntheticPopulation:
    """A lazily generated population (``data.name = 'synthetic-population'``:
    ``data.num_clients`` Synthetic(alpha, beta) devices, generated when sampled;
    'synthetic-iid-population': Synthetic-IID, one shared model); the server's test set is 50
    further devices."""
    d = config.data
    build = DATASETS[d.name].population
    if build is None:
        populations = ", ".join(DATASETS.names(lambda e: e.population is not None))
        raise ConfigError(
            f"data.name = {d.name!r} is a partitioned dataset, not a generated population "
            f"({populations}); build it with build_federation(config, load_task_for(config))"
        )
    return build(d, config.seed)


def build_federation(config: RunConfig, task: TaskData) -> Federation:
    """``task``'s train pool split across clients as ``[data]`` says (with held-out client data
    when ``data.client_test_fraction > 0``)."""
    d, seed = config.data, config.seed
    if not isinstance(d, PartitionParams):
        raise ConfigError(
            f"data.name = {d.name!r} is a lazily generated population, not a partitioned "
            "dataset; build it with build_population(config)"
        )
    parts = partition_clients(d, task, seed)
    if d.partition == "natural":
        return Federation(task, parts, task.natural_test, test_from_task_test=True)
    if d.client_test_fraction > 0:
        train, test = part.train_test_split_clients(parts, d.client_test_fraction, seed=seed)
        return Federation(task, train, test)
    return Federation(task, parts)


def build_trainer(config: RunConfig, task: TaskData) -> Trainer:
    m, c, p = config.model, config.client, config.privacy
    if m.backend == "numpy":  # the config validator checked that the model has a NumPy trainer
        return NumpyLogisticRegression(task.input_shape, task.num_classes)
    if p.sgd_noise_multiplier is not None:
        if c.precision != "fp32":
            raise ConfigError(
                f"client.precision = {c.precision!r} is not available with DP-SGD "
                "(privacy.sgd_noise_multiplier); its per-sample clipping runs in float32"
            )
        return DPSGDTrainer(
            model_factory(m, task),
            clip_norm=p.sgd_clip_norm,
            noise_multiplier=p.sgd_noise_multiplier,
            noise=p.noise,
            delta=p.delta,
            device=config.device,
        )
    return TorchTrainer(
        model_factory(m, task),
        optimizer=c.optimizer,
        optimizer_args=c.optimizer_args(),
        device=config.device,
        precision=c.precision,
    )


def check_device(config: RunConfig) -> None:
    """Refuse ``device = 'cuda'`` where torch sees no CUDA device, before anything loads; on
    CUDA, make cuDNN exact and deterministic (no TF32 convolutions, no autotuned algorithms),
    so that the same seed gives the same bits and CNNs agree with the CPU to float32 rounding."""
    if config.device != "cuda":
        return
    if not torch.cuda.is_available():
        raise ConfigError(
            "device = 'cuda' but no CUDA device is visible to torch (torch.cuda.is_available() "
            f"is False; torch {torch.__version__}, CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); use device = 'cpu', or "
            "install a CUDA build of torch on a machine with a GPU"
        )
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def _context(config: RunConfig, trainer: Trainer, num_clients: int) -> BuildContext:
    c = config.client
    return BuildContext(
        local=FitInstructions(epochs=c.epochs, batch_size=c.batch_size, lr=c.lr),
        client=c,
        privacy=config.privacy,
        clock=config.clock,
        trainer=trainer,
        num_clients=num_clients,
        seed=config.seed,
        rounds=config.rounds,
        eval_every=config.eval.every,
    )


def build_strategy(config: RunConfig, trainer: Trainer, num_clients: int) -> Strategy | FedBuff:
    """The strategy ``config.strategy`` names (built by its registered entry), with the client
    settings as local instructions (FedBuff's, for the asynchronous loop)."""
    algorithm = ALGORITHMS[config.strategy.name]
    return algorithm.strategy(config.strategy, _context(config, trainer, num_clients))


def build_run(config: RunConfig) -> RunPieces:
    """Load the data and assemble a ready-to-run simulation (synchronous, or FedBuff's
    asynchronous engine for ``strategy.name = 'fedbuff'``)."""
    check_device(config)
    torch.set_num_threads(config.threads)
    federation: ClientPopulation
    if DATASETS[config.data.name].population is not None:
        federation = build_population(config)
        task = federation.task
    else:
        task = load_task_for(config)
        federation = build_federation(config, task)
    trainer = build_trainer(config, task)
    engine = ALGORITHMS[config.strategy.name].engine
    if engine is not None:  # an asynchronous algorithm runs its own loop
        assert isinstance(federation, Federation)  # the config validator guarantees it
        context = _context(config, trainer, federation.num_clients)
        return RunPieces(task, engine(config.strategy, context, federation))
    strategy = build_strategy(config, trainer, federation.num_clients)
    assert not isinstance(strategy, FedBuff)  # an asynchronous algorithm returned above
    p = config.privacy
    if p.local_noise_multiplier is not None:
        strategy = LocalDP(
            strategy=strategy,
            clip_norm=p.clip_norm,
            noise_multiplier=p.local_noise_multiplier,
            noise=p.noise,
            delta=p.delta,
        )
    if p.sgd_noise_multiplier:  # each fit reports only its own steps' epsilon: compose them
        strategy = DPSGDLedger(
            inner=strategy, noise_multiplier=p.sgd_noise_multiplier, delta=p.delta
        )
    profiles = build_profiles(config, federation.num_clients)
    strategy = _heterogeneity_wrappers(config, strategy, profiles, trainer, federation)
    trainer, executor, why = choose_executor(
        config, trainer, strategy, federation, ray_worker=worker_run
    )
    d = config.deadline
    deadline: DeadlinePolicy | None = None
    if d.policy == "drop" and d.seconds is not None:
        deadline = DropLate(deadline_s=d.seconds)
    elif d.policy == "partial" and d.seconds is not None:
        deadline = PartialWork(deadline_s=d.seconds)
    elif d.policy == "overselect" and d.keep is not None:
        deadline = OverSelect(keep=d.keep, deadline_s=d.seconds or math.inf)
    sim = Simulation(
        trainer=trainer,
        federation=federation,
        strategy=strategy,
        seed=config.seed,
        eval_every=config.eval.every,
        federated_eval_every=config.eval.federated_every,
        executor=executor,
        profiles=profiles,
        deadline=deadline,
        max_update_norm=config.strategy.max_update_norm,
        progress=False,  # the command line draws its own
    )
    return RunPieces(task, sim, why)


_WORKER_RUNS: dict[str, WorkerRun] = {}
"""The runs this Ray worker process has built, by the SHA-256 of their config text."""


def worker_run(config_toml: str) -> WorkerRun:
    """A Ray worker's side of ``executor = "ray"``: the strategy, trainer, federation and
    in-process executor of the run ``config_toml`` describes (its ``executor`` is the chunks'
    inner one), built on first use and cached for the worker process. :func:`build_run` hands
    it to :class:`fedfleet.sim.RayExecutor`, so the simulation layer never imports this one."""
    key = hashlib.sha256(config_toml.encode()).hexdigest()
    if key not in _WORKER_RUNS:
        sim = build_run(validate_config(tomllib.loads(config_toml))).simulation
        if not isinstance(sim, Simulation):
            raise FedfleetError("the Ray executor runs the synchronous engine only (not fedbuff)")
        assert sim.executor is not None  # build_run chose it
        _WORKER_RUNS[key] = WorkerRun(sim.strategy, sim.trainer, sim.federation, sim.executor)
    return _WORKER_RUNS[key]


def build_profiles(config: RunConfig, num_clients: int) -> ClientProfiles | None:
    """The clients' system profiles, or None for a run without a simulated clock."""
    c = config.clients
    needed = c.enabled or config.deadline.policy != "none" or config.selection.method == "oort"
    if not needed:
        return None
    if c.profiles_csv is not None:
        return load_profiles_csv(
            c.profiles_csv, time_per_step=c.time_per_step, num_clients=num_clients
        )
    spec = ProfileSpec(
        time_per_step=c.time_per_step,
        speed=Lognormal(median=1.0, spread=c.speed_spread),
        download=Lognormal(median=c.download_bps or math.inf, spread=c.bandwidth_spread),
        upload=Lognormal(median=c.upload_bps or math.inf, spread=c.bandwidth_spread),
        latency=c.latency_s,
        availability=c.availability,
    )
    return spec.sample(num_clients, config.seed)


def _heterogeneity_wrappers(
    config: RunConfig,
    strategy: Strategy,
    profiles: ClientProfiles | None,
    trainer: Trainer,
    federation: ClientPopulation,
) -> Strategy:
    """Weighting, compensation and selection wrap the strategy, in that order (innermost
    first), so selection sees the compensated instructions' costs."""
    weights = {"steps": by_steps, "uniform": uniform}
    s = config.strategy
    if isinstance(s, WeightedParams) and s.weighting in weights:
        strategy = Reweighted(inner=strategy, weighting=weights[s.weighting])
    comp = config.compensation
    if comp.rule != "none":
        rule: CompensationRule = (
            MoreEpochs(
                factor=comp.factor,
                profiles=profiles,
                budget_s=config.deadline.seconds or math.inf,
                num_bytes=4 * trainer.layout.size,
            )
            if comp.rule == "more_epochs"
            else ScaleLR(factor=comp.factor)
        )
        strategy = Compensation(
            inner=strategy,
            rule=rule,
            num_clients=federation.num_clients,
            threshold=comp.threshold,
        )
    sel = config.selection
    preferred = sel.preferred_s or config.deadline.seconds
    if sel.method == "oort" and profiles is not None and preferred is not None:
        assert isinstance(s, CohortParams)  # only a synchronous algorithm reaches here
        k = s.clients_per_round or max(1, round((s.fraction or 0.1) * federation.num_clients))
        strategy = OortSelection(
            inner=strategy,
            profiles=profiles,
            clients_per_round=k,
            preferred_s=preferred,
            alpha=sel.alpha,
            epsilon=sel.epsilon,
        )
    return strategy
