"""Vertical (hetero) logistic regression with Paillier against centralised and plaintext
vertical training.

For each dataset, split column-wise between a guest (labels + some columns) and hosts:

    acc / auc           test accuracy and ROC AUC of the HeteroLR model (Paillier, arbiter)
    ref_acc / ref_auc   the same model trained centrally in float64 on all columns, same batches
    max_weight_diff     largest |w_hetero - w_central|
    s_per_epoch         HeteroLR wall seconds per epoch (all parties on one machine, threads)
    plain_s_per_epoch   the same message flow with plaintext floats (no encryption, no arbiter)
    bytes_per_epoch     bytes of all frames sent per epoch, HeteroLR
    plain_bytes         the same for the plaintext vertical flow

PSI (``--psi-rows``): ECDH PSI between a guest and a host of that many ids each, 80% shared:
seconds and bytes in all, against a plaintext join of the same ids (a set intersection).

Datasets: breast cancer (455 train / 114 test rows, 30 columns) and a generated 100,000-row
table (``make_classification``, 30 columns); Paillier on all 100,000 rows would take hours on
this machine, so it trains on a subsample of ``--rows`` rows (up to all 80,000 training rows)
and the full-epoch time is extrapolated linearly (every cost is per row). Appends to
``bench/results/vertical_lr.jsonl`` (with the time and the load average).

    python bench/vertical_lr.py [--key-bits 1024 2048] [--rows 2000] [--psi-rows 100000]
        [--datasets breast generated]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer, make_classification
from sklearn.metrics import roc_auc_score

from fedfleet.vertical import (
    HeteroLR,
    HeteroPredict,
    LocalNetwork,
    Message,
    PartyData,
    Psi,
    run_parties,
    split_columns,
)

RESULTS = Path(__file__).resolve().parent / "results"


def central(x: np.ndarray, y: np.ndarray, proto: HeteroLR) -> np.ndarray:
    """Taylor-approximated LR on all columns, float64, the protocol's batches."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(xb.shape[1])
    for idx in proto.batches(len(x)):
        d = 0.25 * (xb[idx] @ w) - 0.5 * (2 * y[idx] - 1)
        penalty = proto.l2 * w
        penalty[-1] = 0.0
        w = w - proto.lr * (xb[idx].T @ d / len(idx) + penalty)
    return w


def plaintext_vertical(parties: dict, proto: HeteroLR) -> LocalNetwork:
    """The same flow as HeteroLR with floats in the clear: hosts send x_h w_h, the guest sends
    the residuals back; no encryption, no arbiter. The baseline for time and bytes."""
    net = LocalNetwork(list(parties))
    hosts = [p for p in parties if p != "guest"]

    def guest(ch):
        g = parties["guest"]
        x = np.hstack([g.x, np.ones((len(g.x), 1))])
        w = np.zeros(x.shape[1])
        for idx in proto.batches(len(x)):
            z = x[idx] @ w
            for h in hosts:
                z = z + ch.recv(h, "u").arrays[0]
            d = 0.25 * z - 0.5 * (2 * g.y[idx] - 1)
            for h in hosts:
                ch.send(h, Message("d", {}, [d]))
            w = w - proto.lr * x[idx].T @ d / len(idx)
        return w

    def host(ch):
        x = parties[ch.party].x
        w = np.zeros(x.shape[1])
        for idx in proto.batches(len(x)):
            ch.send("guest", Message("u", {}, [x[idx] @ w]))
            d = ch.recv("guest", "d").arrays[0]
            w = w - proto.lr * x[idx].T @ d / len(idx)
        return w

    run_parties(net, {"guest": guest, **{h: host for h in hosts}})
    return net


def psi(rows: int) -> dict:
    shared = int(rows * 0.8)
    ids_g = [f"customer-{i}" for i in range(rows)]
    ids_h = [f"customer-{i}" for i in range(rows - shared, 2 * rows - shared)]
    parties = {
        "guest": PartyData("guest", np.array(ids_g), np.zeros((rows, 0)), np.zeros(rows)),
        "host-0": PartyData("host-0", np.array(ids_h), np.zeros((rows, 0))),
    }
    net = LocalNetwork(list(parties))
    t = time.perf_counter()
    out = run_parties(net, Psi(seed=0).programs(parties))
    secs = time.perf_counter() - t
    t = time.perf_counter()
    plain = set(ids_g) & set(ids_h)
    plain_secs = time.perf_counter() - t
    assert set(out["guest"].tolist()) == plain and len(out["host-0"]) == shared
    row = {
        "psi_rows": rows,
        "shared": shared,
        "psi_s": secs,
        "psi_bytes": net.bytes_sent(),
        "plain_join_s": plain_secs,
        "plain_id_bytes": sum(len(i.encode()) for i in ids_h),
    }
    print(json.dumps(row), flush=True)
    return row


