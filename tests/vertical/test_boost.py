"""fit_plain against a brute-force oracle: every split is the best cut of its node's rows."""

from __future__ import annotations

import numpy as np
import pytest

from fedfleet.vertical import BoostSettings, fit_plain, predict_plain

datasets = pytest.importorskip("sklearn.datasets")


def _bins(x: np.ndarray, edges: list[np.ndarray]) -> np.ndarray:
    return np.stack([np.searchsorted(e, x[:, j], side="left") for j, e in enumerate(edges)], 1)


def test_every_split_is_the_best_cut_of_its_rows_and_leaves_are_newton_steps() -> None:
    x, y = datasets.load_breast_cancer(return_X_y=True)
    y = y.astype(np.float64)
    xs = [x[:, :7], x[:, 7:30]]
    s = BoostSettings(trees=3, max_depth=4, bins=10, learning_rate=0.3, reg_lambda=2.0)
    trees, edges, base = fit_plain(xs, y, s)
    binned = [_bins(xp, list(e)) for xp, e in zip(xs, edges, strict=True)]
    score = np.full(len(y), base)
    checked = 0
    for tree in trees:
        p = 1 / (1 + np.exp(-score))
        qg, qh = np.rint((p - y) * 2.0**32), np.rint(p * (1 - p) * 2.0**32)
        g, h = qg / 2.0**32, qh / 2.0**32  # exact: the integers are below 2^53
        rows_of = {0: np.ones(len(y), dtype=bool)}
        for node in range(len(tree.party)):
            rows = rows_of[node]
            G, H = g[rows].sum(), h[rows].sum()
            if tree.party[node] == -1:
                assert tree.weight[node] == pytest.approx(-0.3 * G / (H + 2.0), rel=1e-9)
                continue
            best = -np.inf
            for bp, bx in enumerate(binned):
                for f in range(bx.shape[1]):
                    for b in range(len(edges[bp][f])):
                        left = rows & (bx[:, f] <= b)
                        right = rows & ~(bx[:, f] <= b)
                        hl, hr = h[left].sum(), h[right].sum()
                        if not left.any() or not right.any() or min(hl, hr) < 1.0:
                            continue
                        gl, gr = g[left].sum(), g[right].sum()
                        gain = gl**2 / (hl + 2) + gr**2 / (hr + 2) - G**2 / (H + 2)
                        best = max(best, 0.5 * gain)
            f, b, bp = tree.feature[node], tree.bin[node], tree.party[node]
            left = rows & (binned[bp][:, f] <= b)
            hl, hr = h[left].sum(), h[rows & ~left].sum()
            gl, gr = g[left].sum(), g[rows & ~left].sum()
            chosen = 0.5 * (gl**2 / (hl + 2) + gr**2 / (hr + 2) - G**2 / (H + 2))
            assert chosen == pytest.approx(best, rel=1e-9) and chosen > 0
            rows_of[tree.left[node]], rows_of[tree.right[node]] = left, rows & ~left
            checked += 1
        score = score + predict_plain([tree], edges, 0.0, xs)
    assert checked >= 3 * 4  # deep trees: histogram subtraction was used below every root
    assert {p for t in trees for p in t.party} == {-1, 0, 1}
