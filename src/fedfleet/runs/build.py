"""From a :class:`RunConfig` to the pieces of a run: task, federation, trainer, strategy."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import tomllib
from dataclasses import dataclass

import torch

from fedfleet.client.numpy_trainers import NumpyLogisticRegression
from fedfleet.client.protocol import FitInstructions, Trainer
from fedfleet.client.torch_trainer import TorchTrainer
from fedfleet.data import partition as part
from fedfleet.data.base import TaskData
from fedfleet.data.registry import load_task
from fedfleet.errors import ConfigError, FedfleetError
from fedfleet.models.zoo import build_model
from fedfleet.params import Layout
from fedfleet.privacy.accountant import DpAccounting, calibrate_noise_multiplier
from fedfleet.privacy.dpsgd import DPSGDTrainer
from fedfleet.privacy.dpsgd_ledger import DPSGDLedger
from fedfleet.privacy.local_dp import LocalDP
from fedfleet.privacy.secagg.strategy import SecAggFedAvg
from fedfleet.runs.config import POPULATIONS, RunConfig, validate_config
from fedfleet.runs.executors import choose_executor
from fedfleet.sim.clock import ClientClock
from fedfleet.sim.deadline import DeadlinePolicy, DropLate, OverSelect, PartialWork
from fedfleet.sim.engine import Simulation
from fedfleet.sim.fedbuff import FedBuffSimulation
from fedfleet.sim.federation import ClientPopulation, Federation
from fedfleet.sim.population import SyntheticPopulation
from fedfleet.sim.profiles import ClientProfiles, Lognormal, ProfileSpec, load_profiles_csv
from fedfleet.sim.ray_executor import WorkerRun
from fedfleet.strategies.base import Strategy
from fedfleet.strategies.compensation import Compensation, CompensationRule, MoreEpochs, ScaleLR
from fedfleet.strategies.dpfedavg import AdaptiveClipping, DPFedAvg
from fedfleet.strategies.fedavg import FedAvg
from fedfleet.strategies.fedbuff import FedBuff, polynomial_staleness
from fedfleet.strategies.fednova import FedNova
from fedfleet.strategies.fedopt import fedadagrad, fedadam, fedyogi
from fedfleet.strategies.personal import FedPer, FedRep
from fedfleet.strategies.qfedavg import QFedAvg
from fedfleet.strategies.scaffold import Scaffold
from fedfleet.strategies.selection import OortSelection
from fedfleet.strategies.stragglers import Stragglers
from fedfleet.strategies.weighting import Reweighted, by_steps, uniform
from fedfleet.transforms.base import sgd

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

_ADAPTIVE = ("fedadam", "fedyogi", "fedadagrad")


@dataclass(frozen=True)
class RunPieces:
    task: TaskData
    simulation: Simulation | FedBuffSimulation
    executor: str = "sequential"
    """The cohort executor chosen, with the reason (printed by the CLI)."""


def load_task_for(config: RunConfig) -> TaskData:
    d = config.data
    if d.name in POPULATIONS:
        return build_population(config).task
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


def build_population(config: RunConfig) -> SyntheticPopulation:
    """``data.name = 'synthetic-population'``: ``data.num_clients`` lazily generated
    Synthetic(alpha, beta) devices ('synthetic-iid-population': Synthetic-IID, one shared
    model); the server's test set is 50 further devices."""
    d = config.data
    return SyntheticPopulation(
        num_clients=d.num_clients,
        iid=d.name == "synthetic-iid-population",
        alpha=d.synthetic_alpha,
        beta=d.synthetic_beta,
        seed=config.seed,
        max_samples=d.max_samples,
    )


