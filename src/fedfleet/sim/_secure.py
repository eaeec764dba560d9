"""Upload protocols that sum on the way, in simulation: secure aggregation and HE.

Over the network, a :class:`~fedfleet.privacy.secagg.SecAggFedAvg` or
:class:`~fedfleet.strategies.HEFedAvg` client masks or encrypts its update and the server only
ever holds the sum (:mod:`fedfleet.net.secure`). The in-process transport runs the very same
code on its cohort's trained results, after local training and before anything reaches the
server's side:

* SecAgg: each client's clipped delta goes through the protocol's client state machines, the
  server's state machine unmasks the sum of the survivors (``run_secagg``; drop-outs drawn from
  ``drop_rates`` with the round's protocol generator, ``SecAggFedAvg.round_setup``);
* HE: each client encrypts ``n_k * delta_k`` (``HEFedAvg.encrypt_update``), the server sums the
  ciphertexts it cannot read (``aggregate_encrypted``), the key holder decrypts the aggregate
  only (``decrypt_aggregate``; over the network the lowest-id waiting client).

Either way the loop gets receipts (who is in the sum, no delta, no training loss: the server
learns none) and the server's step on the sum, exactly what the network transport hands it, so
records and models agree between the two.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedfleet.errors import FedfleetError, UpdateRejected
from fedfleet.privacy._he import HEError
from fedfleet.privacy.secagg import SecAggAborted, draw_dropouts, run_secagg
from fedfleet.privacy.secagg._strategy import SecAggFedAvg
from fedfleet.rounds import Aggregate, FitJob, FitReplies
from fedfleet.strategies._base import ClientResult, ClientUpdate, Strategy, StrategyState
from fedfleet.strategies._he_fedavg import HEFedAvg, decrypt_aggregate

__all__ = ["summed_replies"]

Trained = Sequence[tuple[int, ClientResult]]


def summed_replies(strategy: Strategy, job: FitJob, trained: Trained) -> FitReplies | None:
    """The replies of a round whose uploads a protocol sums (None: plain uploads)."""
    if isinstance(strategy, SecAggFedAvg):
        return _secagg(strategy, job, trained)
    if isinstance(strategy, HEFedAvg):
        return _he(strategy, job, trained)
    return None


def _receipt(cid: int, num_samples: int = 0) -> ClientUpdate:
    return ClientUpdate(cid, np.zeros(0, np.float32), num_samples, 0)


def _secagg(strategy: SecAggFedAvg, job: FitJob, trained: Trained) -> FitReplies:
    rnd, vector = job.round, job.vector
    ids = [cid for cid, _ in trained]
    metrics = {"secagg_aborted": 1.0}
    total: np.ndarray | None = None
    included: list[int] = []
    if len(ids) >= 2:  # the server aborts a round of fewer
        config, rng = strategy.round_setup(rnd, vector.size)
        drops = draw_dropouts(ids, strategy.drop_rates, rng) if strategy.drop_rates else None
        deltas = [result.fit.vector - vector for _, result in trained]  # clipped by client_fit
        try:
            run = run_secagg(deltas, config, rng=rng, client_ids=ids, dropouts=drops)
            total, included = run.result.total, list(run.result.included)
            metrics["secagg_aborted"] = 0.0
            metrics["secagg_bytes_per_client"] = float(np.mean(list(run.sent_bytes.values())))
        except SecAggAborted:
            pass

    def aggregate(
        rnd: int, vector: np.ndarray, state: StrategyState, updates: Sequence[ClientUpdate]
    ) -> tuple[np.ndarray, StrategyState, dict[str, float]]:
        return strategy.aggregate_sum(rnd, vector, state, total, len(included), metrics)

    return FitReplies([_receipt(c) for c in included], aggregate=aggregate)


def _he(strategy: HEFedAvg, job: FitJob, trained: Trained) -> FitReplies:
    holder = strategy.key_holder
    if holder is None:
        raise FedfleetError(
            "HEFedAvg in simulation needs the clients' key pair to decrypt the aggregate: "
            "HEFedAvg(public=..., key_holder=PaillierKeyHolder.generate()); over the network "
            "the server holds only the public key"
        )
    rnd, vector = job.round, job.vector
    uploads: dict[int, bytes] = {}
    weights: dict[int, int] = {}
    refused: list[UpdateRejected] = []
    for cid, result in trained:
        try:
            uploads[cid] = strategy.encrypt_update(vector, result)
            weights[cid] = result.fit.num_samples
        except HEError as err:  # the client refuses to encrypt a diverged delta
            refused.append(UpdateRejected(cid, rnd, str(err)))
    summed, bad = strategy.aggregate_encrypted(rnd, vector.size, uploads)
    mean = None if summed is None else decrypt_aggregate(holder, summed)
    metrics = {
        "he_aborted": float(mean is None),
        "he_bytes_per_client": float(np.mean([len(b) for b in uploads.values()] or [0])),
    }
    out = {u.client_id for u in bad}
    included = [cid for cid in sorted(uploads) if cid not in out]
    receipts = [_receipt(c, weights[c]) for c in included]
    return FitReplies(receipts, [*refused, *bad], aggregate=_he_step(strategy, mean, metrics))


def _he_step(strategy: HEFedAvg, mean: np.ndarray | None, metrics: dict[str, float]) -> Aggregate:
    def aggregate(
        rnd: int, vector: np.ndarray, state: StrategyState, updates: Sequence[ClientUpdate]
    ) -> tuple[np.ndarray, StrategyState, dict[str, float]]:
        new, new_state = strategy.apply(vector, state, mean)
        return new, new_state, metrics

    return aggregate
