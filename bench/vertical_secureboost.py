"""SecureBoost against the same boosting in plaintext (and scikit-learn's), in one run.

Cases (rows split column-wise; guest first; 75/25 train/test split, seed 0):

    breast-fate     breast cancer, guest 10 columns + 1 host 20 columns, 50 trees, depth 3,
                    learning rate 0.1: FATE's hetero-SBT quality benchmark setting
                    (examples/benchmark_quality/hetero_sbt/fate_sbt_binary.yaml)
    breast-3party   breast cancer, guest / host-0 / host-1 with 10 columns each, 5 trees, lr 0.3
    generated       make_classification, 100,000 rows x 30 columns (guest 10, 2 hosts x 10):
                    plaintext on all rows; SecureBoost on a --fed-rows subsample (plaintext again
                    on that subsample for the ratios; ``--fed-rows 75000``: all training rows),
                    ``--generated-trees`` trees (2)

Per case: seconds and bytes per tree (SecureBoost: wall time of run_parties over LocalNetwork,
every message encoded as it would travel; bytes of all frames), the same for fit_plain, their
ratio, test AUC of both (equal: the trees are identical) and of scikit-learn's
HistGradientBoostingClassifier with the same depth, rate, trees and bins. 32 bins, lambda 1,
1024-bit Paillier keys. Appends to ``bench/results/vertical_secureboost.jsonl`` (with the time
and the load average).

    python bench/vertical_secureboost.py [--fed-rows 5000] [--generated-trees 2]
        [--cases breast-3party ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.datasets import load_breast_cancer, make_classification
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score

from fedfleet.vertical import (
    LocalNetwork,
    SecureBoost,
    fit_plain,
    predict_plain,
    prediction_programs,
    run_parties,
    split_columns,
)

RESULTS = Path(__file__).resolve().parent / "results"


def _split(x: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[np.ndarray, ...]:
    order = np.random.default_rng(seed).permutation(len(y))
    cut = len(y) * 3 // 4
    tr, te = order[:cut], order[cut:]
    return x[tr], y[tr].astype(np.float64), x[te], y[te].astype(np.float64)


def run_case(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    columns: list[list[int]],
    s: SecureBoost,
    fed_rows: int | None = None,
) -> dict[str, Any]:
    x_tr, y_tr, x_te, y_te = _split(x, y)
    row: dict[str, Any] = {"case": name, "rows": len(y), "trees": s.trees, "depth": s.max_depth}
    t = time.perf_counter()
    trees, edges, base = fit_plain([x_tr[:, c] for c in columns], y_tr, s)
    row["plain_s_per_tree_all_rows"] = (time.perf_counter() - t) / s.trees
    row["plain_auc_all_rows"] = roc_auc_score(
        y_te, predict_plain(trees, edges, base, [x_te[:, c] for c in columns])
    )
    sk = HistGradientBoostingClassifier(
        max_iter=s.trees,
        learning_rate=s.learning_rate,
        max_depth=s.max_depth,
        max_bins=s.bins,
        l2_regularization=s.reg_lambda,
        min_samples_leaf=1,
        early_stopping=False,
    ).fit(x_tr, y_tr)
    row["sklearn_auc_all_rows"] = roc_auc_score(y_te, sk.decision_function(x_te))
    if fed_rows is not None and fed_rows < len(y_tr):
        x_tr, y_tr = x_tr[:fed_rows], y_tr[:fed_rows]
        row["fed_rows"] = fed_rows
    else:
        row["fed_rows"] = len(y_tr)
    train = {p.name: p for p in split_columns(x_tr, y_tr, columns)}
    test = {p.name: p for p in split_columns(x_te, y_te, columns)}
    t = time.perf_counter()
    trees, edges, base = fit_plain([p.x for p in train.values()], y_tr, s)
    plain_s = time.perf_counter() - t
    plain_scores = predict_plain(trees, edges, base, [p.x for p in test.values()])
    net = LocalNetwork(list(train))
    t = time.perf_counter()
    out = run_parties(net, s.programs(train))
    fed_s = time.perf_counter() - t
    hosts = {k: v for k, v in out.items() if k != s.guest}
    pnet = LocalNetwork(list(test))
    t = time.perf_counter()
    scores = run_parties(pnet, prediction_programs(out[s.guest], hosts, test))[s.guest]
    row |= {
        "fed_s_per_tree": fed_s / s.trees,
        "plain_s_per_tree": plain_s / s.trees,
        "time_ratio": fed_s / plain_s,
        "fed_bytes_per_tree": net.bytes_sent() / s.trees,
        "plain_bytes_per_tree": 0,
        "predict_s": time.perf_counter() - t,
        "predict_bytes": pnet.bytes_sent(),
        "fed_auc": roc_auc_score(y_te, scores),
        "plain_auc": roc_auc_score(y_te, plain_scores),
        "identical_scores": bool(np.array_equal(scores, plain_scores)),
        "identical_trees": [t.weight for t in out[s.guest].trees] == [t.weight for t in trees],
    }
    return row


def primitives(key_bits: int = 1024, count: int = 400) -> dict[str, float]:
    """Microseconds per Paillier operation SecureBoost does, and the alternatives it avoids."""
    import gmpy2
    import phe

    from fedfleet.vertical._secureboost import _encrypt

    public, private = phe.paillier.generate_paillier_keypair(n_length=key_bits)
    values = [(1 << 100) + i for i in range(count)]

    def timed(fn: Any) -> float:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) / count * 1e6

    cipher = _encrypt(public, private, values)
    numbers = [phe.EncryptedNumber(public, c) for c in cipher]
    nsq, mp = gmpy2.mpz(public.nsquare), [gmpy2.mpz(c) for c in cipher]
    lift = gmpy2.mpz(2) ** 120

    def add_gmpy2() -> None:
        acc = gmpy2.mpz(1)
        for c in mp:
            acc = acc * c % nsq

    def add_phe() -> None:
        acc = numbers[0]
        for c in numbers[1:]:
            acc = acc + c

    return {
        "encrypt_phe_us": timed(lambda: [public.raw_encrypt(v) for v in values]),
        "encrypt_crt_us": timed(lambda: _encrypt(public, private, values)),
        "decrypt_us": timed(lambda: [private.raw_decrypt(c) for c in cipher]),
        "add_gmpy2_us": timed(add_gmpy2),
        "add_phe_EncryptedNumber_us": timed(add_phe),
        "shift_120_bits_us": timed(lambda: [gmpy2.powmod(c, lift, nsq) for c in mp]),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fed-rows", type=int, default=5000)
    ap.add_argument("--generated-trees", type=int, default=2)
    ap.add_argument("--cases", nargs="*", default=["breast-3party", "breast-fate", "generated"])
    ap.add_argument("--out", type=Path, default=RESULTS / "vertical_secureboost.jsonl")
    args = ap.parse_args()
    x, y = load_breast_cancer(return_X_y=True)
    common = dict(bins=32, max_depth=3, key_bits=1024)
    rows: list[dict[str, Any]] = [{"case": "primitives", **primitives()}]
    print(json.dumps(rows[-1]), flush=True)
    for case in args.cases:
        if case == "breast-fate":
            s = SecureBoost(trees=50, learning_rate=0.1, **common)
            rows.append(run_case(case, x, y, [list(range(10)), list(range(10, 30))], s))
        elif case == "breast-3party":
            s = SecureBoost(trees=5, learning_rate=0.3, **common)
            cols = [list(range(0, 10)), list(range(10, 20)), list(range(20, 30))]
            rows.append(run_case(case, x, y, cols, s))
        elif case == "generated":
            gx, gy = make_classification(
                100_000, 30, n_informative=15, n_redundant=5, flip_y=0.05, random_state=0
            )
            s = SecureBoost(trees=args.generated_trees, learning_rate=0.3, **common)
            cols = [list(range(0, 10)), list(range(10, 20)), list(range(20, 30))]
            rows.append(run_case(case, gx, gy, cols, s, fed_rows=args.fed_rows))
        print(json.dumps(rows[-1]), flush=True)
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
    print(
        "| case | fed rows | trees | s/tree fed | s/tree plain | ratio | MB/tree "
        "| AUC fed = plain | sklearn AUC |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows[1:]:
        print(
            f"| {r['case']} | {r['fed_rows']} | {r['trees']} | {r['fed_s_per_tree']:.2f} | "
            f"{r['plain_s_per_tree']:.3f} | {r['time_ratio']:.0f}x | "
            f"{r['fed_bytes_per_tree'] / 1e6:.2f} | {r['fed_auc']:.4f} "
            f"({'identical' if r['identical_scores'] else 'DIFFERENT'}) | "
            f"{r['sklearn_auc_all_rows']:.4f} |"
        )


if __name__ == "__main__":
    main()
