"""Split learning (``fedfleet.vertical.SplitNN``) against the same network trained centrally, in
one run (issue 18).

For each table and column split (guest first; the guest holds the labels):

    acc / auc             test accuracy and ROC AUC of the split model (parties as threads on a
                          LocalNetwork: every activation and gradient encoded as it would travel)
    ref_acc / ref_auc     the same architecture (each party's bottom model, the guest's top) as
                          one plain torch model on all columns: same initial weights (same seed),
                          same standardisation, same train/test rows and mini-batches
    max_weight_diff       largest |w_split - w_central| over every weight after training
    s_per_epoch           split training wall seconds per epoch
    ref_s_per_epoch       the central model's training seconds per epoch, measured in the same run
    bytes_per_epoch       bytes of all frames of one epoch (activations up, gradients down)
    raw_host_bytes        the plaintext alternative to the traffic: the hosts' columns sent to the
                          guest once, float32 (bytes_per_epoch / raw_host_bytes is the ratio)

With ``--dp-noise``: the split model again with Gaussian noise of that standard deviation on
every transmitted activation and gradient (``SplitNN.dp_noise``: not clipped, no accounted
epsilon): its accuracy and AUC against the noise-free run's.

Tables: breast cancer (569 rows, 30 columns) and a generated one of 100,000 rows
(``make_classification``, 30 columns, 12 informative, seed 0: the table of
``bench/vertical_lr.py``). SplitNN holds out 25% of the rows for testing. Appends to
``bench/results/vertical_split_nn.jsonl``.

    python bench/vertical_split_nn.py [--cases breast-2 breast-3 generated-2 generated-3]
        [--dp-noise 0.1 0.5 1.0] [--breast-epochs 30] [--generated-epochs 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer, make_classification
from sklearn.metrics import roc_auc_score

from fedfleet.vertical import LocalNetwork, SplitNN, run_parties, split_columns

RESULTS = Path(__file__).resolve().parent / "results"
SPLITS = {
    2: [list(range(0, 10)), list(range(10, 30))],
    3: [list(range(0, 10)), list(range(10, 20)), list(range(20, 30))],
}


def central(split: SplitNN, x: np.ndarray, y: np.ndarray, columns: list[list[int]]) -> dict:
    """The split model's bottoms and top composed into one torch model and trained on all
    columns in one place, with the split model's initial weights, rows and batches."""
    train, test = split.train_test(len(x))
    mean, std = x[train].mean(axis=0), x[train].std(axis=0)
    xs = torch.from_numpy(((x - mean) / np.where(std > 0, std, 1.0)).astype(np.float32))
    yt = torch.from_numpy(y.astype(np.int64))
    bottoms = [split.bottom_model(len(cols), i) for i, cols in enumerate(columns)]
    top = split.top_model(split.cut_width * len(columns), 2)
    params = [p for m in [top, *bottoms] for p in m.parameters()]
    opt = torch.optim.SGD(params, lr=split.lr)
    parts = [torch.tensor(cols) for cols in columns]

    def forward(rows: torch.Tensor) -> torch.Tensor:
        xr = xs[rows]
        return top(torch.cat([b(xr[:, c]) for b, c in zip(bottoms, parts, strict=True)], dim=1))

    start = time.perf_counter()
    for epoch in range(split.epochs):
        for batch in split.batches(epoch, train):
            rows = torch.from_numpy(batch)
            loss = torch.nn.functional.cross_entropy(forward(rows), yt[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
    secs = time.perf_counter() - start
    with torch.no_grad():
        proba = torch.softmax(forward(torch.from_numpy(test)), dim=1).numpy()
    return {
        "bottoms": [{k: v.numpy() for k, v in b.state_dict().items()} for b in bottoms],
        "top": {k: v.numpy() for k, v in top.state_dict().items()},
        "acc": float(np.mean(proba.argmax(axis=1) == y[test])),
        "auc": float(roc_auc_score(y[test], proba[:, 1])),
        "s_per_epoch": secs / split.epochs,
    }


def split_run(split: SplitNN, x: np.ndarray, y: np.ndarray, columns: list[list[int]]) -> dict:
    parties = {p.name: p for p in split_columns(x, y, columns)}
    net = LocalNetwork(list(parties))
    start = time.perf_counter()
    out = run_parties(net, split.programs(parties))
    secs = time.perf_counter() - start
    train_bytes = sum(len(d.frame) for d in net.log if d.kind in ("activations", "gradients"))
    return {
        "out": out,
        "names": list(parties),
        "acc": out["guest"].metrics["accuracy"],
        "auc": out["guest"].metrics["auc"],
        "s_per_epoch": secs / split.epochs,
        "bytes_per_epoch": train_bytes / split.epochs,
        "messages_per_epoch": sum(d.kind != "test-activations" for d in net.log) / split.epochs,
    }


def max_diff(run: dict, ref: dict) -> float:
    out, diffs = run["out"], []
    for name, bottom in zip(run["names"], ref["bottoms"], strict=True):
        diffs += [np.abs(out[name].bottom[k] - v).max() for k, v in bottom.items()]
    diffs += [np.abs(out["guest"].top[k] - v).max() for k, v in ref["top"].items()]
    return float(max(diffs))


def case(
    name: str, x: np.ndarray, y: np.ndarray, parties: int, split: SplitNN, noises: list[float]
) -> list[dict[str, Any]]:
    columns = SPLITS[parties]
    ref = central(split, x, y, columns)
    run = split_run(split, x, y, columns)
    train, _ = split.train_test(len(x))
    common = {
        "dataset": name,
        "parties": parties,
        "columns": [len(c) for c in columns],
        "rows": len(x),
        "train_rows": len(train),
        "epochs": split.epochs,
        "batch_size": split.batch_size,
        "lr": split.lr,
        "bottom_widths": list(split.bottom_widths),
        "top_widths": list(split.top_widths),
    }
    raw = len(train) * sum(len(c) for c in columns[1:]) * 4
    row = common | {
        "dp_noise": 0.0,
        "acc": run["acc"],
        "auc": run["auc"],
        "ref_acc": ref["acc"],
        "ref_auc": ref["auc"],
        "max_weight_diff": max_diff(run, ref),
        "s_per_epoch": run["s_per_epoch"],
        "ref_s_per_epoch": ref["s_per_epoch"],
        "time_ratio": run["s_per_epoch"] / ref["s_per_epoch"],
        "bytes_per_epoch": run["bytes_per_epoch"],
        "messages_per_epoch": run["messages_per_epoch"],
        "raw_host_bytes": raw,
        "bytes_ratio": run["bytes_per_epoch"] / raw,
    }
    print(json.dumps(row), flush=True)
    rows = [row]
    for sigma in noises:
        # the same recipe and seed, noise on what travels
        noisy = split_run(dataclasses.replace(split, dp_noise=sigma), x, y, columns)
        rows.append(
            common
            | {
                "dp_noise": sigma,
                "acc": noisy["acc"],
                "auc": noisy["auc"],
                "noise_free_acc": run["acc"],
                "noise_free_auc": run["auc"],
                "ref_acc": ref["acc"],
                "ref_auc": ref["auc"],
                "s_per_epoch": noisy["s_per_epoch"],
                "bytes_per_epoch": noisy["bytes_per_epoch"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--cases", nargs="*", default=["breast-2", "breast-3", "generated-2", "generated-3"]
    )
    ap.add_argument("--dp-noise", type=float, nargs="*", default=[0.1, 0.5, 1.0])
    ap.add_argument("--breast-epochs", type=int, default=30)
    ap.add_argument("--generated-epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (both sides)")
    ap.add_argument("--out", type=Path, default=RESULTS / "vertical_split_nn.jsonl")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x_bc, y_bc = load_breast_cancer(return_X_y=True)
    x_gen, y_gen = make_classification(
        n_samples=100_000, n_features=30, n_informative=12, random_state=0
    )
    rows: list[dict[str, Any]] = []
    for c in args.cases:
        table, parties = c.rsplit("-", 1)
        if table == "breast":
            split = SplitNN(epochs=args.breast_epochs, batch_size=64, lr=0.1, seed=0)
            rows += case("breast_cancer", x_bc, y_bc, int(parties), split, args.dp_noise)
        elif table == "generated":
            split = SplitNN(epochs=args.generated_epochs, batch_size=64, lr=0.1, seed=0)
            rows += case("generated_100k", x_gen, y_gen, int(parties), split, args.dp_noise)
        else:
            raise SystemExit(f"unknown case {c!r}: breast-2, breast-3, generated-2, generated-3")
    stamp = {
        "time": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "load_avg_1m": os.getloadavg()[0],
        "cpus": os.cpu_count(),
        "torch_threads": args.threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        for r in rows:
            f.write(json.dumps(r | stamp) + "\n")
    print(
        "\n| table | parties | noise | acc / AUC split | acc / AUC central | max w diff "
        "| s/epoch | x central | kB/epoch | x raw host columns |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        diff = f"{r['max_weight_diff']:.1e}" if "max_weight_diff" in r else "-"
        ratio = f"{r['time_ratio']:.1f}x" if "time_ratio" in r else "-"
        raw = f"{r['bytes_ratio']:.1f}x" if "bytes_ratio" in r else "-"
        print(
            f"| {r['dataset']} | {r['parties']} | {r['dp_noise']} | {r['acc']:.4f} / "
            f"{r['auc']:.4f} | {r['ref_acc']:.4f} / {r['ref_auc']:.4f} | {diff} | "
            f"{r['s_per_epoch']:.2f} | {ratio} | {r['bytes_per_epoch'] / 1e3:.0f} | {raw} |"
        )


if __name__ == "__main__":
    main()
