"""SCAFFOLD vs FedAvg on pathologically non-IID MNIST: rounds to a target test accuracy.

Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated Learning" (ICML
2020) show that control variates remove the client drift that slows FedAvg when clients' data
differ. Setting: MNIST split into label-sorted shards, 2 per client over 100 clients (McMahan et
al. 2017's pathological partition: most clients see two digits), 10 clients per round, E local
epochs of plain SGD (no momentum, so SCAFFOLD's option II is exact) with batch B, the same client
learning rate for both, server step 1. Both run the same rounds from the same seed; the table
gives the first round whose test accuracy reaches each target (">R" if never).

    python bench/scaffold_mnist.py [--mnist-dir DIR] [--model 2nn] [--epochs 2] [--rounds 150]

Needs the MNIST IDX files (default: ../shared/data/mnist beside the repository); without them
it says so and exits 0. Writes one JSON line per (method, round) and a summary line per method
to ``--out``, the markdown table to ``bench/results/scaffold_mnist.md`` and the plot to
``bench/results/scaffold_mnist.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import fedfleet as ff
from fedfleet.strategies import Scaffold, Strategy

HERE = Path(__file__).resolve().parent
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def rounds_to(history: list[dict], target: float) -> int | None:
    for h in history:
        if h.get("test_accuracy", 0.0) >= target:
            return int(h["round"])
    return None


def plot(curves: dict[str, list[dict]], targets: list[float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, history in curves.items():
        evald = [h for h in history if "test_accuracy" in h]
        rounds = [h["round"] for h in evald]
        axes[0].plot(rounds, [h["test_accuracy"] for h in evald], label=name)
        axes[1].plot(rounds, [h["test_loss"] for h in evald], label=name)
    for target in targets:
        axes[0].axhline(target, color="grey", ls="--", lw=0.8)
    axes[0].set(xlabel="round", ylabel="test accuracy", ylim=(0.5, 1.0))
    axes[1].set(xlabel="round", ylabel="test loss (global model)", yscale="log")
    axes[0].legend(loc="lower right", fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mnist-dir", type=Path, default=DEFAULT_DIR)
    p.add_argument("--model", choices=["logreg", "2nn"], default="2nn")
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--shards-per-client", type=int, default=2)
    p.add_argument("--clients-per-round", type=int, default=10)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--rounds", type=int, default=150)
    p.add_argument("--target", type=float, nargs="+", default=[0.9, 0.95])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=HERE / "out" / "scaffold_mnist.jsonl")
    p.add_argument("--results", type=Path, default=HERE / "results")
    args = p.parse_args()
    if not args.mnist_dir.is_dir():
        print(f"skipped: MNIST not found at {args.mnist_dir}; pass --mnist-dir", file=sys.stderr)
        return 0
    torch.set_num_threads(args.threads)
    task = ff.data.mnist(args.mnist_dir)
    parts = ff.data.partition.shards(
        task.train.y, args.clients, args.shards_per_client, seed=args.seed
    )
    fed = ff.Federation(task, parts)
    local = ff.FitInstructions(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
    k = args.clients_per_round
    strategies: dict[str, Strategy] = {
        "FedAvg": ff.FedAvg(clients_per_round=k, local=local),
        "SCAFFOLD": Scaffold(num_clients=args.clients, clients_per_round=k, local=local),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("")
    curves: dict[str, list[dict]] = {}
    rows = []
    for name, strategy in strategies.items():
        trainer = ff.TorchTrainer(
            lambda: ff.models.build_model(args.model, task.input_shape, task.num_classes),
            optimizer="sgd",
        )
        sim = ff.Simulation(trainer, fed, strategy, seed=args.seed)
        t0 = time.perf_counter()

        def on_round(rec: dict, name: str = name) -> None:
            if rec["round"] % 10 == 0:
                print(
                    f"{name} round {rec['round']:4d} acc {rec['test_accuracy']:.4f} "
                    f"({rec['wall_time_s']:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )

        result = sim.run(args.rounds, on_round=on_round)
        wall = time.perf_counter() - t0
        curves[name] = result.history
        with args.out.open("a") as f:
            for h in result.history:
                f.write(json.dumps({"method": name, **h}) + "\n")
        rows.append(
            {
                "method": name,
                "rounds_to": {t: rounds_to(result.history, t) for t in args.target},
                "best_accuracy": max(h["test_accuracy"] for h in result.history),
                "final_accuracy": result.final["test_accuracy"],
                "s_per_round": wall / len(result.history),
            }
        )
    lines = [
        f"MNIST, {args.model}, shards partition ({args.shards_per_client} label-sorted shards per "
        f"client, {args.clients} clients, partition seed {args.seed}), {k} clients per round, "
        f"E={args.epochs}, B={args.batch_size}, client lr={args.lr} (plain SGD), server step 1, "
        f"{args.rounds} rounds, run seed {args.seed}, 1 thread.",
        "",
        "| method | "
        + " | ".join(f"rounds to {t:.0%}" for t in args.target)
        + f" | best acc | acc at round {args.rounds} | s/round |",
        "|---|" + "---|" * (len(args.target) + 3),
    ]
    for r in rows:
        shown = " | ".join(str(n or f">{args.rounds}") for n in r["rounds_to"].values())
        lines.append(
            f"| {r['method']} | {shown} | {r['best_accuracy']:.4f} | "
            f"{r['final_accuracy']:.4f} | {r['s_per_round']:.2f} |"
        )
    with args.out.open("a") as f:
        for r in rows:
            f.write(json.dumps({"summary": True, **r}) + "\n")
    table = "\n".join(lines)
    print(table)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "scaffold_mnist.md").write_text(table + "\n")
    plot(
        curves,
        args.target,
        args.results / "scaffold_mnist.png",
        f"MNIST {args.model}, {args.shards_per_client} shards/client, {k}/{args.clients} per "
        f"round, E={args.epochs}, B={args.batch_size}, lr={args.lr}",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
