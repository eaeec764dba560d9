"""SecureBoost: gradient-boosted trees over parties holding different columns (Cheng et al. 2021).

The guest holds the labels (and maybe features), hosts hold features; rows are aligned (same
records, same order: :func:`fedfleet.vertical.align`). Per tree:

1. the guest computes gradients g and hessians h (logistic or squared loss), turns them into
   integers ``round(v 2^frac_bits)`` (:func:`fedfleet.vertical._boost.quantize`), packs each
   row's ``(g + offset, h, 1)`` into one plaintext (three slots wide enough that no sum over
   the rows carries from one into the next) and sends its Paillier encryption to every host;
2. level by level, the guest tells the hosts which open node each row is in and which nodes it
   wants summed (of two siblings the smaller; the other is its parent minus it, in the clear at
   the guest); each host returns, per wanted node, feature and (locally computed quantile) bin,
   the product of the rows' ciphertexts, i.e. the encryption of the bin's (sum g, sum h,
   count), several bins shifted into one ciphertext to save decryptions;
3. the guest decrypts, unpacks, and picks each node's best cut over every party's features
   with XGBoost's gain; for a host's cut it sends that host only (node, feature, bin). The host
   keeps the threshold under a split id of its own (its lookup table) and returns the id and
   the node's rows that go left.

Because every sum is an exact integer, the federated model is exactly the model
:func:`fit_plain` trains centrally on all columns, tree for tree (the tests check it): both
round g and h to multiples of 2^-frac_bits (2^-32 by default) the same way, and nothing else
differs.

With a :class:`~fedfleet.vertical._progress.PartyProgress` every party checkpoints after each
tree (:mod:`fedfleet.vertical._secureboost_state`) and a resumed run grows the remaining trees,
ending bit-identical to one never stopped.

Prediction (:func:`prediction_programs`, in :mod:`fedfleet.vertical._secureboost_model` with
the model's two sides): the guest walks every tree a level at a time, asking
each host for the direction of the rows that sit at its nodes (split id, row).

Threat model: honest-but-curious parties, with the guest holding the Paillier secret key.
- Hosts see ciphertexts of g and h only, never labels, and learn the row partition at every
  node (which rows share a node: the rows of a level are sent to them), the number of trees
  and levels, the packing width (so the power of two above max |g|) and, in prediction, which
  rows reach their nodes.
- The guest sees no host feature value or threshold, but learns per node and host feature
  the count and the sums of g and h in each bin, and the left-instance set of each host cut:
  together an ordering of the rows by each host feature at bin granularity (and, with distinct
  gradients, the bin of each row). This is the protocol's leakage as published (Cheng et al.
  discuss it); their mitigation, building the first tree on the guest's features only, is
  not implemented.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np

from fedfleet._codec import Message
from fedfleet._extras import require
from fedfleet.errors import ConfigError, DatasetError
from fedfleet.vertical._boost import (
    BoostSettings,
    PlainTree,
    base_score,
    gradients,
    grow_tree,
    histogram,
    quantile_edges,
    quantize,
    select,
    to_bins,
)
from fedfleet.vertical._channel import Channel, PartyError, array_to_ints, ints_to_array
from fedfleet.vertical._holdout import (
    classification_metrics,
    regression_metrics,
    train_test,
)
from fedfleet.vertical._party import PartyData
from fedfleet.vertical._progress import PartyProgress
from fedfleet.vertical._secureboost_model import (
    Program,
    SecureBoostHostModel,
    SecureBoostModel,
    depth_of,
    guest_predict,
    host_predict,
    prediction_programs,
)
from fedfleet.vertical._secureboost_state import (
    guest_arrays,
    guest_state,
    host_arrays,
    host_table,
)

__all__ = [
    "SecureBoost",
    "SecureBoostHostModel",
    "SecureBoostModel",
    "prediction_programs",
]


@dataclass(frozen=True, kw_only=True)
class SecureBoost(BoostSettings):
    """SecureBoost's settings (those of :class:`BoostSettings`, plus the key).

    Attributes:
        guest: the label holder's name.
        key_bits: the Paillier modulus size (2048 for deployments; 1024 keeps tests fast).
        keys: a ``(public, private)`` phe key pair to use instead of a fresh one (tests, or a
            key the guest keeps across runs); never leaves the guest.
        test_fraction: share of the aligned rows held out (the same rows at every party, from
            ``seed``): the parties train on the rest, then score them with the prediction
            exchange, and the guest's model carries the metrics (0: every row trains).
        seed: draws the held-out rows.

    Example::

        parties = {p.name: p for p in align(split_columns(x, y, [[0, 1], [2, 3]]), ids)}
        net = LocalNetwork(list(parties))
        out = run_parties(net, SecureBoost(trees=3).programs(parties))
        model, host_models = out["guest"], {k: v for k, v in out.items() if k != "guest"}
    """

    guest: str = "guest"
    key_bits: int = 2048
    keys: tuple[Any, Any] | None = field(default=None, repr=False, compare=False)
    test_fraction: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.trees < 1 or self.max_depth < 1 or self.bins < 2:
            raise ConfigError(
                f"SecureBoost needs trees >= 1, max_depth >= 1, bins >= 2; got trees="
                f"{self.trees}, max_depth={self.max_depth}, bins={self.bins}"
            )
        if self.key_bits < 512:
            raise ConfigError(f"SecureBoost key_bits={self.key_bits} is too small; use >= 1024")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ConfigError(
                f"SecureBoost test_fraction must be in [0, 1), got {self.test_fraction}"
            )

    @property
    def epochs(self) -> int:
        """The run's checkpoints: one per tree (a tree is a vertical run's "epoch")."""
        return self.trees

    def programs(
        self,
        parties: Mapping[str, PartyData],
        progress: Mapping[str, PartyProgress] | None = None,
    ) -> dict[str, Program]:
        """The guest's program (returns :class:`SecureBoostModel`) and each host's (returns
        its :class:`SecureBoostHostModel`); ``progress``: where each party checkpoints after
        every tree and learns where a resumed run starts (the same tree at every party)."""
        if self.guest not in parties or parties[self.guest].y is None:
            raise DatasetError(f"SecureBoost needs the guest {self.guest!r} with labels")
        hosts = [p for p in parties if p != self.guest]  # in order, as a deployed roster
        n = len(parties[self.guest].ids)
        for h in hosts:
            if len(parties[h].ids) != n:
                raise DatasetError(
                    f"party {h} holds {len(parties[h].ids)} rows, the guest {n}; align first"
                )
            if parties[h].y is not None:
                raise DatasetError(f"host {h} holds labels; only the guest may")
        roster = [self.guest, *hosts]
        at = dict(progress or {})
        return {name: self.program(parties[name], roster, at.get(name)) for name in roster}

    def program(
        self, data: PartyData, roster: Sequence[str], progress: PartyProgress | None = None
    ) -> Program:
        """The program of the party holding ``data``, knowing the roster's names (the guest
        first, then the hosts in the order the guest numbers them); ``progress``: where it
        checkpoints after every tree (:mod:`fedfleet.vertical._secureboost_state`) and learns
        how many trees a resumed run has (the guest's Paillier key is drawn afresh: no bit of
        the model depends on it)."""
        if roster[0] != self.guest:
            raise PartyError(
                f"SecureBoost's guest is {self.guest!r}, but the roster starts with {roster[0]!r}"
            )
        if data.name not in roster:
            raise PartyError(f"party {data.name!r} is not in the roster {list(roster)}")
        if data.name == self.guest:
            if data.y is None:
                raise DatasetError(f"SecureBoost needs the guest {self.guest!r} with labels")
            return partial(_evaluated_guest, self, data, list(roster[1:]), progress)
        if data.y is not None:
            raise DatasetError(f"host {data.name} holds labels; only the guest may")
        return partial(_evaluated_host, self, data, progress)


def _slots(qg: np.ndarray, qh: np.ndarray) -> tuple[int, int]:
    """The offset making g non-negative, and the width of a slot holding any sum over rows."""
    n = len(qg)
    offset = 1 << int(np.abs(qg).max()).bit_length()
    width = max(2 * offset * n, (int(qh.max()) + 1) * n, n + 1).bit_length()
    return offset, width


def _loss(score: np.ndarray, y: np.ndarray, objective: str) -> float:
    """The mean training loss at raw scores ``score``: log loss, or squared error."""
    if objective == "binary":
        return float(np.mean(np.logaddexp(0.0, score) - y * score))
    return float(np.mean((score - y) ** 2))


def _guest(
    s: SecureBoost,
    data: PartyData,
    hosts: list[str],
    ch: Channel,
    progress: PartyProgress | None = None,
) -> SecureBoostModel:
    phe = require("phe", feature="SecureBoost")
    assert data.y is not None
    y = np.asarray(data.y, dtype=np.float64)
    done, saved = progress.start() if progress is not None else (0, {})
    public, private = s.keys or phe.paillier.generate_paillier_keypair(n_length=s.key_bits)
    nsq_bytes = (2 * public.n.bit_length() + 7) // 8
    for h in hosts:
        ch.send(h, Message("sb-setup", {"n": str(public.n), "start": done}))
    host_bins = [ch.recv(h, "sb-bins").arrays[0].astype(np.int64) for h in hosts]
    edges = [quantile_edges(data.x[:, j], s.bins) for j in range(data.x.shape[1])]
    binned = to_bins(data.x, edges)
    n_bins = np.array([len(e) + 1 for e in edges], dtype=np.int64)
    width = max([int(v) for v in n_bins] + [1])
    base = base_score(y, s.objective)
    score = np.full(len(y), base)
    trees: list[PlainTree] = []
    losses: list[float] = []
    split_id: dict[tuple[int, int, int], int] = {}  # (host, feature, bin) -> the host's id
    if done:
        trees, score, losses, split_id = guest_state(saved, done, len(y))
    for t in range(done, s.trees):
        g, hess = gradients(score, y, s.objective)
        qg, qh = quantize(g, s.frac_bits), quantize(hess, s.frac_bits)
        offset, slot = _slots(qg, qh)
        if 3 * slot >= public.n.bit_length() - 1:
            raise ConfigError(
                f"SecureBoost: three {slot}-bit slots do not fit a {s.key_bits}-bit key; "
                "lower frac_bits or raise key_bits"
            )
        packed = [
            ((int(a) + offset) << (2 * slot)) | (int(b) << slot) | 1
            for a, b in zip(qg.tolist(), qh.tolist(), strict=True)
        ]
        cipher = ints_to_array(_encrypt(public, private, packed), nsq_bytes)
        # hosts shift several bins' sums into one ciphertext: fewer decryptions (SecureBoost+)
        pack = {"shift": 3 * slot, "per": (public.n.bit_length() - 1) // (3 * slot)}
        for hname in hosts:
            ch.send(hname, Message("sb-gh", pack, [cipher], ["encrypted g, h"]))
        mask = (1 << slot) - 1

        def hists(
            position: np.ndarray,
            wanted: list[int],
            qg: np.ndarray = qg,
            qh: np.ndarray = qh,
            offset: int = offset,
            slot: int = slot,
            mask: int = mask,
            pack: dict[str, int] = pack,
        ) -> list[tuple[np.ndarray, np.ndarray]]:
            body = {"wanted": wanted}
            msg = Message("sb-nodes", body, [position.astype(np.int32)], ["node"])
            for hname in hosts:
                ch.send(hname, msg)
            nodes = len(wanted)
            only = select(position, wanted)
            out = [(histogram(binned, only, nodes, qg, qh, width), n_bins)]
            for hname, nb in zip(hosts, host_bins, strict=True):
                total = nodes * len(nb) * int(nb.max(initial=1))
                packed = array_to_ints(ch.recv(hname, "sb-hist").arrays[0])
                if len(packed) != -(-total // pack["per"]):
                    raise PartyError(
                        f"host {hname} sent {len(packed)} histogram ciphertexts, expected "
                        f"{-(-total // pack['per'])} for {nodes} nodes x {len(nb)} features"
                    )
                plain = [private.raw_decrypt(c) for c in packed]
                sums = _unpack(plain, total, pack["per"], pack["shift"])
                hist = np.zeros((total, 3), dtype=np.int64)
                for i, p in enumerate(sums):
                    count = p & mask
                    hist[i] = (count, (p >> (2 * slot)) - count * offset, (p >> slot) & mask)
                out.append((hist.reshape(nodes, len(nb), -1, 3), nb))
            return out

        def cut(cuts: list[tuple[int, int, int, int]]) -> list[np.ndarray]:
            masks: list[np.ndarray | None] = [None] * len(cuts)
            for i, (_, p, f, b) in enumerate(cuts):
                if p == 0:
                    masks[i] = binned[:, f] <= b
            for k, hname in enumerate(hosts, start=1):
                mine = [i for i, c in enumerate(cuts) if c[1] == k]
                body = {"cuts": [[cuts[i][0], cuts[i][2], cuts[i][3]] for i in mine]}
                ch.send(hname, Message("sb-split", body))
                reply = ch.recv(hname, "sb-left")
                for j, i in enumerate(mine):
                    masks[i] = reply.arrays[0][j]
                    split_id[(k, cuts[i][2], cuts[i][3])] = int(reply.body["ids"][j])
            return [m for m in masks if m is not None]

        tree, leaf = grow_tree(qg, qh, s, hists, cut)
        tree = _with_split_ids(tree, split_id)
        score = score + leaf
        trees.append(tree)
        losses.append(_loss(score, y, s.objective))
        if progress is not None:
            state = guest_arrays(trees, score, losses, split_id)
            progress.epoch_done(t + 1, state, {"loss": losses[-1]})
    model = SecureBoostModel(tuple(trees), tuple(hosts), tuple(edges), base, s.objective, score)
    return replace(model, metrics={"loss": losses})


def _evaluated_guest(
    s: SecureBoost,
    data: PartyData,
    hosts: list[str],
    progress: PartyProgress | None,
    ch: Channel,
) -> SecureBoostModel:
    """Train on the training rows; with held-out rows, tell the hosts how deep the trees go,
    score the held-out rows with them and compute the metrics."""
    train, test = (data.subset(r) for r in train_test(s.seed, len(data.ids), s.test_fraction))
    model = _guest(s, train, hosts, ch, progress)
    metrics: dict[str, Any] = {**model.metrics, "train_rows": len(train.ids)}
    metrics["test_rows"] = len(test.ids)
    if len(test.ids):
        assert test.y is not None
        depth = max((depth_of(t) for t in model.trees), default=0)
        for h in hosts:
            ch.send(h, Message("sb-predict", {"depth": depth}))
        score = guest_predict(model, test, depth, ch)
        if s.objective == "binary":
            metrics.update(classification_metrics(test.y, 1.0 / (1.0 + np.exp(-score))))
        else:
            metrics.update(regression_metrics(test.y, score))
    return replace(model, metrics=metrics)


def _evaluated_host(
    s: SecureBoost, data: PartyData, progress: PartyProgress | None, ch: Channel
) -> SecureBoostHostModel:
    train, test = (data.subset(r) for r in train_test(s.seed, len(data.ids), s.test_fraction))
    model = _host(s, train, ch, progress)
    if len(test.ids):
        depth = int(ch.recv(s.guest, "sb-predict").body["depth"])
        host_predict(model, test, depth, s.guest, ch)
    return model


def _encrypt(public: Any, private: Any, plaintexts: list[int]) -> list[int]:
    """Paillier encryptions ``(1 + n m) r^n mod n^2`` with fresh random r, the costly ``r^n``
    taken mod p^2 and q^2 and recombined (CRT, as only the key's owner can): ~3x faster than
    ``phe``'s ``raw_encrypt``, the same ciphertexts' distribution."""
    gmpy2 = require("gmpy2", feature="SecureBoost")
    n, nsq = gmpy2.mpz(public.n), gmpy2.mpz(public.nsquare)
    p2, q2 = gmpy2.mpz(private.p) ** 2, gmpy2.mpz(private.q) ** 2
    q2_inv = gmpy2.invert(q2, p2)
    draw = secrets.SystemRandom()
    out = []
    for m in plaintexts:
        r = gmpy2.mpz(draw.randrange(1, public.n))
        rp, rq = gmpy2.powmod(r, n, p2), gmpy2.powmod(r, n, q2)
        rn = rq + q2 * ((rp - rq) * q2_inv % p2)
        out.append(int((1 + n * m) % nsq * rn % nsq))
    return out


def _unpack(plain: list[int], total: int, per: int, shift: int) -> list[int]:
    """The ``total`` sums a host packed ``per`` to a ciphertext, first one highest."""
    out: list[int] = []
    mask = (1 << shift) - 1
    for i, p in enumerate(plain):
        k = min(per, total - i * per)
        out.extend((p >> (shift * (k - 1 - j))) & mask for j in range(k))
    return out


def _with_split_ids(t: PlainTree, split_id: dict[tuple[int, int, int], int]) -> PlainTree:
    """The tree with each host cut's (feature, bin) replaced by the host's split id (and -1):
    the guest's copy needs no more to ask the host for a direction."""
    keys = list(zip(t.party, t.feature, t.bin, strict=True))
    return PlainTree(
        t.party,
        tuple(split_id[k] if k[0] > 0 else k[1] for k in keys),
        tuple(-1 if k[0] > 0 else k[2] for k in keys),
        t.left,
        t.right,
        t.weight,
    )


def _host(
    s: SecureBoost, data: PartyData, ch: Channel, progress: PartyProgress | None = None
) -> SecureBoostHostModel:
    gmpy2 = require("gmpy2", feature="SecureBoost")
    done, saved = progress.start() if progress is not None else (0, {})
    setup = ch.recv(s.guest, "sb-setup")
    if int(setup.body.get("start", 0)) != done:
        raise PartyError(
            f"host {data.name} resumes after tree {done}, the guest after tree "
            f"{setup.body.get('start', 0)}; resume every party from the same run"
        )
    nsq = gmpy2.mpz(int(setup.body["n"])) ** 2
    nsq_bytes = (int(nsq).bit_length() + 7) // 8
    edges = [quantile_edges(data.x[:, j], s.bins) for j in range(data.x.shape[1])]
    binned = to_bins(data.x, edges)
    n_bins = np.array([len(e) + 1 for e in edges], dtype=np.int32)
    ch.send(s.guest, Message("sb-bins", {}, [n_bins], ["bins per feature"]))
    features = binned.shape[1]
    width = max([int(v) for v in n_bins] + [1])
    one = gmpy2.mpz(1)
    table_f: list[int] = []
    table_b: list[int] = []
    if done:
        table_f, table_b = host_table(saved, edges, data.name)
    table_t = [float(edges[f][b]) for f, b in zip(table_f, table_b, strict=True)]
    known = {(f, b): i for i, (f, b) in enumerate(zip(table_f, table_b, strict=True))}
    for t in range(done, s.trees):
        gh = ch.recv(s.guest, "sb-gh")
        cipher = [gmpy2.mpz(c) for c in array_to_ints(gh.arrays[0])]
        per, lift = int(gh.body["per"]), gmpy2.mpz(2) ** int(gh.body["shift"])
        for _ in range(s.max_depth):
            msg = ch.recv(s.guest, "sb-nodes")
            position = msg.arrays[0].astype(np.int64)
            wanted = [int(k) for k in msg.body["wanted"]]
            only = select(position, wanted)
            acc = [one] * (len(wanted) * features * width)
            rows = np.flatnonzero(only >= 0)
            idx = (only[rows, None] * features + np.arange(features)) * width + binned[rows]
            # the homomorphic sums: a product of ciphertexts mod n^2 per bin (the bottleneck)
            for r, row_idx in zip(rows.tolist(), idx.tolist(), strict=True):
                c = cipher[r]
                for i in row_idx:
                    acc[i] = acc[i] * c % nsq
            packed = []
            for start in range(0, len(acc), per):
                c = acc[start]
                for a in acc[start + 1 : start + per]:  # c -> Enc(2^shift m_c + m_a)
                    c = gmpy2.powmod(c, lift, nsq) * a % nsq
                packed.append(int(c))
            sums = ints_to_array(packed, nsq_bytes)
            ch.send(s.guest, Message("sb-hist", {}, [sums], ["encrypted histograms"]))
            asked = ch.recv(s.guest, "sb-split").body["cuts"]
            ids, lefts = [], []
            for k, f, b in asked:
                if not (0 <= f < features and 0 <= b < len(edges[f])):
                    raise DatasetError(f"the guest asked host {data.name} for a cut {f}/{b}")
                if (f, b) not in known:  # one split id per distinct cut
                    known[(f, b)] = len(table_f)
                    table_f.append(int(f))
                    table_b.append(int(b))
                    table_t.append(float(edges[f][b]))
                ids.append(known[(f, b)])
                lefts.append((position == k) & (binned[:, f] <= b))
            left = np.array(lefts, dtype=bool).reshape(len(asked), len(position))
            ch.send(s.guest, Message("sb-left", {"ids": ids}, [left], ["left rows"]))
        if progress is not None:
            progress.epoch_done(t + 1, host_arrays(table_f, table_b), {})
    return SecureBoostHostModel(tuple(table_f), tuple(table_t))
