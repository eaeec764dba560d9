"""Seconds per round of the cohort executors on workload a, with ratios to the sequential loop.

Workload a (as in ``bench/cohort_speed.py``, here on the real MNIST files): MLP 784-128-10,
100 IID clients x 600 samples, 10 a round, E=1, B=32, client lr 0.01. Every variant is the same
``fedfleet run`` configuration with another executor:

    sequential            one client after another, in-process, 1 torch thread (the baseline)
    vectorised            the whole cohort through VmapTrainer.fit_cohort, in-process
    process_seq, _vec     2 forked worker processes (1 torch thread each), 5 clients each
    ray_seq, ray_vec      2 Ray tasks a round on a local Ray instance (num_cpus=2)

A run has ``--rounds`` rounds; the first (forking, Ray workers building their run) and the last
(test evaluation) are left out. ``--repeats`` cycles through all variants that many times, so
a shared machine's load falls on all of them alike; the table shows each variant's median round
time and its ratio to the sequential median from the same invocation. JSON lines go to
``bench/out/executors.jsonl``.

    python bench/executors.py [--rounds 8] [--repeats 3] [--data ../shared/data/mnist] [--no-ray]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path

import torch

from fedfleet.runs import load_config
from fedfleet.runs._build import build_run

OUT = Path(__file__).resolve().parent / "out"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"

VARIANTS = {
    "sequential": ["executor=sequential"],
    "vectorised": ["executor=vectorised"],
    "process_seq": ["executor=process", "workers=2", "worker_executor=sequential"],
    "process_vec": ["executor=process", "workers=2", "worker_executor=vectorised"],
    "ray_seq": ["executor=ray", "workers=2", "worker_executor=sequential"],
    "ray_vec": ["executor=ray", "workers=2", "worker_executor=vectorised"],
}


def workload_a(data: Path, rounds: int) -> list[str]:
    return [
        "data.name=mnist",
        f"data.path={json.dumps(str(data))}",
        "data.partition=iid",
        "data.num_clients=100",
        "strategy.clients_per_round=10",
        "model.name=mlp",
        "client.epochs=1",
        "client.batch_size=32",
        "client.lr=0.01",
        "eval.every=0",
        "threads=1",
        f"rounds={rounds}",
    ]


def round_times(overrides: list[str], rounds: int) -> tuple[list[float], str]:
    pieces = build_run(load_config(None, overrides))
    sim = pieces.simulation
    try:
        result = sim.run(rounds)
    finally:
        close = getattr(getattr(sim, "executor", None), "close", None)
        if close is not None:
            close()
    return [h["round_time_s"] for h in result.history[1:-1]], pieces.executor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--no-ray", action="store_true", help="leave out the Ray variants")
    args = ap.parse_args()
    torch.set_num_threads(1)
    variants = {k: v for k, v in VARIANTS.items() if not (args.no_ray and k.startswith("ray"))}
    if not args.no_ray:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    base = workload_a(args.data.resolve(), args.rounds)
    times: dict[str, list[float]] = {name: [] for name in variants}
    chosen: dict[str, str] = {}
    for rep in range(args.repeats):  # variants interleaved, so the machine's load hits all alike
        for name, extra in variants.items():
            t, chosen[name] = round_times([*base, *extra], args.rounds)
            times[name] += t
        print(f"  repeat {rep + 1}/{args.repeats} done", flush=True)
    rows = [
        {"variant": k, "s_per_round": statistics.median(v), "chosen": chosen[k]}
        for k, v in times.items()
    ]
    ref = rows[0]["s_per_round"]
    print(f"\nworkload a, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    print(f"{'variant':<14}{'s/round':>9}{'vs seq':>8}  executor")
    for r in rows:
        r["ratio_to_sequential"] = r["s_per_round"] / ref
        print(
            f"{r['variant']:<14}{r['s_per_round']:>9.3f}{r['ratio_to_sequential']:>8.2f}  "
            f"{r['chosen']}"
        )
    OUT.mkdir(exist_ok=True)
    meta = {"cpus": os.cpu_count(), "load": os.getloadavg()[0], "python": platform.python_version()}
    with (OUT / "executors.jsonl").open("a") as f:
        for r in rows:
            f.write(json.dumps({**r, **meta, "rounds": args.rounds}) + "\n")


if __name__ == "__main__":
    main()
