"""FedAvg paper replication: MNIST, 2NN (200-200), IID over 100 clients, C=0.1, E=1, B=10.

McMahan et al. 2017 (Table 2) report 87 rounds to 97% test accuracy for this setting with a
tuned learning rate. This script counts rounds to the same target with fedfleet's FedAvg and
prints a table; it needs the IDX files (default: ../shared/data/mnist beside the repository).

    python bench/mnist_2nn.py [--mnist-dir DIR] [--lr 0.1] [--max-rounds 300] [--target 0.97]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import fedfleet as ff

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mnist-dir", type=Path, default=DEFAULT_DIR)
    p.add_argument("--lr", type=float, nargs="+", default=[0.1])
    p.add_argument("--max-rounds", type=int, default=300)
    p.add_argument("--target", type=float, default=0.97)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="write one JSON line per lr here")
    args = p.parse_args()
    if not args.mnist_dir.is_dir():
        print(f"MNIST not found at {args.mnist_dir}; pass --mnist-dir", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    task = ff.data.mnist(args.mnist_dir)
    parts = ff.data.partition.iid(len(task.train), 100, seed=args.seed)
    fed = ff.Federation(task, parts)
    rows = []
    for lr in args.lr:
        trainer = ff.TorchTrainer(lambda: ff.models.mlp(task.input_shape, 10, hidden=(200, 200)))
        strategy = ff.FedAvg(fraction=0.1, local=ff.FitInstructions(epochs=1, batch_size=10, lr=lr))

        def on_round(rec: dict, lr: float = lr) -> None:
            if rec["round"] % 10 == 0 or rec["test_accuracy"] >= args.target:
                print(
                    f"lr={lr} round {rec['round']:4d} acc {rec['test_accuracy']:.4f} "
                    f"({rec['wall_time_s']:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )

        sim = ff.Simulation(trainer, fed, strategy, seed=args.seed)
        t0 = time.perf_counter()
        result = sim.run(
            args.max_rounds,
            on_round=on_round,
            until=lambda rec: rec["test_accuracy"] >= args.target,
        )
        reached = result.final["test_accuracy"] >= args.target
        row = {
            "lr": lr,
            "rounds_to_target": result.final["round"] if reached else None,
            "target": args.target,
            "final_round": result.final["round"],
            "final_accuracy": result.final["test_accuracy"],
            "wall_s": round(time.perf_counter() - t0, 1),
            "s_per_round": round((time.perf_counter() - t0) / result.final["round"], 3),
        }
        rows.append(row)
        if args.out:
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
    print(f"| lr | rounds to {args.target:.0%} | paper | final acc | s/round |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['lr']} | {r['rounds_to_target'] or '>' + str(r['final_round'])} | 87 | "
            f"{r['final_accuracy']:.4f} | {r['s_per_round']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
