"""FedAdam and FedYogi against FedAvg on FEMNIST (LEAF), one client per writer.

Reddi et al. 2021 ("Adaptive Federated Optimization") report that adaptive server optimizers
reach a given accuracy on EMNIST/FEMNIST in fewer rounds than FedAvg. This script runs all three
with the same seed, so the same clients are sampled in every round and the same initial model is
used, and sweeps the server learning rate of FedAdam and FedYogi (tau = 1e-3, b1 = 0.9,
b2 = 0.99, no bias correction); the client settings (E = 1, B = 20, lr 0.1) are shared, lr 0.1
being the better of 0.05 and 0.1 for all three in a 60-round trial. The model is the FedAvg
paper's 2NN (784-200-200-62), which keeps a 200-round run to about a minute on two CPU cores;
LEAF stores pixels with 1.0 as the white background, so they are inverted to MNIST's polarity
(ink = 1, background = 0) first.

    python bench/fedopt_femnist.py [--data-dir DIR] [--rounds 200] [--adam-lr 0.01 0.03 0.1]

Prints a markdown table, appends one JSON line per run to bench/out/fedopt_femnist.jsonl and
plots test accuracy per round to bench/results/fedopt_femnist.png. Without the data (default:
../shared/data/femnist beside the repository) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import fedfleet as ff
from fedfleet.strategies import fedadam, fedyogi

HERE = Path(__file__).resolve().parent
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "femnist"


def _inverted(task: ff.data.TaskData) -> ff.data.TaskData:
    def flip(d: ff.data.ArrayDataset) -> ff.data.ArrayDataset:
        return ff.data.ArrayDataset((1.0 - d.x).astype(np.float32), d.y)

    return dataclasses.replace(task, train=flip(task.train), test=flip(task.test))


def _summary(name: str, server_lr: float, accs: list[float], target: float) -> dict[str, Any]:
    reached = next((i + 1 for i, a in enumerate(accs) if a >= target), None)
    return {
        "strategy": name,
        "server_lr": server_lr,
        "final_accuracy": accs[-1],
        "rounds_to_target": reached,
        "target": target,
        "mean_last10": float(np.mean(accs[-10:])),
        "best_accuracy": max(accs),
    }


def _plot(runs: list[dict[str, Any]], path: Path, target: float, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"FedAvg": "black", "FedAdam": "tab:blue", "FedYogi": "tab:red"}
    styles = ["-", "--", ":", "-."]
    seen: dict[str, int] = {}
    fig, ax = plt.subplots(figsize=(8, 5))
    for run in runs:
        i = seen[run["strategy"]] = seen.get(run["strategy"], -1) + 1
        label = run["strategy"] + (
            f" (server lr {run['server_lr']:g})" if run["strategy"] != "FedAvg" else ""
        )
        rounds = np.arange(1, len(run["accuracy"]) + 1)
        ax.plot(
            rounds,
            run["accuracy"],
            styles[i % len(styles)],
            color=colors.get(run["strategy"]),
            label=label,
            lw=1.2,
        )
    ax.axhline(target, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_title(textwrap.fill(title, 90), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DIR)
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--clients-per-round", type=int, default=10)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--client-lr", type=float, default=0.1)
    p.add_argument("--adam-lr", type=float, nargs="*", default=[0.01, 0.03, 0.1])
    p.add_argument("--yogi-lr", type=float, nargs="*", default=[0.01, 0.03, 0.1])
    p.add_argument("--tau", type=float, default=1e-3)
    p.add_argument("--target", type=float, default=0.70)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=HERE / "out" / "fedopt_femnist.jsonl")
    p.add_argument("--plot", type=Path, default=HERE / "results" / "fedopt_femnist.png")
    args = p.parse_args()
    if not args.data_dir.is_dir():
        print(f"skipped: FEMNIST not found at {args.data_dir}; pass --data-dir", file=sys.stderr)
        return 0
    torch.set_num_threads(args.threads)
    task = _inverted(ff.data.femnist(args.data_dir))
    fed = ff.Federation(task, ff.data.partition.natural(task))
    local = ff.FitInstructions(epochs=args.epochs, batch_size=args.batch_size, lr=args.client_lr)
    k = args.clients_per_round
    configs: list[tuple[str, float, ff.Strategy]] = [
        ("FedAvg", 1.0, ff.FedAvg(clients_per_round=k, local=local))
    ]
    for lr in args.adam_lr:
        s = fedadam(server_lr=lr, tau=args.tau, clients_per_round=k, local=local)
        configs.append(("FedAdam", lr, s))
    for lr in args.yogi_lr:
        s = fedyogi(server_lr=lr, tau=args.tau, clients_per_round=k, local=local)
        configs.append(("FedYogi", lr, s))

    settings = (
        f"FEMNIST (LEAF, {fed.num_clients} writers, {len(task.train)} train / "
        f"{len(task.test)} test), 2NN, {k} clients/round, E={args.epochs}, "
        f"B={args.batch_size}, client lr {args.client_lr}, {args.rounds} rounds, seed {args.seed}"
    )
    print(settings, file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    runs = []
    for name, server_lr, strategy in configs:
        trainer = ff.TorchTrainer(
            lambda: ff.models.mlp(task.input_shape, task.num_classes, hidden=(200, 200))
        )
        sim = ff.Simulation(trainer, fed, strategy, seed=args.seed)
        t0 = time.perf_counter()
        result = sim.run(args.rounds)
        wall = time.perf_counter() - t0
        accs = [float(h["test_accuracy"]) for h in result.history]
        row = _summary(name, server_lr, accs, args.target)
        row.update(wall_s=round(wall, 1), settings=settings, accuracy=accs)
        runs.append(row)
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(
            f"{name} server lr {server_lr:g}: final {accs[-1]:.4f}, last-10 mean "
            f"{row['mean_last10']:.4f} ({wall:.0f} s)",
            file=sys.stderr,
            flush=True,
        )

    print(f"\n{settings}\n")
    print(
        f"| strategy | server lr | final test acc | rounds to {args.target:.0%} | "
        "mean acc, last 10 rounds | wall s |"
    )
    print("|---|---|---|---|---|---|")
    for r in runs:
        reached = r["rounds_to_target"] or f"> {args.rounds}"
        print(
            f"| {r['strategy']} | {r['server_lr']:g} | {r['final_accuracy']:.4f} | {reached} | "
            f"{r['mean_last10']:.4f} | {r['wall_s']} |"
        )
    _plot(runs, args.plot, args.target, settings)
    print(f"\nplot: {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