def run(name, xtr, ytr, xte, yte, columns, proto, full_rows):
    parties = {p.name: p for p in split_columns(xtr, ytr, columns)}
    net = LocalNetwork([*parties, "arbiter"])
    t = time.perf_counter()
    models = run_parties(net, proto.programs(parties))
    secs = (time.perf_counter() - t) / proto.epochs
    t = time.perf_counter()
    plain = plaintext_vertical(parties, proto)
    plain_secs = (time.perf_counter() - t) / proto.epochs
    test = {p.name: p for p in split_columns(xte, yte, columns)}
    prob = run_parties(LocalNetwork(list(test)), HeteroPredict(models=models).programs(test))[
        "guest"
    ]
    ref = central(xtr, ytr, proto)
    ref_prob = 1 / (1 + np.exp(-(np.hstack([xte, np.ones((len(xte), 1))]) @ ref)))
    got = np.concatenate([models[p].weights for p in parties] + [[models["guest"].intercept]])
    row = {
        "dataset": name,
        "parties": len(columns),
        "train_rows": len(xtr),
        "key_bits": proto.key_bits,
        "epochs": proto.epochs,
        "acc": float(((prob > 0.5) == (yte == 1)).mean()),
        "auc": float(roc_auc_score(yte, prob)),
        "ref_acc": float(((ref_prob > 0.5) == (yte == 1)).mean()),
        "ref_auc": float(roc_auc_score(yte, ref_prob)),
        "max_weight_diff": float(np.abs(got - ref).max()),
        "s_per_epoch": secs,
        "plain_s_per_epoch": plain_secs,
        "bytes_per_epoch": net.bytes_sent() / proto.epochs,
        "plain_bytes": plain.bytes_sent() / proto.epochs,
        "full_rows": full_rows,
        "full_epoch_s_extrapolated": secs * full_rows / len(xtr),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--key-bits", type=int, nargs="*", default=[1024, 2048])
    ap.add_argument("--rows", type=int, default=2000, help="subsample of the 100k table")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--psi-rows", type=int, default=100_000)
    ap.add_argument("--datasets", nargs="*", default=["breast", "generated"])
    ap.add_argument("--out", type=Path, default=RESULTS / "vertical_lr.jsonl")
    args = ap.parse_args()
    if not 0 < args.rows <= 80_000:
        raise SystemExit("--rows must be in 1..80000 (the generated table's training rows)")
    rows = [psi(args.psi_rows)] if args.psi_rows else []

    x, y = load_breast_cancer(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order].astype(np.float64)
    x = (x - x[:455].mean(0)) / x[:455].std(0)
    cancer = (x[:455], y[:455], x[455:], y[455:])

    xg, yg = make_classification(n_samples=100_000, n_features=30, n_informative=12, random_state=0)
    xg = (xg - xg.mean(0)) / xg.std(0)
    yg = yg.astype(np.float64)
    test = slice(80_000, None)
    sub = slice(0, args.rows)

    for bits in args.key_bits or []:
        epochs = args.epochs if bits == min(args.key_bits) else 1
        proto = HeteroLR(epochs=epochs, batch_size=64, lr=0.3, key_bits=bits, seed=0)
        split2 = [list(range(10)), list(range(10, 30))]
        split3 = [list(range(6)), list(range(6, 18)), list(range(18, 30))]
        if "breast" in args.datasets:
            rows.append(run("breast_cancer", *cancer, split2, proto, 455))
            rows.append(run("breast_cancer", *cancer, split3, proto, 455))
        if "generated" in args.datasets:
            gen = (xg[sub], yg[sub], xg[test], yg[test])
            rows.append(run("generated_100k", *gen, split2, proto, 80_000))
    stamp = {
        "time": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "load_avg_1m": os.getloadavg()[0],
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        for r in rows:
            f.write(json.dumps(r | stamp) + "\n")


if __name__ == "__main__":
    main()
