"""HE FedAvg's round loop in memory: :class:`fedfleet.strategies.HEFedAvg`'s steps with the
engine's seeding, the reference a networked HE run (:mod:`fedfleet.net.secure`) is compared to.

It lives in ``sim``, above the strategy it drives (``fedfleet.strategies`` re-exports it, its
public name).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

import fedfleet._streams as _streams
from fedfleet.client.protocol import Trainer
from fedfleet.errors import UpdateRejected
from fedfleet.sim.engine import SimulationResult, client_seed
from fedfleet.sim.federation import Federation
from fedfleet.strategies.he_fedavg import HEFedAvg, KeyHolder, decrypt_aggregate

__all__ = ["run_he_fedavg"]


def run_he_fedavg(
    trainer: Trainer,
    federation: Federation,
    strategy: HEFedAvg,
    key_holder: KeyHolder,
    rounds: int,
    seed: int = 0,
) -> SimulationResult:
    """Run HE FedAvg in memory with the engine's seeding (sampling key (r, 0), client seeds
    :func:`fedfleet.sim.client_seed`); records carry ``he_bytes_per_client`` and the time spent
    encrypting, summing and decrypting."""
    vector = trainer.init_vector(seed)
    state = strategy.init(vector)
    history: list[dict[str, Any]] = []
    rejected: list[UpdateRejected] = []
    start = time.perf_counter()
    for rnd in range(1, rounds + 1):
        t0 = time.perf_counter()
        rng = _streams.generator(seed, _streams.sampling(rnd))
        plan = strategy.configure_fit(rnd, vector, state, federation.client_ids, rng)
        uploads: dict[int, bytes] = {}
        losses: list[tuple[float, int]] = []
        t_enc = 0.0
        for cid, instructions in plan:
            data = federation.train_data(cid)
            result = strategy.client_fit(
                trainer, vector, data, instructions, client_seed(seed, rnd, cid), None
            )
            t = time.perf_counter()
            uploads[cid] = strategy.encrypt_update(vector, result)
            t_enc += time.perf_counter() - t
            if "train_loss" in result.fit.metrics:
                losses.append((result.fit.metrics["train_loss"], result.fit.num_samples))
        t = time.perf_counter()
        aggregate, bad = strategy.aggregate_encrypted(rnd, vector.size, uploads)
        t_sum = time.perf_counter() - t
        rejected += bad
        t = time.perf_counter()
        mean = None if aggregate is None else decrypt_aggregate(key_holder, aggregate)
        t_dec = time.perf_counter() - t
        vector, state = strategy.apply(vector, state, mean)
        ev = trainer.evaluate(vector, federation.task.test)
        n = sum(w for _, w in losses)
        history.append(
            {
                "round": rnd,
                "num_clients": len(uploads) - len(bad),
                "num_rejected": len(bad),
                "train_loss": sum(loss * w for loss, w in losses) / n if n else 0.0,
                "test_loss": ev.loss,
                "test_accuracy": ev.accuracy,
                "he_bytes_per_client": float(np.mean([len(b) for b in uploads.values()])),
                "he_encrypt_s": t_enc,
                "he_sum_s": t_sum,
                "he_decrypt_s": t_dec,
                "round_time_s": time.perf_counter() - t0,
                "wall_time_s": time.perf_counter() - start,
            }
        )
    return SimulationResult(history, vector, trainer.layout, state, rejected)
