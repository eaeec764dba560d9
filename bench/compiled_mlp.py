"""One round's cohort: the compiled per-client loop against the vectorised cohort and the
sequential torch loop, by model size (issue 7; where ``auto``'s 2^16 threshold comes from).

Each case trains the same cohort (same data, batches, lr) with

    sequential   TorchTrainer.fit, client after client, 1 torch thread (the baseline)
    vectorised   VmapTrainer.fit_cohort with the lanes ``auto`` gives it (1, or one per core
                 once parameters x batch >= 2^20)
    compiled     CompiledTrainer.fit_cohort, one client per core

and prints each one's median seconds over ``--repeats`` (variants interleaved, so load falls on
all alike), its ratio to the sequential loop measured in the same run, compiled / vectorised,
and what ``auto`` picks. The first call of each trainer (numba's compile or cache load, torch's
warm-up) is left out. ``synthetic`` is Synthetic(1,1)'s cohort of round 3 of the peers' workload
s (1,000 devices, 100 sampled; it holds the 23,588-sample device) at E=2 instead of 20.

    python bench/compiled_mlp.py [--repeats 3]
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
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fedfleet.client import FitInstructions, TorchTrainer, VmapTrainer
from fedfleet.client._compiled_trainer import CompiledTrainer
from fedfleet.data import ArrayDataset, synthetic

OUT = Path(__file__).resolve().parent / "out"
PEERS = Path(__file__).resolve().parents[2] / "shared" / "peers"
COMPILED_MAX, LANES_MIN = 1 << 16, 1 << 20  # fedfleet.runs._executors' thresholds


def _mlp(d_in: int, hidden: int) -> Callable[[], nn.Module]:
    if not hidden:
        return lambda: nn.Sequential(nn.Linear(d_in, 10))
    return lambda: nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def _ragged(d_in: int, k: int, lo: int, hi: int, seed: int = 0) -> list[ArrayDataset]:
    rng = np.random.default_rng(seed)
    return [
        ArrayDataset(rng.normal(size=(n, d_in)).astype(np.float32), rng.integers(0, 10, n))
        for n in rng.integers(lo, hi + 1, k)
    ]


def _synthetic_round3() -> list[ArrayDataset]:
    task = synthetic(1.0, 1.0, num_devices=1000, seed=0)
    if (PEERS / "common.py").exists():
        sys.path.insert(0, str(PEERS))
        import common  # the peers' client sampling, so the cohort is workload s's

        ids = common.sample_clients(1000, 100, 2, 0)
    else:
        ids = np.random.default_rng(2).choice(1000, 100, replace=False)
    parts = task.natural_train
    return [ArrayDataset(task.train.x[parts[i]], task.train.y[parts[i]]) for i in ids]


CASES: dict[str, tuple[Callable[[], nn.Module], int, int, Callable[[], list[ArrayDataset]]]] = {
    # name: (model, batch, epochs, cohort)
    "synthetic logreg 60-10": (_mlp(60, 0), 10, 2, _synthetic_round3),
    "MLP 64-32-10, ragged": (_mlp(64, 32), 16, 1, lambda: _ragged(64, 20, 20, 200)),
    "MLP 64-128-10, ragged": (_mlp(64, 128), 16, 1, lambda: _ragged(64, 20, 20, 200)),
    "MLP 64-128-10, equal": (_mlp(64, 128), 16, 1, lambda: _ragged(64, 20, 60, 60)),
    "logreg 784-10, ragged": (_mlp(784, 0), 10, 1, lambda: _ragged(784, 20, 20, 200)),
    "MLP 784-128-10, 100 x 60": (_mlp(784, 128), 32, 1, lambda: _ragged(784, 100, 60, 60)),
}


def _round(
    trainer: Any,
    w: np.ndarray,
    data: list[ArrayDataset],
    ins: list[FitInstructions],
    seeds: list[int],
) -> float:
    """Seconds to train the cohort: client by client for TorchTrainer, else one fit_cohort."""
    start = time.perf_counter()
    if isinstance(trainer, TorchTrainer):
        for d, i, s in zip(data, ins, seeds, strict=True):
            trainer.fit(w, d, i, s)
    else:
        trainer.fit_cohort(w, data, ins, seeds)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cores = len(os.sched_getaffinity(0))
    rows = []
    for name, (factory, batch, epochs, cohort) in CASES.items():
        data = cohort()
        k = len(data)
        ins = [FitInstructions(epochs=epochs, batch_size=batch, lr=0.01)] * k
        seeds = list(range(k))
        size = TorchTrainer(factory, F.cross_entropy).layout.size
        step = size * batch
        trainers = {
            "sequential": TorchTrainer(factory, F.cross_entropy),
            "vectorised": VmapTrainer(factory, workers=cores if step >= LANES_MIN else 1),
            "compiled": CompiledTrainer(factory, workers=cores),
        }
        w = trainers["sequential"].init_vector(0)
        for t in trainers.values():  # warm-up: compile or load numba's cache, torch's first calls
            _round(t, w, data, ins, seeds)
        times: dict[str, list[float]] = {label: [] for label in trainers}
        for _ in range(args.repeats):
            for label, t in trainers.items():
                times[label].append(_round(t, w, data, ins, seeds))
        med = {label: statistics.median(v) for label, v in times.items()}
        steps = sum(len(d) * epochs // batch + (len(d) * epochs % batch > 0) for d in data)
        pick = "compiled" if step <= COMPILED_MAX else "vectorised"
        row = {
            "case": name,
            "params": size,
            "params_x_batch": step,
            "clients": k,
            "client_steps": steps,
            **{f"{label}_s": round(v, 4) for label, v in med.items()},
            "compiled_vs_vectorised": round(med["compiled"] / med["vectorised"], 3),
            "auto": pick,
        }
        rows.append(row)
        print(
            f"{name:<26} P x B {step:>9,}: sequential {med['sequential']:.3f} s, vectorised "
            f"{med['vectorised']:.3f} s ({med['sequential'] / med['vectorised']:.1f}x), compiled "
            f"{med['compiled']:.3f} s ({med['sequential'] / med['compiled']:.1f}x); compiled / "
            f"vectorised {row['compiled_vs_vectorised']:.2f}; auto: {pick}",
            flush=True,
        )
    meta = {
        "cpus": cores,
        "load_end": os.getloadavg()[0],
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    print(f"\n{cores} cores, load average at the end {meta['load_end']:.2f}")
    OUT.mkdir(exist_ok=True)
    with (OUT / "compiled_mlp.jsonl").open("a") as f:
        for r in rows:
            f.write(json.dumps({**r, **meta}) + "\n")


if __name__ == "__main__":
    main()
