"""HE FedAvg in memory: :class:`fedfleet.sim.Simulation` with an :class:`HEFedAvg` whose key
holder is set (the in-process transport runs the clients' encryption, the server's ciphertext
sum and the key holder's decryption: :mod:`fedfleet.sim._secure`)."""

from __future__ import annotations

import dataclasses

from fedfleet.client import Trainer
from fedfleet.sim._cohort import CohortExecutor
from fedfleet.sim._engine import Simulation, SimulationResult
from fedfleet.sim._federation import Federation
from fedfleet.strategies._he_fedavg import HEFedAvg, KeyHolder

__all__ = ["run_he_fedavg"]


def run_he_fedavg(
    trainer: Trainer,
    federation: Federation,
    strategy: HEFedAvg,
    key_holder: KeyHolder,
    rounds: int,
    seed: int = 0,
    executor: CohortExecutor | None = None,
) -> SimulationResult:
    """Run HE FedAvg in memory with the engine's seeding; ``key_holder`` plays the clients'
    secret side. Records carry ``he_bytes_per_client`` and ``he_aborted``. ``executor``: how
    the cohort trains (None: as ``Simulation`` chooses; ``SequentialExecutor()`` trains as a
    deployed client does, bit for bit)."""
    with_key = dataclasses.replace(strategy, key_holder=key_holder)
    return Simulation(trainer, federation, with_key, seed=seed, executor=executor).run(rounds)
