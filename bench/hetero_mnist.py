"""Heterogeneous clients on MNIST: simulated time to a target accuracy, and fairness.

100 clients with Dirichlet(0.3) label skew (20% of each client's samples held out for federated
evaluation), lognormal compute speeds with a 10x spread (95th / 5th percentile), download and
upload bandwidths with a 10x spread, 20% of clients offline in each round, multinomial logistic
regression. Five configurations, 10 clients per round:

1. FedAvg waiting for everyone it selected;
2. FedAvg with a round deadline that drops late clients (:class:`DropLate`);
3. partial work within the deadline (:class:`PartialWork`) + FedNova;
4. Oort-style resource-aware selection (:class:`OortSelection`, preferred duration = deadline);
5. (4) with compensation: clients whose loss lags get twice the epochs within the deadline;
6. (3) with compensation: clients whose loss lags get twice the learning rate;
and q-FedAvg (q = 1) with partial work as the fairness-oriented baseline.

Prints a markdown table and writes bench/results/hetero_mnist.{md,json,png}.

    python bench/hetero_mnist.py [--mnist-dir DIR] [--rounds 200] [--target 0.90]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import fedfleet as ff
from fedfleet.client import FitInstructions, NumpyLogisticRegression
from fedfleet.sim import DropLate, Federation, Lognormal, PartialWork, ProfileSpec, Simulation
from fedfleet.strategies import (
    Compensation,
    FedAvg,
    FedNova,
    MoreEpochs,
    OortSelection,
    QFedAvg,
    ScaleLR,
)

ROOT = Path(__file__).resolve().parent
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
K = 10


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mnist-dir", type=Path, default=DEFAULT_DIR)
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--target", type=float, default=0.90)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget", type=float, default=600.0, help="simulated s for 'acc @ budget'")
    p.add_argument("--out", type=Path, default=ROOT / "results")
    args = p.parse_args()
    if not args.mnist_dir.is_dir():
        print(f"MNIST not found at {args.mnist_dir}; skipping (pass --mnist-dir)", file=sys.stderr)
        return 0
    task = ff.data.mnist(args.mnist_dir)
    parts = ff.data.partition.dirichlet(
        task.train.y, args.clients, 0.3, seed=args.seed, min_size=20
    )
    train, test = ff.data.partition.train_test_split_clients(parts, 0.2, seed=args.seed)
    fed = Federation(task, train, test)
    trainer = NumpyLogisticRegression(task.input_shape, task.num_classes)
    local = FitInstructions(epochs=2, batch_size=20, lr=0.05)
    spec = ProfileSpec(
        time_per_step=0.05,
        speed=Lognormal(median=1.0, spread=10.0),
        download=Lognormal(median=100e3, spread=10.0),  # bytes/s; the model is 31 kB
        upload=Lognormal(median=50e3, spread=10.0),
        latency=0.05,
        availability=0.8,
    )
    profiles = spec.sample(fed.num_clients, args.seed)
    nbytes = trainer.layout.size * 4
    sizes = np.array([len(t) for t in train])
    steps = np.array([ff.sim.profiles.planned_steps(local, int(n)) for n in sizes])
    full = np.array([profiles.duration(c, int(steps[c]), nbytes) for c in range(fed.num_clients)])
    deadline = float(np.quantile(full, 0.5))  # half the clients would finish full work in time
    print(
        f"{fed.num_clients} clients, {int(sizes.sum())} train samples; full-work round trip "
        f"p5/p50/p95 = {np.quantile(full, 0.05):.1f}/{np.median(full):.1f}/"
        f"{np.quantile(full, 0.95):.1f} s; deadline {deadline:.1f} s",
        file=sys.stderr,
    )
    fedavg = FedAvg(clients_per_round=K, local=local)
    oort = OortSelection(
        inner=FedAvg(fraction=1.0, local=local),
        profiles=profiles,
        clients_per_round=K,
        preferred_s=deadline,
    )
    more = MoreEpochs(factor=2.0, profiles=profiles, budget_s=deadline, num_bytes=nbytes)
    compensated = OortSelection(
        inner=Compensation(
            inner=FedAvg(fraction=1.0, local=local), rule=more, num_clients=fed.num_clients
        ),
        profiles=profiles,
        clients_per_round=K,
        preferred_s=deadline,
    )
    configs = {
        "1 FedAvg, wait for all": (fedavg, None),
        "2 FedAvg, deadline drops late": (fedavg, DropLate(deadline_s=deadline)),
        "3 partial work + FedNova": (
            FedNova(clients_per_round=K, local=local),
            PartialWork(deadline_s=deadline),
        ),
        "4 Oort selection": (oort, None),
        "5 Oort + compensation": (compensated, None),
        "6 partial work + FedNova + compensation": (
            Compensation(
                inner=FedNova(clients_per_round=K, local=local),
                rule=ScaleLR(factor=2.0),
                num_clients=fed.num_clients,
            ),
            PartialWork(deadline_s=deadline),
        ),
        "q-FedAvg q=1 (fairness baseline), partial work": (
            QFedAvg(q=1.0, clients_per_round=K, local=local),
            PartialWork(deadline_s=deadline),
        ),
    }
    rows, curves = [], {}
    for name, (strategy, policy) in configs.items():
        t0 = time.perf_counter()
        sim = Simulation(
            trainer,
            fed,
            strategy,
            seed=args.seed,
            federated_eval_every=20,
            profiles=profiles,
            deadline=policy,
        )
        hist = sim.run(args.rounds).history
        hit = next((h for h in hist if h.get("test_accuracy", 0) >= args.target), None)
        last = hist[-1]
        rows.append(
            {
                "config": name,
                "sim_time_to_target_s": None if hit is None else round(hit["sim_time_s"], 1),
                "rounds_to_target": None if hit is None else hit["round"],
                "final_accuracy": round(last["test_accuracy"], 4),
                "final_worst10": round(last["client_accuracy_worst10"], 4),
                "final_client_std": round(last["client_accuracy_std"], 4),
                "sim_time_total_s": round(last["sim_time_s"], 1),
                "mean_round_s": round(last["sim_time_s"] / len(hist), 2),
                "wall_s": round(time.perf_counter() - t0, 1),
            }
        )
        curves[name] = [(h["sim_time_s"], h["test_accuracy"]) for h in hist]
        at_budget = [h["test_accuracy"] for h in hist if h["sim_time_s"] <= args.budget]
        rows[-1]["acc_at_budget"] = round(at_budget[-1], 4) if at_budget else None
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    table = _table(rows, args)
    table += (
        "\n\nfinal = after the last round (federated evaluation on each client's 20% held-out "
        "split for the worst-10% and std columns); time to target = first round whose "
        "centralized test accuracy reaches it."
    )
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hetero_mnist.md").write_text(table + "\n")
    (args.out / "hetero_mnist.json").write_text(json.dumps(rows, indent=1) + "\n")
    _plot(curves, args.target, args.out / "hetero_mnist.png")
    return 0


def _table(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"MNIST logreg, {args.clients} clients, Dirichlet(0.3), 10x speed/bandwidth spread, "
        f"20% offline, K={K}, {args.rounds} rounds, seed {args.seed}",
        "",
        f"| config | sim s to {args.target:.0%} | rounds to {args.target:.0%} | final acc "
        f"| acc @ {args.budget:.0f} sim s | worst-10% client acc | client acc std | sim s total "
        "| sim s/round |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = "not reached" if r["sim_time_to_target_s"] is None else r["sim_time_to_target_s"]
        lines.append(
            f"| {r['config']} | {t} | {r['rounds_to_target'] or '-'} | {r['final_accuracy']} "
            f"| {r['acc_at_budget']} | {r['final_worst10']} | {r['final_client_std']} "
            f"| {r['sim_time_total_s']} | {r['mean_round_s']} |"
        )
    return "\n".join(lines)


def _plot(curves: dict, target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, pts in curves.items():
        t, a = zip(*pts, strict=True)
        ax.plot(t, a, label=name)
    ax.axhline(target, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0.5, 0.95)
    ax.legend(fontsize=8)
    ax.set_title("MNIST, 100 heterogeneous clients")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