def build_federation(config: RunConfig, task: TaskData) -> Federation:
    d, seed = config.data, config.seed
    if d.name in POPULATIONS:
        raise ConfigError(
            "data.name = 'synthetic-population' is a lazily generated population, not a "
            "partitioned dataset; build it with build_population(config)"
        )
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
    m, c, p = config.model, config.client, config.privacy
    if m.backend == "numpy":
        return NumpyLogisticRegression(task.input_shape, task.num_classes)
    if p.sgd_noise_multiplier is not None:
        return DPSGDTrainer(
            lambda: build_model(m.name, task.input_shape, task.num_classes, hidden=m.hidden),
            clip_norm=p.sgd_clip_norm,
            noise_multiplier=p.sgd_noise_multiplier,
            noise=p.noise,
            delta=p.delta,
            device=config.device,
        )
    return TorchTrainer(
        lambda: build_model(m.name, task.input_shape, task.num_classes, hidden=m.hidden),
        optimizer=c.optimizer,
        optimizer_args=c.optimizer_args(),
        device=config.device,
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


def _last_layer(layout: Layout) -> tuple[str, ...]:
    """The name prefix of the model's last tensor, e.g. ``('3.',)`` for an MLP's output layer."""
    name = layout.specs[-1].name
    return (name.rsplit(".", 1)[0] + ".",) if "." in name else (name,)


def build_strategy(config: RunConfig, trainer: Trainer, num_clients: int) -> Strategy | FedBuff:
    """The strategy ``config.strategy`` names, with the client settings as local instructions
    (FedBuff's for asynchronous rounds)."""
    s, c = config.strategy, config.client
    if s.name == "fedbuff":
        return FedBuff(
            local=FitInstructions(epochs=c.epochs, batch_size=c.batch_size, lr=c.lr),
            buffer_size=s.buffer_size,
            concurrency=min(s.concurrency, num_clients),
            server_lr=s.server_lr if s.server_lr is not None else 1.0,
            staleness_weight=polynomial_staleness(s.staleness_exponent),
        )
    config_extra = {"prox_mu": s.mu} if s.name in ("fedprox", "fednova") and s.mu > 0 else {}
    local = FitInstructions(epochs=c.epochs, batch_size=c.batch_size, lr=c.lr, config=config_extra)
    k = None if s.fraction is not None else s.clients_per_round
    stragglers = (
        Stragglers(fraction=s.straggler_fraction, drop=s.straggler_policy == "drop")
        if s.straggler_fraction > 0
        else None
    )
    server_lr = s.server_lr if s.server_lr is not None else (0.03 if s.name in _ADAPTIVE else 1.0)
    momentum = (
        s.server_momentum
        if s.server_momentum is not None
        else (0.9 if s.name == "fedavgm" else 0.0)
    )
    if s.name == "fedadagrad":
        return fedadagrad(
            server_lr=server_lr,
            tau=s.tau,
            b1=s.b1,
            clients_per_round=k,
            fraction=s.fraction,
            local=local,
            stragglers=stragglers,
        )
    if s.name in ("fedadam", "fedyogi"):
        return (fedadam if s.name == "fedadam" else fedyogi)(
            server_lr=server_lr,
            b1=s.b1,
            b2=s.b2,
            tau=s.tau,
            clients_per_round=k,
            fraction=s.fraction,
            local=local,
            stragglers=stragglers,
        )
    if s.name == "dpfedavg":
        return _dp_strategy(config, local, num_clients)
    if s.name == "secagg":
        p = config.privacy
        dp = None
        if p.noise_multiplier is not None:
            q = (k or round((s.fraction or 0.0) * num_clients)) / num_clients
            dp = DpAccounting(
                noise_multiplier=p.noise_multiplier,
                population=num_clients,
                sampling_rate=min(1.0, q),
                delta=p.delta,
                accountant=p.accountant,
            )
        return SecAggFedAvg(
            clip_norm=p.clip_norm,
            clients_per_round=k,
            fraction=s.fraction,
            local=local,
            dp=dp,
            noise=p.noise,
            seed=config.seed,
        )
    if s.name == "scaffold":
        if c.optimizer != "sgd" or c.momentum or c.weight_decay:
            raise ConfigError(
                "scaffold's control-variate update (option II) assumes plain SGD clients; set "
                "client.optimizer = 'sgd', client.momentum = 0 and client.weight_decay = 0"
            )
        return Scaffold(
            num_clients=num_clients,
            local=local,
            server_lr=server_lr,
            clients_per_round=k,
            fraction=s.fraction,
        )
    if s.name == "qfedavg":
        return QFedAvg(q=s.q, local=local, clients_per_round=k, fraction=s.fraction)
    if s.name == "fednova":
        if c.optimizer != "sgd" or c.weight_decay:
            raise ConfigError(
                "fednova normalises plain SGD (with optional momentum) updates; set "
                "client.optimizer = 'sgd' and client.weight_decay = 0"
            )
        return FedNova(
            local=local,
            momentum=c.momentum,
            server_optimizer=sgd(server_lr, momentum),
            stragglers=stragglers,
            clients_per_round=k,
            fraction=s.fraction,
        )
    base = FedAvg(
        local=local,
        server_optimizer=sgd(server_lr, momentum),
        stragglers=stragglers,
        clients_per_round=k,
        fraction=s.fraction,
    )
    if s.name in ("fedper", "fedrep"):
        head = s.head or _last_layer(trainer.layout)
        if s.name == "fedper":
            return FedPer(strategy=base, layout=trainer.layout, head=head)
        return FedRep(strategy=base, layout=trainer.layout, head=head, head_epochs=s.head_epochs)
    return base  # fedavg, fedavgm, fedprox


def _dp_strategy(config: RunConfig, local: FitInstructions, num_clients: int) -> DPFedAvg:
    p, s = config.privacy, config.strategy
    k = s.clients_per_round if s.fraction is None else max(1, round(s.fraction * num_clients))
    k = min(k or 1, num_clients)
    accounting = DpAccounting(
        noise_multiplier=p.noise_multiplier if p.noise_multiplier is not None else 1.0,
        population=num_clients,
        sampling=p.sampling,
        sampling_rate=k / num_clients if p.sampling == "poisson" else None,
        cohort_size=k if p.sampling == "fixed" else None,
        delta=p.delta,
        accountant=p.accountant,
    )
    if p.noise_multiplier is None:
        assert p.target_epsilon is not None  # the config validator guarantees it
        z = calibrate_noise_multiplier(p.target_epsilon, config.rounds, accounting)
        accounting = dataclasses.replace(accounting, noise_multiplier=z)
    return DPFedAvg(
        accounting=accounting,
        clip_norm=p.clip_norm,
        local=local,
        adaptive=(
            AdaptiveClipping(target_quantile=p.adaptive_quantile)
            if p.adaptive_quantile is not None
            else None
        ),
        target_epsilon=p.target_epsilon,
        noise=p.noise,
        noise_seed=config.seed,
    )


def build_run(config: RunConfig) -> RunPieces:
    """Load the data and assemble a ready-to-run simulation (synchronous, or FedBuff's
    asynchronous engine for ``strategy.name = 'fedbuff'``)."""
    check_device(config)
    torch.set_num_threads(config.threads)
    federation: ClientPopulation
    if config.data.name in POPULATIONS:
        federation = build_population(config)
        task = federation.task
    else:
        task = load_task_for(config)
        federation = build_federation(config, task)
    trainer = build_trainer(config, task)
    s, c = config.strategy, config.client
    if s.name == "fedbuff":
        assert isinstance(federation, Federation)  # the config validator guarantees it
        fedbuff = FedBuffSimulation(
            trainer,
            federation,
            local=FitInstructions(epochs=c.epochs, batch_size=c.batch_size, lr=c.lr),
            buffer_size=s.buffer_size,
            concurrency=min(s.concurrency, federation.num_clients),
            server_lr=s.server_lr if s.server_lr is not None else 1.0,
            staleness_weight=polynomial_staleness(s.staleness_exponent),
            clock=ClientClock(
                time_per_step=config.clock.time_per_step, speed_sigma=config.clock.speed_sigma
            ),
            seed=config.seed,
            eval_every=config.eval.every,
            max_update_norm=s.max_update_norm,
        )
        return RunPieces(task, fedbuff)
    strategy = build_strategy(config, trainer, federation.num_clients)
    assert not isinstance(strategy, FedBuff)  # built above
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
        config, task, trainer, strategy, federation, ray_worker=worker_run
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
    if config.strategy.weighting in weights:
        strategy = Reweighted(inner=strategy, weighting=weights[config.strategy.weighting])
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
        s = config.strategy
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
