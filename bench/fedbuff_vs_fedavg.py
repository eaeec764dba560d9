"""FedBuff vs synchronous FedAvg: simulated time to a target accuracy with slow and fast clients.

Digits (sklearn 8x8), MLP 64-32-10, 50 clients with Dirichlet(0.5) label skew, client speeds
lognormal with sigma 0.7 (the 95th percentile client is about 10x faster than the 5th), one
simulated second per local step at speed 1. Synchronous FedAvg samples 10 clients a round and
waits for the slowest of them; FedBuff keeps ``concurrency`` clients busy and steps the server
every K arrivals. Both use the same clock, local work (E=1, B=16, lr=0.05) and seed.

    python bench/fedbuff_vs_fedavg.py [--target 0.9] [--seeds 0 1 2] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import fedfleet as ff
from fedfleet.sim import ClientClock, FedBuffSimulation

LOCAL = ff.FitInstructions(epochs=1, batch_size=16, lr=0.05)
CLOCK = ClientClock(time_per_step=1.0, speed_sigma=0.7)
COHORT = 10


def _setup(seed: int) -> tuple[ff.Federation, ff.TorchTrainer]:
    task = ff.data.load_digits(seed=0)
    parts = ff.data.partition.dirichlet(task.train.y, 50, alpha=0.5, seed=seed)
    trainer = ff.TorchTrainer(lambda: ff.models.mlp(task.input_shape, 10, hidden=(32,)))
    return ff.Federation(task, parts), trainer


def _steps(n: int) -> int:
    return LOCAL.epochs * math.ceil(n / LOCAL.batch_size)


def run_fedavg(seed: int, target: float, max_rounds: int) -> dict[str, Any]:
    """Synchronous FedAvg; a round lasts as long as its slowest client (same clock as FedBuff)."""
    fed, trainer = _setup(seed)
    strategy = ff.FedAvg(clients_per_round=COHORT, local=LOCAL)
    times = CLOCK.sample(fed.num_clients, seed)
    nbytes = 4 * trainer.layout.size
    curve: list[tuple[float, float]] = []
    clock, w0 = 0.0, trainer.init_vector(seed)

    def on_round(rec: dict[str, Any]) -> None:
        nonlocal clock
        # the engine samples round r with SeedSequence(seed, spawn_key=(r, 0)): replay it
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(rec["round"], 0)))
        plan = strategy.configure_fit(rec["round"], w0, {}, fed.client_ids, rng)
        cids = [c for c, _ in plan]
        clock += times.round_time(cids, [_steps(len(fed.train_parts[c])) for c in cids], nbytes)
        curve.append((clock, rec["test_accuracy"]))

    t0 = time.perf_counter()
    result = ff.Simulation(trainer, fed, strategy, seed=seed).run(
        max_rounds, on_round=on_round, until=lambda r: r["test_accuracy"] >= target
    )
    hit = result.final["test_accuracy"] >= target
    return {
        "method": f"FedAvg (sync, {COHORT}/round)",
        "seed": seed,
        "time_to_target": curve[-1][0] if hit else None,
        "server_steps": result.final["round"],
        "client_updates": COHORT * result.final["round"],
        "final_accuracy": result.final["test_accuracy"],
        "wall_s": time.perf_counter() - t0,
        "curve": curve,
    }


def run_fedbuff(
    seed: int, target: float, max_versions: int, k: int, concurrency: int
) -> dict[str, Any]:
    fed, trainer = _setup(seed)
    sim = FedBuffSimulation(
        trainer, fed, local=LOCAL, buffer_size=k, concurrency=concurrency, clock=CLOCK, seed=seed
    )
    t0 = time.perf_counter()
    result = sim.run(max_versions, until=lambda r: r["test_accuracy"] >= target)
    hit = result.final["test_accuracy"] >= target
    return {
        "method": f"FedBuff (K={k}, concurrency={concurrency})",
        "seed": seed,
        "time_to_target": result.final["sim_time_s"] if hit else None,
        "server_steps": result.final["version"],
        "client_updates": k * result.final["version"],
        "final_accuracy": result.final["test_accuracy"],
        "wall_s": time.perf_counter() - t0,
        "staleness_mean": float(np.mean([r["staleness_mean"] for r in result.history])),
        "curve": [(r["sim_time_s"], r["test_accuracy"]) for r in result.history],
    }


def _plot(rows: list[dict[str, Any]], target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    colors: dict[str, str] = {}
    for row in rows:
        t, acc = zip(*row["curve"], strict=True)
        color = colors.setdefault(row["method"], f"C{len(colors)}")
        label = row["method"] if row["seed"] == rows[0]["seed"] else None
        ax.plot(t, acc, color=color, alpha=0.8, label=label)
    ax.axhline(target, color="grey", ls=":", lw=1)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("digits, 50 clients, lognormal speeds (sigma 0.7, ~10x spread)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", type=float, default=0.9)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--max-steps", type=int, default=300, help="server steps at most per run")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        rows.append(run_fedavg(seed, args.target, args.max_steps))
        rows.append(run_fedbuff(seed, args.target, args.max_steps, k=5, concurrency=10))
        rows.append(run_fedbuff(seed, args.target, args.max_steps, k=10, concurrency=20))
    with (args.out / "fedbuff.jsonl").open("w") as f:
        for row in rows:
            f.write(json.dumps({k: v for k, v in row.items() if k != "curve"}) + "\n")
    _plot(rows, args.target, args.out / "fedbuff.png")

    print(
        f"| method | seed | sim time to {args.target:.0%} | server steps | client updates "
        "| mean staleness | final acc | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ttt = f"{r['time_to_target']:.0f}" if r["time_to_target"] is not None else "not reached"
        stale = f"{r['staleness_mean']:.2f}" if "staleness_mean" in r else "0"
        print(
            f"| {r['method']} | {r['seed']} | {ttt} | {r['server_steps']} | "
            f"{r['client_updates']} | {stale} | {r['final_accuracy']:.3f} | {r['wall_s']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
