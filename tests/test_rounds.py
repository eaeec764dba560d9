"""The round loop on its own: a test transport is a plain function, and the loop's rules
(aggregation, the record, evaluation, checkpoint before commit, retries) hold for any transport."""

from __future__ import annotations

import numpy as np
import pytest

from fedfleet.client import EvalResult, FitInstructions
from fedfleet.errors import FedfleetError, UpdateRejected
from fedfleet.rounds import (
    FitJob,
    FitReplies,
    FunctionTransport,
    LoopState,
    RoundLoop,
    as_transport,
    client_seed,
)
from fedfleet.strategies import ClientUpdate, FedAvg


def _replies(job: FitJob) -> FitReplies:
    """Client c moves the model by (c + 1) along every coordinate with c + 1 samples."""
    updates = [
        ClientUpdate(cid, np.full_like(job.vector, cid + 1.0), cid + 1, 1, {"train_loss": cid})
        for cid, _ in job.plan
    ]
    return FitReplies(updates, steps=[1] * len(updates))


def test_a_plain_function_is_a_transport_and_fedavg_averages_its_replies():
    seen: list[FitJob] = []

    def transport(job: FitJob) -> FitReplies:
        seen.append(job)
        return _replies(job)

    strategy = FedAvg(clients_per_round=2, local=FitInstructions())
    loop = RoundLoop(strategy, as_transport(transport), seed=7, clients=lambda r: [0, 1, 2])
    start = np.zeros(3, np.float32)
    end = loop.run(2, LoopState(0, start, strategy.init(start)))
    assert [job.round for job in seen] == [1, 2]
    vector = start
    for job in seen:
        ids = [cid for cid, _ in job.plan]
        assert len(ids) == 2 and set(ids) <= {0, 1, 2}
        n = sum(c + 1 for c in ids)
        mean = sum((c + 1) * (c + 1) for c in ids) / n  # the sample-weighted mean delta
        vector = (vector.astype(np.float64) + mean).astype(np.float32)  # float64, cast once
    assert np.array_equal(end.vector, vector)
    first = end.history[0]
    ids = [cid for cid, _ in seen[0].plan]
    assert first["num_clients"] == 2 and first["num_rejected"] == 0
    assert first["train_loss"] == pytest.approx(
        sum(c * (c + 1) for c in ids) / sum(c + 1 for c in ids)
    )
    assert client_seed(7, 1, 0) != client_seed(7, 2, 0)


def test_checkpoint_comes_before_commit_and_evaluation_is_recorded():
    events: list[str] = []

    class Recording(FunctionTransport):
        def commit(self, rnd, accepted):
            events.append(f"commit {rnd} {sorted(accepted)}")

        def evaluate(self, job):
            from fedfleet.evaluation import ClientEvaluation

            events.append(f"evaluate {job.round}")
            return [ClientEvaluation(10, 0.5, 0.25), ClientEvaluation(30, 0.1, 0.75)]

    strategy = FedAvg(clients_per_round=3, local=FitInstructions())
    loop = RoundLoop(
        strategy,
        Recording(_replies),
        seed=0,
        clients=lambda r: [0, 1, 2],
        test=lambda v: EvalResult(loss=float(v.sum()), accuracy=0.5, num_samples=4),
        federated_every=1,
        checkpoint=lambda state: events.append(f"checkpoint {state.round}"),
        checkpoint_before_commit=True,
    )
    start = np.zeros(2, np.float32)
    end = loop.run(1, LoopState(0, start, strategy.init(start)))
    assert events == ["checkpoint 1", "commit 1 [0, 1, 2]", "evaluate 1", "checkpoint 1"]
    record = end.history[0]
    assert record["test_accuracy"] == 0.5 and record["client_accuracy_min"] == 0.25
    assert record["client_accuracy_mean"] == pytest.approx(0.5)


def test_a_round_below_min_accept_is_played_again_but_an_empty_plan_is_a_round():
    calls: list[int] = []

    def flaky(job: FitJob) -> FitReplies:
        calls.append(job.round)
        if len(calls) == 1:  # the first try: every client's upload refused
            rejected = [UpdateRejected(c, job.round, "refused") for c, _ in job.plan]
            return FitReplies([], rejected)
        return _replies(job)

    strategy = FedAvg(clients_per_round=2, local=FitInstructions())
    loop = RoundLoop(strategy, as_transport(flaky), 0, clients=lambda r: [0, 1], min_accept=1)
    start = np.zeros(2, np.float32)
    end = loop.run(1, LoopState(0, start, strategy.init(start)))
    assert calls == [1, 1] and len(loop.rejected) == 2 and end.history[0]["num_clients"] == 2

    nobody = RoundLoop(strategy, as_transport(flaky), 0, clients=lambda r: [], min_accept=1)
    end = nobody.run(1, LoopState(0, start, strategy.init(start)))
    assert end.history[0]["num_clients"] == 0 and np.array_equal(end.vector, start)


def test_configure_evaluate_must_choose_among_the_clients_it_is_given():
    class Outsider(FedAvg):
        def configure_evaluate(self, rnd, vector, state, clients, rng):
            return [*clients, 9]

    strategy = Outsider(clients_per_round=2, local=FitInstructions())
    loop = RoundLoop(
        strategy, as_transport(_replies), 0, clients=lambda r: [0, 1], federated_every=1
    )
    start = np.zeros(2, np.float32)
    with pytest.raises(
        FedfleetError, match=r"round 1: Outsider.configure_evaluate chose clients \[9\]"
    ):
        loop.run(1, LoopState(0, start, strategy.init(start)))
