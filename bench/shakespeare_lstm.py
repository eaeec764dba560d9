"""Federated vs centralized character LSTM on tiny Shakespeare, at equal sample gradients.

Federated: FedAvg over the speaking roles (one client per role, LEAF's split), K clients a round,
each running at most ``tau`` local SGD steps of batch B (E = 1, capped so a round is K * tau * B
sample gradients: every kept role has at least tau * B training windows). Centralized: the same
model, SGD with the same lr and batch on the pooled training windows of the same roles, for the
same number of sample gradients. Both are evaluated on the same server test set (every
``test_stride``-th held-out window of every role). Reports the accuracy of both at equal sample
gradients and the rounds federated training needs to reach 90% of the centralized accuracy
(the centralized model's after ``--central-rounds`` rounds' worth of sample gradients).

    python bench/shakespeare_lstm.py [--hidden 256] [--rounds 20] [--clients 10] [--tau 10]
        [--batch 20] [--lr 1.0] [--test-stride 100] [--out bench/results/shakespeare_lstm.json]

The FedAvg paper's model is --hidden 256 (its default here); on a 2-core CPU shared with others a
step of it takes ~0.25 s, so the recorded run (bench/README.md) uses --hidden 128.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import fedfleet as ff
from fedfleet.data import Subset
from fedfleet.data._text import VOCAB_SIZE, shakespeare
from fedfleet.models import char_lstm

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "shakespeare"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DIR)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument(
        "--central-rounds",
        type=int,
        default=None,
        help="centralized budget in rounds' worth of sample gradients (default: --rounds)",
    )
    p.add_argument("--clients", type=int, default=10, help="K clients per round")
    p.add_argument("--tau", type=int, default=10, help="local steps per client and round")
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--lr", type=float, default=1.0)
    p.add_argument("--test-stride", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if not (args.data / "input.txt").exists():
        print(f"tiny Shakespeare not found in {args.data}; pass --data", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    per_client = args.tau * args.batch
    # a role needs tau * B training windows (80% of its windows) for equal work every round
    task = shakespeare(
        args.data, test_stride=args.test_stride, min_windows=int(np.ceil(per_client / 0.8)) + 1
    )
    fed = ff.Federation(task, task.natural_train, task.natural_test, test_from_task_test=True)
    pooled = np.concatenate(task.natural_train)
    per_round = args.clients * per_client
    print(
        f"{len(task.user_ids)} roles, {len(pooled)} training windows, {len(task.test)} test "
        f"windows; {per_round} sample gradients a round",
        file=sys.stderr,
        flush=True,
    )

    def model() -> torch.nn.Module:
        return char_lstm(VOCAB_SIZE, hidden=args.hidden)

    # federated
    trainer = ff.TorchTrainer(model, optimizer="sgd")
    local = ff.FitInstructions(epochs=1, batch_size=args.batch, lr=args.lr, max_steps=args.tau)
    strategy = ff.FedAvg(clients_per_round=args.clients, local=local)
    fed_curve: list[tuple[int, float, float]] = []
    t0 = time.perf_counter()

    def on_round(rec: dict) -> None:
        fed_curve.append((rec["round"] * per_round, rec["test_accuracy"], rec["test_perplexity"]))
        print(
            f"fed   round {rec['round']:3d} acc {rec['test_accuracy']:.4f} "
            f"ppl {rec['test_perplexity']:.2f} ({time.perf_counter() - t0:.0f} s)",
            file=sys.stderr,
            flush=True,
        )

    sim = ff.Simulation(trainer, fed, strategy, seed=args.seed)
    sim.run(args.rounds, on_round=on_round)
    fed_s = time.perf_counter() - t0

    # centralized: the same number of sample gradients, evaluated at the same points
    central = ff.TorchTrainer(model, optimizer="sgd")
    vector = central.init_vector(args.seed)
    rng = np.random.default_rng(args.seed)
    steps = args.clients * args.tau
    chunk = ff.FitInstructions(epochs=1, batch_size=args.batch, lr=args.lr)
    cen_curve: list[tuple[int, float, float]] = []
    t0 = time.perf_counter()
    for r in range(1, (args.central_rounds or args.rounds) + 1):
        batch = Subset(task.train, rng.choice(pooled, steps * args.batch, replace=False))
        vector = central.fit(vector, batch, chunk, seed=args.seed + r).vector
        ev = central.evaluate(vector, task.test)
        cen_curve.append((r * per_round, ev.accuracy, float(np.exp(ev.loss))))
        print(
            f"cent  {r * per_round:7d} samples acc {ev.accuracy:.4f} ppl {np.exp(ev.loss):.2f} "
            f"({time.perf_counter() - t0:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    cen_s = time.perf_counter() - t0

    target = 0.9 * cen_curve[-1][1]
    reached = next((i + 1 for i, (_, acc, _) in enumerate(fed_curve) if acc >= target), None)
    result = {
        "roles": len(task.user_ids),
        "train_windows": len(pooled),
        "test_windows": len(task.test),
        "hidden": args.hidden,
        "clients_per_round": args.clients,
        "tau": args.tau,
        "batch": args.batch,
        "lr": args.lr,
        "sample_gradients": args.rounds * per_round,
        "central_sample_gradients": cen_curve[-1][0],
        "federated": fed_curve,
        "centralized": cen_curve,
        "federated_final_accuracy": fed_curve[-1][1],
        "centralized_final_accuracy": cen_curve[-1][1],
        "rounds_to_90pct_of_centralized": reached,
        "federated_s": fed_s,
        "centralized_s": cen_s,
    }
    print(json.dumps({k: v for k, v in result.items() if k not in ("federated", "centralized")}))
    if args.out is not None:
        args.out.write_text(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
