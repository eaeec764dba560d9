"""Histogram gradient-boosted trees in plaintext: the arithmetic SecureBoost reproduces exactly.

Everything SecureBoost (:mod:`fedfleet.vertical._secureboost`) computes in the clear lives here,
and so does :func:`fit_plain`, the same algorithm run centrally on all columns, which is both
the baseline of the benchmarks and the oracle of the tests.

- **Bins** (:func:`quantile_edges`, :func:`to_bins`): per feature, the distinct values of
  ``quantile(x, i / bins)``, i = 1..bins-1; a value's bin is the number of edges below it
  (``searchsorted(edges, x, "left")``), so bin <= b exactly when x <= edges[b].
- **Fixed point** (:func:`quantize`): gradients and hessians become integers
  ``round(v 2^frac_bits)``; every sum over records (per bin, per node) is then an exact integer,
  whether a party adds integers in the clear or Paillier adds them under encryption, so both
  paths see the same sums and choose the same splits.
- **Split gain** (XGBoost, Chen & Guestrin 2016), from the integer sums scaled by 2^-f:
  ``gain = 1/2 (G_L^2 / (H_L + lambda) + G_R^2 / (H_R + lambda) - G^2 / (H + lambda)) - gamma``,
  over the cuts "bin <= b" with ``H_L, H_R >= min_child_weight`` and both sides non-empty; the
  first maximum in (party, feature, bin) order wins, and a node splits only when it is > 0.
- **Leaf weight**: ``-learning_rate G / (H + lambda)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "BoostSettings",
    "PlainTree",
    "best_split",
    "fit_plain",
    "gradients",
    "histogram",
    "leaf_weight",
    "predict_plain",
    "quantile_edges",
    "quantize",
    "to_bins",
]

Objective = Literal["binary", "regression"]


@dataclass(frozen=True, kw_only=True)
class BoostSettings:
    """The hyper-parameters of the boosting (shared by SecureBoost and :func:`fit_plain`)."""

    trees: int = 5  # boosting rounds
    max_depth: int = 3  # levels of splits per tree
    learning_rate: float = 0.3  # shrinkage of each leaf weight
    bins: int = 32  # at most this many quantile bins per feature
    min_child_weight: float = 1.0  # least hessian sum a child may hold
    reg_lambda: float = 1.0  # L2 penalty on leaf weights (XGBoost's lambda)
    gamma: float = 0.0  # least loss reduction a split must bring
    objective: Objective = "binary"  # logistic loss on {0, 1}, or squared error
    frac_bits: int = 32  # fixed-point fraction bits of gradients and hessians


def quantile_edges(column: np.ndarray, bins: int) -> np.ndarray:
    """The bin edges of one feature: distinct quantiles at i / bins (see the module doc)."""
    qs = np.quantile(column, np.arange(1, bins) / bins, method="linear")
    return np.unique(qs)


def to_bins(x: np.ndarray, edges: Sequence[np.ndarray]) -> np.ndarray:
    """Every value's bin, ``(rows, features)`` int32."""
    out = np.empty(x.shape, dtype=np.int32)
    for j, e in enumerate(edges):
        out[:, j] = np.searchsorted(e, x[:, j], side="left")
    return out


def gradients(score: np.ndarray, y: np.ndarray, objective: Objective) -> tuple[np.ndarray, ...]:
    """First and second derivatives of the loss at the raw scores (logit or value)."""
    if objective == "binary":
        p = 1.0 / (1.0 + np.exp(-score))
        return p - y, p * (1.0 - p)
    return score - y, np.ones_like(score)


def base_score(y: np.ndarray, objective: Objective) -> float:
    """The starting raw score: the log-odds of the mean label, or the mean."""
    m = float(np.mean(y))
    if objective == "binary":
        m = min(max(m, 1e-6), 1 - 1e-6)
        return float(np.log(m / (1 - m)))
    return m


def quantize(values: np.ndarray, frac_bits: int) -> np.ndarray:
    """``round(values 2^frac_bits)`` as int64."""
    return np.rint(np.asarray(values, dtype=np.float64) * 2.0**frac_bits).astype(np.int64)


def histogram(
    bins: np.ndarray, position: np.ndarray, nodes: int, qg: np.ndarray, qh: np.ndarray, width: int
) -> np.ndarray:
    """Per node, feature and bin: (count, sum qg, sum qh) as exact int64, ``(nodes, F, width,
    3)``; rows with ``position < 0`` are in no open node."""
    features = bins.shape[1]
    out = np.zeros((nodes * features * width, 3), dtype=np.int64)
    rows = np.flatnonzero(position >= 0)
    if len(rows) and features:
        idx = (position[rows, None].astype(np.int64) * features + np.arange(features)) * width
        idx = (idx + bins[rows]).ravel()
        np.add.at(out[:, 0], idx, 1)
        np.add.at(out[:, 1], idx, np.repeat(qg[rows], features))
        np.add.at(out[:, 2], idx, np.repeat(qh[rows], features))
    return out.reshape(nodes, features, width, 3)


