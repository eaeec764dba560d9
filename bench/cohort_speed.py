"""Cohort training speed: VmapTrainer against the sequential TorchTrainer and a tight loop.

The peers' FedAvg workloads (``../shared/peers/README.md``) on their synthetic MNIST stand-in
(60,000 x 784, ``x = mu[y] + N(0, I)``), IID shards, client lr 0.01, E=1, B=32:

    a  MLP 784-128-10, 100 clients x 600 samples, 10 a round   (19 steps per client)
    b  MLP 784-128-10, 1,000 clients x 60 samples, 100 a round (2 steps: 32 + 28 samples)
    c  FedAvg CNN,     100 clients x 600 samples, 10 a round
    r  ragged b: 1,000 clients with 10-300 samples (log-normal, mean 54), 100 a round

What one round of local training costs, per variant (all in one process, interleaved):

    limit_t1, limit_t2  one model and one torch.optim.SGD stepping through the cohort's batches
                        in one tight loop on pre-made tensors (the peers' ``limit_torch.py``),
                        1 and 2 torch threads; the reference for the ratios
    seq_t1, seq_t2      fedfleet's TorchTrainer.fit, client after client
    vmap_t1, vmap_t2    VmapTrainer.fit_cohort, 1 and 2 torch threads
    vmap_w2             VmapTrainer.fit_cohort with 2 worker threads of 1 torch thread each
    vmap_t2_1chunk      vmap_t2 with the whole cohort in one chunk (no memory budget)
    vmap_*_generic      (MLP) the generic vmap(grad(functional_call)) path, fast path off
    (r only) vmap_grouped: one fit_cohort per group of equal step count; vmap_maskcost: every
                        client padded to the longest client's step count, the work a
                        pad-and-mask schedule does

Each repeat runs every variant once on that repeat's cohort (round r's sample, as the peers
sample clients), after one warm-up round each; the table shows medians over repeats of wall
and CPU seconds, and the ratio of the wall median to the faster limit. The machine is shared:
the load average is printed and stored. JSON lines go to ``bench/out/cohort_speed.jsonl``.

    python bench/cohort_speed.py [--workloads a b c r] [--repeats 5] [--variants ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fedfleet.client import FitInstructions, TorchTrainer, VmapTrainer
from fedfleet.data import ArrayDataset
from fedfleet.models import cnn, mlp
from fedfleet.sim import client_seed

OUT = Path(__file__).resolve().parent / "out"
WORKLOADS = {  # name: (model, clients, clients per round)
    "a": ("mlp", 100, 10),
    "b": ("mlp", 1000, 100),
    "c": ("cnn", 100, 10),
    "r": ("mlp", 1000, 100),
}


# the peers' data, partition and sampling (../shared/peers/common.py), copied to stay standalone
def synthetic_mnist(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.Generator(np.random.PCG64(seed))
    means = (0.35 * rng.standard_normal((10, 784))).astype(np.float32)
    y = rng.integers(0, 10, 60_000).astype(np.int64)
    rng.integers(0, 10, 10_000)  # the peers' test labels: keeps the stream aligned
    x = rng.standard_normal((60_000, 784), dtype=np.float32)
    x += means[y]
    return x, y


def iid_partition(n: int, clients: int, seed: int = 0) -> list[np.ndarray]:
    return np.array_split(np.random.Generator(np.random.PCG64(seed + 1)).permutation(n), clients)


def ragged_partition(n: int, clients: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed + 2)
    sizes = np.clip(rng.lognormal(np.log(40), 0.8, clients), 10, 300).astype(int)
    assert sizes.sum() <= n, "the shards must fit the data"
    perm = rng.permutation(n)
    return np.split(perm[: sizes.sum()], np.cumsum(sizes)[:-1])


def sample_clients(clients: int, k: int, rnd: int, seed: int = 0) -> np.ndarray:
    rng = np.random.Generator(np.random.PCG64(seed * 100_003 + 7 + rnd))
    return np.sort(rng.choice(clients, size=k, replace=False))


class Round:
    """One round's cohort: datasets, instructions, seeds, and the limit loop's tensors."""

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        parts: list[np.ndarray],
        cids: np.ndarray,
        rnd: int,
        batch: int,
    ) -> None:
        self.datasets = [ArrayDataset(x[parts[c]], y[parts[c]]) for c in cids]
        self.instructions = [FitInstructions(epochs=1, batch_size=batch, lr=0.01)] * len(cids)
        self.seeds = [client_seed(0, rnd, int(c)) for c in cids]
        # limit loop: the cohort's samples in one tensor, the FL run's batch boundaries
        self.x = torch.from_numpy(np.concatenate([d.x for d in self.datasets]))
        self.y = torch.from_numpy(np.concatenate([d.y for d in self.datasets]))
        self.bounds, off = [], 0
        for d in self.datasets:
            self.bounds += [
                (off + s, off + min(s + batch, len(d))) for s in range(0, len(d), batch)
            ]
            off += len(d)

    def steps(self) -> list[int]:
        return [
            -(-len(d) // i.batch_size)
            for d, i in zip(self.datasets, self.instructions, strict=True)
        ]


def limit_loop(factory: Callable[[], nn.Module]) -> Callable[[Round], None]:
    model = factory()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def run(r: Round) -> None:
        for a, b in r.bounds:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(r.x[a:b]), r.y[a:b]).backward()
            opt.step()

    return run


def variants(
    factory: Callable[[], nn.Module], workload: str, w0: np.ndarray
) -> dict[str, tuple[int, Callable[[Round], object]]]:
    """name -> (torch threads, run(round))."""
    seq = TorchTrainer(factory)

    def sequential(r: Round) -> object:
        return [
            seq.fit(w0, d, i, s)
            for d, i, s in zip(r.datasets, r.instructions, r.seeds, strict=True)
        ]

    vmap1 = VmapTrainer(factory)
    vmap2 = VmapTrainer(factory)
    workers = VmapTrainer(factory, workers=2)
    whole = VmapTrainer(factory, max_chunk_bytes=1 << 40)
    generic = VmapTrainer(factory, fast_path=False)
    generic_w2 = VmapTrainer(factory, fast_path=False, workers=2)
    out: dict[str, tuple[int, Callable[[Round], object]]] = {
        "limit_t1": (1, limit_loop(factory)),
        "limit_t2": (2, limit_loop(factory)),
        "seq_t1": (1, sequential),
        "seq_t2": (2, sequential),
        "vmap_t1": (1, lambda r: vmap1.fit_cohort(w0, r.datasets, r.instructions, r.seeds)),
        "vmap_t2": (2, lambda r: vmap2.fit_cohort(w0, r.datasets, r.instructions, r.seeds)),
        "vmap_w2": (1, lambda r: workers.fit_cohort(w0, r.datasets, r.instructions, r.seeds)),
        "vmap_t2_1chunk": (2, lambda r: whole.fit_cohort(w0, r.datasets, r.instructions, r.seeds)),
    }
    if workload != "c":  # the MLP's hand-written path against plain vmap(grad(functional_call))
        out["vmap_t2_generic"] = (
            2,
            lambda r: generic.fit_cohort(w0, r.datasets, r.instructions, r.seeds),
        )
        out["vmap_w2_generic"] = (
            1,
            lambda r: generic_w2.fit_cohort(w0, r.datasets, r.instructions, r.seeds),
        )
    if workload == "r":

        def grouped(r: Round) -> object:
            steps = np.array(r.steps())
            for s in np.unique(steps):
                idx = np.flatnonzero(steps == s)
                vmap1.fit_cohort(
                    w0,
                    [r.datasets[i] for i in idx],
                    [r.instructions[i] for i in idx],
                    [r.seeds[i] for i in idx],
                )

        def maskcost(r: Round) -> object:  # every client runs the longest client's step count
            top = max(r.steps())
            ins = [
                FitInstructions(epochs=-(-top // s), batch_size=32, lr=0.01, max_steps=top)
                for s in r.steps()
            ]
            return vmap1.fit_cohort(w0, r.datasets, ins, r.seeds)

        out["vmap_grouped"] = (1, grouped)
        out["vmap_maskcost"] = (1, maskcost)
    return out


def run_workload(
    name: str, repeats: int, only: list[str] | None, x: np.ndarray, y: np.ndarray
) -> list[dict]:
    model, clients, k = WORKLOADS[name]
    if model == "cnn":
        xs, factory = x.reshape(-1, 1, 28, 28), lambda: cnn((1, 28, 28), 10)
    else:
        xs, factory = x, lambda: mlp((784,), 10)
    parts = ragged_partition(len(x), clients) if name == "r" else iid_partition(len(x), clients)
    rounds = [Round(xs, y, parts, sample_clients(clients, k, r), r, 32) for r in range(repeats + 1)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        w0 = TorchTrainer(factory).init_vector(0)
    runs = variants(factory, name, w0)
    if only:
        runs = {v: runs[v] for v in only if v in runs}
    wall: dict[str, list[float]] = {v: [] for v in runs}
    cpu: dict[str, list[float]] = {v: [] for v in runs}
    load_start = os.getloadavg()
    for rep in range(repeats + 1):  # repeat 0 is the warm-up
        for v, (threads, fn) in runs.items():
            torch.set_num_threads(threads)
            c0, t0 = time.process_time(), time.perf_counter()
            fn(rounds[rep])
            t1, c1 = time.perf_counter(), time.process_time()
            if rep:
                wall[v].append(t1 - t0)
                cpu[v].append(c1 - c0)
    load_end = os.getloadavg()
    limits = [statistics.median(wall[v]) for v in ("limit_t1", "limit_t2") if v in wall]
    ref = min(limits) if limits else None
    steps = sum(len(r.bounds) for r in rounds[1:]) / repeats
    rows = []
    for v in runs:
        med = statistics.median(wall[v])
        rows.append(
            {
                "workload": name,
                "variant": v,
                "threads": runs[v][0],
                "repeats": repeats,
                "wall_s_median": round(med, 4),
                "wall_s_min": round(min(wall[v]), 4),
                "cpu_s_median": round(statistics.median(cpu[v]), 4),
                "ratio_to_limit": None if ref is None else round(med / ref, 3),
                "wall_s": [round(t, 4) for t in wall[v]],
                "sgd_steps_per_round": steps,
                "clients_per_round": k,
                "loadavg_start": [round(a, 2) for a in load_start],
                "loadavg_end": [round(a, 2) for a in load_end],
            }
        )
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workloads", nargs="+", default=["a", "b", "c"], choices=sorted(WORKLOADS))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--repeats-cnn", type=int, default=3)
    p.add_argument("--variants", nargs="+", default=None, help="only these variants")
    p.add_argument("--out", type=Path, default=OUT / "cohort_speed.jsonl")
    args = p.parse_args()
    x, y = synthetic_mnist(0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    for name in args.workloads:
        repeats = args.repeats_cnn if WORKLOADS[name][0] == "cnn" else args.repeats
        rows = run_workload(name, repeats, args.variants, x, y)
        with args.out.open("a") as f:
            for row in rows:
                f.write(json.dumps({**meta, **row}) + "\n")
        model, clients, k = WORKLOADS[name]
        print(
            f"\n({name}) {model}, {clients} clients, {k} a round, "
            f"{rows[0]['sgd_steps_per_round']:.0f} SGD steps a round; load average "
            f"{rows[0]['loadavg_start'][0]} -> {rows[0]['loadavg_end'][0]} (1 min)"
        )
        print("| variant | threads | wall s/round (median) | min | CPU s/round | / limit |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            ratio = "" if r["ratio_to_limit"] is None else f"{r['ratio_to_limit']:.2f}x"
            print(
                f"| {r['variant']} | {r['threads']} | {r['wall_s_median']:.4f} | "
                f"{r['wall_s_min']:.4f} | {r['cpu_s_median']:.4f} | {ratio} |",
                flush=True,
            )
    print(f"\nJSON lines appended to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
