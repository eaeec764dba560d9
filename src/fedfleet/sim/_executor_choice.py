"""Which in-process executor trains a run's cohorts, and with which trainer: the one choice
``fedfleet run``'s ``executor = "auto"`` and ``Simulation(...)``'s default both make.

:func:`choose_in_process` looks only at the trainer, the strategy, the local batch size and the
torch thread count, so a run from Python and the same run from the command line train with the
same code and give the same bits. ``fedfleet.runs._executors.choose_executor`` adds what only a
run config names (the process pool, Ray, DP-SGD) and hands the rest to it.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import torch
from torch import nn
from torch.nn import functional as F

from fedfleet._threads import cores
from fedfleet.client import FitInstructions, ThreadedTrainer, TorchTrainer, Trainer, VmapTrainer
from fedfleet.client._cohort_base import CohortTrainer
from fedfleet.client._compiled_trainer import CompiledTrainer
from fedfleet.errors import ConfigError, MissingExtra
from fedfleet.sim._cohort import CohortExecutor, SequentialExecutor, VectorisedExecutor
from fedfleet.strategies._base import Strategy, plain_client_fit

__all__ = ["InProcess", "choose_in_process"]

InProcess = Literal["auto", "sequential", "vectorised", "compiled", "threaded"]
"""The in-process executors by the names ``executor`` takes in a run config."""

_LANE_MIN_STEP = 1 << 20  # parameters x batch size of one client step
_CUDA_CHUNK_BYTES = 2 << 30  # a chunk's memory budget on a GPU
_COMPILED_MAX_STEP = 1 << 16  # parameters x batch size up to which compiled loops win


@runtime_checkable
class _LocalInstructions(Protocol):
    """A strategy whose clients all get the same local instructions (FedAvg and its kin)."""

    local: FitInstructions


def choose_in_process(
    trainer: Trainer,
    strategy: Strategy,
    *,
    executor: InProcess = "auto",
    threads: int = 1,
    lanes: int | None = None,
    batch_size: int | None = None,
) -> tuple[Trainer, CohortExecutor, str]:
    """Pick how each round's cohort trains, before round 1 and for the whole run (the paths
    agree to float32 rounding, not bit for bit, so a run never switches): the trainer to use
    (``trainer`` itself, or a cohort trainer on the same model and optimizer), the executor and
    why, in words.

    ``auto`` vectorises a :class:`TorchTrainer` built from a model factory when the strategy's
    client side is plain local training and the optimizer is SGD: MLP-like models (stacks of
    Linear/ReLU) take the hand-fused path, 2-6x faster than the sequential loop per round on
    CPU, except small ones (parameters x batch <= 2^16 on the CPU), where a torch step is
    mostly dispatch: those train each client as one numba-compiled loop
    (:class:`CompiledTrainer`), one client per core; other models (convolutions, which lose
    under vmap on CPU) run the sequential loop on every core, one client per lane
    (:class:`ThreadedTrainer`, channels-last convolutions; see bench/README.md); on a CUDA
    device every such model takes the vmap path on the GPU. A trainer that already trains
    cohorts (a :class:`CohortTrainer`) gets the vectorised executor; any other trainer (NumPy,
    DP-SGD, your own) the sequential one.

    On the CPU, vectorised training uses every core as ``lanes`` worker threads of one torch
    thread each, each lane training its own chunks of the cohort (``VmapTrainer(workers=...)``,
    bit-identical to one lane); ``lanes`` defaults to the cores this process may run on under
    ``auto`` with ``threads = 1`` (the default), else to one lane of ``threads`` torch threads.
    Lanes beat intra-op threads here: OpenMP's barriers stall when another process holds a
    core (``../shared/peers/README.md``).

    ``batch_size`` is the clients' local batch size (the run config's ``client.batch_size``);
    None reads it from the strategy's ``local`` instructions where it has them (FedAvg and its
    kin), else leaves out the choices that depend on it (compiled loops, lanes).
    """
    if executor == "sequential":
        return trainer, SequentialExecutor(), "sequential"
    if isinstance(trainer, CohortTrainer):
        return trainer, VectorisedExecutor(), f"vectorised (the {type(trainer).__name__})"
    if type(trainer) is not TorchTrainer:  # a subclass may train otherwise than the copies would
        if executor != "auto":
            raise ConfigError(
                f"executor = {executor!r} needs a TorchTrainer, not a {type(trainer).__name__}; "
                "use 'sequential' or 'auto'"
            )
        return trainer, SequentialExecutor(), "sequential"
    if trainer.model_factory is None:
        if executor != "auto":
            raise ConfigError(
                f"executor = {executor!r} builds its own copies of the model: give the "
                "TorchTrainer a factory (TorchTrainer(lambda: MyModel(), ...)), not a module"
            )
        return trainer, SequentialExecutor(), "sequential (the TorchTrainer holds a module)"
    if batch_size is None and isinstance(strategy, _LocalInstructions):
        batch_size = strategy.local.batch_size
    cpu = trainer.device.type == "cpu"
    if trainer.precision != "fp32":
        # the cohort trainers rebuild the model and train it their own way, in float32
        if executor not in ("auto", "sequential"):
            raise ConfigError(
                f"executor = {executor!r} trains in float32; precision = "
                f"{trainer.precision!r} trains client by client: use 'auto' or 'sequential'"
            )
        return trainer, SequentialExecutor(), f"sequential ({trainer.precision} autocast)"
    if _frozen_base(trainer.model) and executor not in ("auto", "threaded"):
        raise ConfigError(
            f"executor = {executor!r} rebuilds the network without its frozen base (LoRA "
            "adapters); use 'auto', 'sequential' or 'threaded'"
        )
    if executor == "auto" and _frozen_base(trainer.model):
        return trainer, SequentialExecutor(), "sequential (fine-tuning a base model)"
    step = trainer.layout.size * batch_size if batch_size is not None else None
    if executor == "auto" and _sequence_model(trainer.model):
        # the compiled and hand-fused paths are for MLPs, and vmap has no batching rule for
        # the fused LSTM kernel: the per-client loop, on every core when a step is big enough
        # to pay for the lanes (as for convolutions)
        if lanes is None:
            big = step is not None and step >= _LANE_MIN_STEP
            lanes = cores() if threads == 1 and cpu and big else 1
        if lanes < 2:
            return trainer, SequentialExecutor(), "sequential (a language model, client by client)"
        return _threaded(trainer, lanes)
    if executor == "compiled":
        # asked for by name (as inside process and Ray workers): `threads` clients at a time
        compiled = _compiled(trainer, lanes or threads)
        return compiled, VectorisedExecutor(), _compiled_why(compiled)
    if executor == "threaded":
        return _threaded(trainer, lanes or _default_lanes(threads))
    plain = getattr(strategy, "client_fit", None) is plain_client_fit
    if executor == "auto" and not plain:
        return trainer, SequentialExecutor(), "sequential (the strategy trains each client itself)"
    compiled_lanes = _default_lanes(threads) if lanes is None else lanes
    if lanes is None:
        auto = executor == "auto" and threads == 1 and cpu
        # a client step must be big enough to pay for the lanes' hand-offs: on 2 cores the
        # digits MLP (9,610 params x batch 16) ran 2x slower on 2 lanes, the peers' MLP
        # (101,770 x 32) 1.5x faster
        big = step is not None and step >= _LANE_MIN_STEP
        lanes = cores() if auto and big else 1
    try:
        vmap = VmapTrainer(
            trainer.model_factory,
            trainer.loss_fn,
            optimizer=_name(trainer.optimizer),
            optimizer_args=trainer.optimizer_args,
            device=trainer.device,
            eval_batch_size=trainer.eval_batch_size,
            num_threads=threads,
            workers=lanes,
            # the CPU's default budget keeps chunks in cache; a GPU wants whole cohorts
            max_chunk_bytes=32 << 20 if cpu else _CUDA_CHUNK_BYTES,
        )
    except ConfigError as err:
        if executor == "vectorised":
            raise
        return trainer, SequentialExecutor(), f"sequential ({err})"
    small = step is not None and step <= _COMPILED_MAX_STEP
    if vmap.uses_fast_path and small and executor == "auto" and cpu:
        try:
            compiled = _compiled(trainer, compiled_lanes)
        except (ConfigError, MissingExtra):
            pass  # not SGD, not cross-entropy, or numba missing: the vectorised cohort below
        else:
            return compiled, VectorisedExecutor(), _compiled_why(compiled)
    if vmap.uses_fast_path or executor == "vectorised" or not cpu:
        how = f", {lanes} lanes x 1 torch thread" if lanes > 1 else ""
        return vmap, VectorisedExecutor(), f"vectorised (torch.func cohort training{how})"
    # Convolutions under vmap lose to the sequential loop on CPU; what wins there is that
    # loop on every core, one client per lane (bench/README.md, workload c).
    if lanes < 2:
        return trainer, SequentialExecutor(), "sequential (one core)"
    return _threaded(trainer, lanes)


def _frozen_base(model: nn.Module) -> bool:
    """Whether ``model`` holds weights outside its layout: a frozen base under LoRA adapters
    (:func:`fedfleet.models.lora_factory` keeps it as non-persistent buffers)."""
    return any(m._non_persistent_buffers_set for m in model.modules())


def _sequence_model(model: nn.Module) -> bool:
    """Whether ``model`` reads token ids (an embedding) or runs a recurrent layer: a language
    model, trained client by client."""
    return any(isinstance(m, (nn.Embedding, nn.RNNBase)) for m in model.modules())


def _threaded(trainer: TorchTrainer, lanes: int) -> tuple[Trainer, CohortExecutor, str]:
    assert trainer.model_factory is not None
    threaded = ThreadedTrainer(
        trainer.model_factory,
        trainer.loss_fn,
        optimizer=trainer.optimizer,
        optimizer_args=trainer.optimizer_args,
        device=trainer.device,
        eval_batch_size=trainer.eval_batch_size,
        workers=lanes,
        memory_format=trainer.memory_format,
    )
    why = f"threaded (the sequential loop, {lanes} clients at a time, one per core"
    if threaded.sequential.memory_format == "channels_last":
        why += ", channels-last convolutions"
    return threaded, VectorisedExecutor(), why + ")"


def _default_lanes(threads: int) -> int:
    """Under ``auto``: compiled loops hand off whole clients, so they use every core when
    ``threads`` is left at 1."""
    return cores() if threads == 1 else threads


def _compiled(trainer: TorchTrainer, lanes: int) -> CompiledTrainer:
    """The compiled per-client trainer; ConfigError where it does not apply."""
    assert trainer.model_factory is not None
    if trainer.device.type != "cpu":
        raise ConfigError("executor = 'compiled' runs on the CPU; use 'vectorised' on CUDA")
    if trainer.optimizer is not torch.optim.SGD:
        raise ConfigError(
            f"executor = 'compiled' trains with SGD, not {_name(trainer.optimizer)!r}; "
            "use 'sequential'"
        )
    if trainer.loss_fn is not F.cross_entropy:
        raise ConfigError("executor = 'compiled' trains with cross-entropy; use 'vectorised'")
    return CompiledTrainer(
        trainer.model_factory,
        optimizer_args=trainer.optimizer_args,
        eval_batch_size=trainer.eval_batch_size,
        workers=lanes,
    )


def _name(optimizer: object) -> str:
    """A ``torch.optim`` class's lower-cased name, as a run config gives it ('sgd')."""
    return getattr(optimizer, "__name__", repr(optimizer)).lower()


def _compiled_why(trainer: CompiledTrainer) -> str:
    lanes = f", {trainer.workers} clients at a time" if trainer.workers > 1 else ""
    return f"compiled (each client's SGD loop one numba call{lanes})"