def select(position: np.ndarray, wanted: Sequence[int]) -> np.ndarray:
    """``position`` renumbered to the nodes ``wanted`` (j for ``wanted[j]``, -1 elsewhere)."""
    lookup = np.full(int(position.max(initial=-1)) + 2, -1, dtype=np.int64)
    lookup[np.asarray(wanted, dtype=np.int64)] = np.arange(len(wanted))
    return lookup[position]  # position -1 reads the last entry, which stays -1


def best_split(
    hist: np.ndarray, n_bins: np.ndarray, total: tuple[int, int, int], s: BoostSettings
) -> tuple[float, int, int]:
    """The best cut of one node from its ``(F, width, 3)`` histogram: (gain, feature, bin), or
    (-inf, -1, -1) when no cut is allowed."""
    features, width = hist.shape[:2]
    if features == 0 or width < 2:
        return -np.inf, -1, -1
    scale = 2.0**-s.frac_bits
    cum = np.cumsum(hist, axis=1)[:, :-1]  # left side of "bin <= b"
    n_l, g_l, h_l = cum[..., 0], cum[..., 1], cum[..., 2]
    n_r, g_r, h_r = total[0] - n_l, total[1] - g_l, total[2] - h_l
    gl, hl, gr, hr = g_l * scale, h_l * scale, g_r * scale, h_r * scale
    g, h = total[1] * scale, total[2] * scale
    lam = s.reg_lambda
    gain = 0.5 * (gl * gl / (hl + lam) + gr * gr / (hr + lam) - g * g / (h + lam)) - s.gamma
    ok = (n_l > 0) & (n_r > 0) & (hl >= s.min_child_weight) & (hr >= s.min_child_weight)
    ok &= np.arange(width - 1)[None, :] < (np.asarray(n_bins)[:, None] - 1)
    gain = np.where(ok, gain, -np.inf)
    k = int(np.argmax(gain))
    f, b = divmod(k, width - 1)
    if not np.isfinite(gain[f, b]):
        return -np.inf, -1, -1
    return float(gain[f, b]), f, b


def leaf_weight(g_sum: int, h_sum: int, s: BoostSettings) -> float:
    scale = 2.0**-s.frac_bits
    return -s.learning_rate * (g_sum * scale) / (h_sum * scale + s.reg_lambda)


@dataclass(frozen=True)
class PlainTree:
    """A tree as parallel lists, node 0 the root: ``party`` of the split (-1 at leaves), its
    ``feature`` and ``bin`` in that party's columns (cut: bin <= b goes left), ``left`` and
    ``right`` children, ``weight`` at leaves."""

    party: tuple[int, ...]
    feature: tuple[int, ...]
    bin: tuple[int, ...]
    left: tuple[int, ...]
    right: tuple[int, ...]
    weight: tuple[float, ...]


# Every party's histograms (len(wanted), F, width, 3) ints, and its bins per feature, of the
# open nodes `wanted` (their indices in the level), given each row's open node (-1: none)
HistFn = Callable[[np.ndarray, list[int]], list[tuple[np.ndarray, np.ndarray]]]
# Apply a level's chosen cuts [(open node's index in the level, party, feature, bin)]: one
# left mask (rows,) per cut, True for the node's rows that go left
CutFn = Callable[[list[tuple[int, int, int, int]]], list[np.ndarray]]


