"""One client's local epoch of a CNN, NCHW against channels-last weights (issue 7, workload c;
where ``TorchTrainer(memory_format="auto")``'s choice comes from).

Each case trains the same client (same data, batches, lr) with ``TorchTrainer.fit`` on one
torch thread, its Conv2d weights stored

    contiguous      NCHW (OIHW), torch's default layout
    channels_last   OHWI inside the trainer's flat buffer (what ``auto`` picks on the CPU)

and prints each one's median seconds over ``--repeats`` (interleaved, so load falls on both
alike), channels_last / contiguous measured in the same run, and the largest difference of the
two trained vectors (the same arithmetic in another order: float32 rounding). The first fit of
each trainer (oneDNN's warm-up) is left out.

    python bench/conv_layout.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from fedfleet.client import FitInstructions, TorchTrainer
from fedfleet.data import ArrayDataset
from fedfleet.models import cnn


def _small_cnn() -> nn.Module:  # digits-sized: 8x8 inputs
    return cnn((1, 8, 8), 10)


CASES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int]] = {
    # name: (model, sample shape, samples)
    "FedAvg CNN, 28x28, 600 samples, B=32 (workload c's client)": (
        lambda: cnn((1, 28, 28), 10),
        (1, 28, 28),
        600,
    ),
    "FedAvg CNN sized for 8x8 digits, 180 samples, B=16": (_small_cnn, (1, 8, 8), 180),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name, (model, shape, n) in CASES.items():
        rng = np.random.default_rng(0)
        data = ArrayDataset(rng.normal(size=(n, *shape)).astype(np.float32), rng.integers(0, 10, n))
        batch = 32 if n == 600 else 16
        instr = FitInstructions(epochs=1, batch_size=batch, lr=0.01)
        trainers = {
            f: TorchTrainer(model, memory_format=f) for f in ("contiguous", "channels_last")
        }
        w0 = trainers["contiguous"].init_vector(seed=0)
        times: dict[str, list[float]] = {f: [] for f in trainers}
        vectors = {}
        for f, t in trainers.items():
            vectors[f] = t.fit(w0, data, instr, seed=1).vector  # warm-up, and the result
        for _ in range(args.repeats):
            for f, t in trainers.items():
                start = time.perf_counter()
                t.fit(w0, data, instr, seed=1)
                times[f].append(time.perf_counter() - start)
        med = {f: statistics.median(v) for f, v in times.items()}
        diff = float(np.abs(vectors["contiguous"] - vectors["channels_last"]).max())
        rows.append((name, med["contiguous"], med["channels_last"], diff))
        print(json.dumps({"case": name, **{f"{f}_s": round(v, 4) for f, v in med.items()},
                          "ratio": round(med["channels_last"] / med["contiguous"], 3),
                          "max_abs_diff": diff}))  # fmt: skip
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, 1 torch thread, medians of {args.repeats}\n")  # fmt: skip
    print("| client | contiguous s | channels-last s | channels-last / contiguous | max abs diff |")
    print("|---|---:|---:|---:|---:|")
    for name, a, b, d in rows:
        print(f"| {name} | {a:.3f} | {b:.3f} | {b / a:.2f} | {d:.1e} |")


if __name__ == "__main__":
    main()
