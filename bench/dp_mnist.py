"""Accuracy versus epsilon for client-level DP-FedAvg on MNIST split over 1,000 clients.

MNIST (../shared/data/mnist by default) IID over 1,000 clients (60 samples each), multinomial
logistic regression trained in NumPy, Poisson sampling with q = 0.2 (200 clients expected a
round), E=1, B=20, client lr 0.1, clip norm S, R rounds, delta = 1e-5. For each target epsilon
the noise multiplier is calibrated with dp-accounting's PLD accountant for exactly R rounds;
"no DP" is FedAvg with 200 clients a round and the same local training. Prints a markdown table
and writes JSON lines to bench/out/.

    python bench/dp_mnist.py [--mnist-dir DIR] [--rounds 100] [--clip 0.5]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fedfleet.runs import load_config
from fedfleet.runs._build import build_run

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mnist-dir", type=Path, default=DEFAULT_DIR)
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--clip", type=float, default=0.5)
    p.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    args = p.parse_args()
    if not args.mnist_dir.is_dir():
        print(f"MNIST not found at {args.mnist_dir}; pass --mnist-dir (skipping)")
        return 0
    common = [
        "data.name=mnist",
        f"data.path={args.mnist_dir}",
        "data.num_clients=1000",
        "data.partition=iid",
        "model.name=logreg",
        "model.backend=numpy",
        "strategy.clients_per_round=200",
        "client.epochs=1",
        "client.batch_size=20",
        "client.lr=0.1",
        f"rounds={args.rounds}",
        "eval.every=10",
        f"privacy.clip_norm={args.clip}",
    ]
    runs = [("no DP", [*common, "strategy.name=fedavg"])]
    runs += [
        (f"eps {e:g}", [*common, "strategy.name=dpfedavg", f"privacy.target_epsilon={e}"])
        for e in args.epsilons
    ]
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    rows = []
    for label, overrides in runs:
        t0 = time.perf_counter()
        pieces = build_run(load_config(None, overrides))
        sim = pieces.simulation
        result = sim.run(args.rounds)
        strategy = sim.strategy
        z = getattr(getattr(strategy, "accounting", None), "noise_multiplier", None)
        row = {
            "run": label,
            "noise_multiplier": z,
            "epsilon": result.final.get("dp_epsilon"),
            "test_accuracy": result.final["test_accuracy"],
            "best_accuracy": max(
                h["test_accuracy"] for h in result.history if "test_accuracy" in h
            ),
            "rounds": len(result.history),
            "wall_s": round(time.perf_counter() - t0, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        with (out / "dp_mnist.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
    print(
        f"\n| run | noise multiplier z | epsilon (delta 1e-5) | test acc at round {args.rounds} "
        "| best acc | wall s |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        z = f"{r['noise_multiplier']:.3f}" if r["noise_multiplier"] is not None else "-"
        eps = f"{r['epsilon']:.3f}" if r["epsilon"] is not None else "inf"
        print(
            f"| {r['run']} | {z} | {eps} | {r['test_accuracy']:.4f} | {r['best_accuracy']:.4f} "
            f"| {r['wall_s']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