def grow_tree(
    qg: np.ndarray, qh: np.ndarray, s: BoostSettings, hists: HistFn, cut: CutFn
) -> tuple[PlainTree, np.ndarray]:
    """One tree, level by level: ``hists(position, wanted)`` gives every party's histograms of
    some open nodes, ``cut`` applies the chosen cuts (where the feature's owner is); returns the
    tree and each row's leaf weight.

    Below the root, of two siblings only the one with fewer rows is summed (by the parties: the
    costly encrypted part); the other is its parent's histogram minus it, exact in integers
    (LightGBM's histogram subtraction)."""
    n = len(qg)
    party: list[int] = [-1]
    feature: list[int] = [-1]
    bin_: list[int] = [-1]
    left: list[int] = [-1]
    right: list[int] = [-1]
    weight: list[float] = [0.0]
    node_of = np.zeros(n, dtype=np.int64)  # each row's current node
    open_nodes = [0]
    parent_of: dict[int, int] = {}
    sibling: dict[int, int] = {}
    parent_hist: dict[int, list[np.ndarray]] = {}  # per party, of the nodes split last level
    for _ in range(s.max_depth):
        local = {node: k for k, node in enumerate(open_nodes)}
        position = np.full(n, -1, dtype=np.int64)
        for node, k in local.items():
            position[node_of == node] = k
        count = np.bincount(position[position >= 0], minlength=len(open_nodes))
        wanted = [
            k
            for node, k in local.items()
            if node not in parent_of
            or (count[k], node) < (count[local[sibling[node]]], sibling[node])
        ]
        per_party = []
        for p, (some, n_bins) in enumerate(hists(position, wanted)):
            hist = np.zeros((len(open_nodes), *some.shape[1:]), dtype=np.int64)
            hist[wanted] = some
            for node, k in local.items():
                if k not in wanted:
                    hist[k] = parent_hist[parent_of[node]][p] - hist[local[sibling[node]]]
            per_party.append((hist, n_bins))
        cuts: list[tuple[int, int, int, int, int]] = []
        for node, k in local.items():
            rows = position == k
            total = (int(rows.sum()), int(qg[rows].sum()), int(qh[rows].sum()))
            best = (-np.inf, -1, -1, -1)
            for p, (hist, n_bins) in enumerate(per_party):
                gain, f, b = best_split(hist[k], n_bins, total, s)
                if gain > best[0]:
                    best = (gain, p, f, b)
            if best[0] > 0:
                cuts.append((node, k, best[1], best[2], best[3]))
        masks = cut([c[1:] for c in cuts])
        next_open: list[int] = []
        parent_hist = {node: [h[k] for h, _ in per_party] for node, k, *_ in cuts}
        for (node, _, p, f, b), mask in zip(cuts, masks, strict=True):
            party[node], feature[node], bin_[node] = p, f, b
            for side in (True, False):
                child = len(party)
                for lst, v in ((party, -1), (feature, -1), (bin_, -1), (left, -1), (right, -1)):
                    lst.append(v)
                weight.append(0.0)
                (left if side else right)[node] = child
                node_of[(node_of == node) & (mask == side)] = child
                next_open.append(child)
                parent_of[child] = node
            sibling[left[node]], sibling[right[node]] = right[node], left[node]
        open_nodes = next_open
        if not open_nodes:
            break
    leaf_of_row = np.zeros(n, dtype=np.float64)
    for node in range(len(party)):
        if party[node] == -1:
            rows = node_of == node
            weight[node] = leaf_weight(int(qg[rows].sum()), int(qh[rows].sum()), s)
            leaf_of_row[rows] = weight[node]
    tree = PlainTree(
        tuple(party), tuple(feature), tuple(bin_), tuple(left), tuple(right), tuple(weight)
    )
    return tree, leaf_of_row


def fit_plain(
    xs: Sequence[np.ndarray], y: np.ndarray, s: BoostSettings
) -> tuple[list[PlainTree], list[list[np.ndarray]], float]:
    """The same boosting centrally, the columns of party k in ``xs[k]`` (all in one place):
    the trees, each party's bin edges and the base score."""
    edges = [[quantile_edges(x[:, j], s.bins) for j in range(x.shape[1])] for x in xs]
    binned = [to_bins(x, e) for x, e in zip(xs, edges, strict=True)]
    n_bins = [np.array([len(e) + 1 for e in es], dtype=np.int64) for es in edges]
    widths = [max([int(v) for v in nb] + [1]) for nb in n_bins]
    base = base_score(y, s.objective)
    score = np.full(len(y), base)
    trees = []
    for _ in range(s.trees):
        g, h = gradients(score, y, s.objective)
        qg, qh = quantize(g, s.frac_bits), quantize(h, s.frac_bits)

        def hists(
            position: np.ndarray, wanted: list[int], qg: np.ndarray = qg, qh: np.ndarray = qh
        ) -> list[tuple[np.ndarray, np.ndarray]]:
            only = select(position, wanted)
            return [
                (histogram(b, only, len(wanted), qg, qh, w), nb)
                for b, nb, w in zip(binned, n_bins, widths, strict=True)
            ]

        def cut(cuts: list[tuple[int, int, int, int]]) -> list[np.ndarray]:
            return [binned[p][:, f] <= b for _, p, f, b in cuts]

        tree, leaf = grow_tree(qg, qh, s, hists, cut)
        score = score + leaf
        trees.append(tree)
    return trees, edges, base


def predict_plain(
    trees: Sequence[PlainTree],
    edges: Sequence[Sequence[np.ndarray]],
    base: float,
    xs: Sequence[np.ndarray],
) -> np.ndarray:
    """Raw scores (logits or values) of :func:`fit_plain`'s model on rows split as in ``xs``."""
    binned = [to_bins(x, e) for x, e in zip(xs, edges, strict=True)]
    n = len(xs[0])
    score = np.full(n, base)
    for t in trees:
        node = np.zeros(n, dtype=np.int64)
        for _ in range(len(t.party)):
            parties = np.asarray(t.party)[node]
            if (parties == -1).all():
                break
            for i in np.flatnonzero(parties >= 0):
                k = node[i]
                go_left = binned[t.party[k]][i, t.feature[k]] <= t.bin[k]
                node[i] = t.left[k] if go_left else t.right[k]
        score = score + np.asarray(t.weight)[node]
    return score
