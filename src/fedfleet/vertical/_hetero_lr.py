"""Vertical (hetero) logistic and linear regression with Paillier-protected gradients.

The parties hold the aligned rows (after :class:`fedfleet.vertical.Psi`): the guest the labels
y (and maybe features x_g), each host h features x_h; each keeps its own weights w_g (with the
intercept) and w_h, and the model is z = x_g w_g + b + sum_h x_h w_h. An arbiter holds the
Paillier key (``phe``) and no data. This is FATE's hetero-LR with an arbiter (Yang et al. 2019,
"Federated machine learning: concept and applications"; Hardy et al. 2017). Per mini-batch B:

1. each host sends the guest [[u_h]] = Enc(x_h[B] w_h), encrypted under the arbiter's key;
2. the guest computes the encrypted residual [[d]] from its u_g = x_g[B] w_g + b, its labels and
   the hosts' ciphertexts, and sends [[d]] to every host;
   - logistic loss, by its second-order Taylor expansion at z = 0 (labels y in {-1, +1}):
     log(1 + e^(-yz)) ~ log 2 - yz/2 + z^2/8, whose derivative in z is d = z/4 - y/2;
   - squared loss (z - y)^2 / 2: d = z - y, exact;
3. every party (the guest too: [[d]] hides the hosts' scores from it) computes its encrypted
   gradient [[g_j]] = [[sum_i d_i x_ij]] (ciphertext powers: Paillier is additively
   homomorphic), adds a random mask r_j uniform mod n, and sends [[g_j + r_j]] to the arbiter;
4. the arbiter decrypts and returns g_j + r_j mod n; the party subtracts r_j and steps
   w <- w - lr (g / |B| + l2 w) (no penalty on the intercept).

Mini-batches come from ``seed`` (every party draws the same permutation of the aligned rows per
epoch). Arithmetic is fixed point and exact: each party encodes u and x as round(v 2^f)
(``frac_bits`` f), so the gradient the arbiter's decryption yields is an exact integer, and the
weights are the same bit for bit whatever the keys and masks (same seed -> same model). Against
float64 training on all columns (the Taylor-approximated loss for logistic) the only difference
is that rounding, ~2^-f relative per value, which stays around 1e-6 in the weights with f=24.

Threat model: semi-honest parties, no two colluding (in particular not the arbiter with
anyone); channels authenticated and encrypted (the deployment's mutual TLS). Who sees what:

- hosts: the public key, the encrypted residuals, and their own masked gradients (uniform mod
  n): never labels, residuals, gradients of others or the guest's features in the clear;
- guest: the hosts' encrypted scores and its own masked gradients; never a host's features or
  weights;
- arbiter: the number of rows, and each party's gradient plus a uniform mask mod n (which
  reveals nothing of the gradient), so no data, labels or weights;
- each party learns its *own* gradient in the clear (it needs it to step): over many steps a
  party's gradients carry information about the residuals (and hence labels) aggregated over
  the batch, as in FATE; batches larger than the feature count keep this from pinning single
  labels.

Prediction (:class:`HeteroPredict`): hosts send the guest their partial scores x_h w_h in the
clear, so the guest learns one linear projection of each host's features per test row (not the
features, nor the weights unless it sees more rows than the host has columns with known
features, which it does not).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Literal

import numpy as np

from fedfleet._extras import require
from fedfleet.errors import ConfigError
from fedfleet.vertical._channel import Channel, Message, PartyError, array_to_ints, ints_to_array
from fedfleet.vertical._holdout import (
    classification_metrics,
    regression_metrics,
    standardized,
    train_test,
)
from fedfleet.vertical._party import PartyData
from fedfleet.vertical._progress import PartyProgress

__all__ = ["HeteroLR", "HeteroLinear", "HeteroPredict", "PartyWeights"]

Loss = Literal["logistic", "squared"]


@dataclass(frozen=True)
class PartyWeights:
    """One party's part of a trained vertical linear model (what its program returns)."""

    party: str
    weights: np.ndarray
    """One weight per column the party holds."""
    intercept: float = 0.0
    """The guest's intercept b (0 at hosts)."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """The guest's ``train_rows``, ``test_rows`` and, on the test rows, ``accuracy`` and
    ``auc`` (logistic) or ``rmse`` and ``r2`` (squared); empty at hosts."""


@dataclass(frozen=True, kw_only=True)
class HeteroLR:
    """Vertical logistic (``loss="logistic"``) or linear (``loss="squared"``) regression.

    Each data party's program returns its :class:`PartyWeights`; the arbiter's returns None.
    With ``test_fraction`` > 0 the parties train on the other rows, then score the held-out
    ones as :class:`HeteroPredict` does and the guest's weights carry the metrics. The arbiter
    is a party of its own (:attr:`roles`), so a deployment runs it as a process with its own
    certificate (``fedfleet vertical party --party arbiter``).

    Example::

        parties = {p.name: p for p in split_columns(x, y, [[0, 1], [2, 3]])}
        net = LocalNetwork([*parties, "arbiter"])
        models = run_parties(net, HeteroLR(epochs=5, seed=0).programs(parties))
    """

    loss: Loss = "logistic"
    epochs: int = 5
    batch_size: int = 64
    lr: float = 0.15
    l2: float = 0.0
    """L2 penalty on the weights (not the intercept)."""
    seed: int = 0
    """Orders the mini-batches (shared by all parties)."""
    key_bits: int = 2048
    """Paillier modulus size; 2048 (112-bit security) or more in deployments."""
    frac_bits: int = 24
    """Fixed-point fraction bits f: values travel as round(v 2^f)."""
    fit_intercept: bool = True
    test_fraction: float = 0.0
    """Share of the aligned rows held out for evaluation (the same rows at every party, from
    ``seed``); 0: train on every row, no metrics."""
    standardize: bool = False
    """Each party scales its own columns to zero mean, unit variance on the training rows."""
    guest: str = "guest"
    arbiter: str = "arbiter"

    def __post_init__(self) -> None:
        if self.loss not in ("logistic", "squared"):
            raise ConfigError(f"HeteroLR loss must be 'logistic' or 'squared', got {self.loss!r}")
        for name in ("epochs", "batch_size", "key_bits", "frac_bits"):
            if getattr(self, name) < 1:
                raise ConfigError(f"HeteroLR {name} must be >= 1, got {getattr(self, name)}")
        if self.key_bits < 1024:
            raise ConfigError(f"HeteroLR key_bits must be >= 1024, got {self.key_bits}")
        if not (self.lr > 0 and self.l2 >= 0):
            raise ConfigError(f"HeteroLR needs lr > 0 and l2 >= 0, got {self.lr}, {self.l2}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ConfigError(f"HeteroLR test_fraction must be in [0, 1), got {self.test_fraction}")

    @property
    def roles(self) -> tuple[str, ...]:
        """The parties without data this protocol adds to the roster: its arbiter."""
        return (self.arbiter,)

    def batches(self, rows: int) -> Iterator[np.ndarray]:
        """The rows of each mini-batch, epoch after epoch: a fresh permutation per epoch from
        ``seed``, cut into ``batch_size`` slices (the last one shorter)."""
        for _, batches in self.epoch_batches(rows):
            yield from batches

    def epoch_batches(self, rows: int, start: int = 0) -> Iterator[tuple[int, list[np.ndarray]]]:
        """``(epoch, its mini-batches)`` from epoch ``start`` on (the permutations of the
        epochs before it are drawn and skipped, so a resumed run gets the same batches)."""
        rng = np.random.default_rng(self.seed)
        for epoch in range(self.epochs):
            order = rng.permutation(rows)
            if epoch >= start:
                yield (
                    epoch,
                    [order[i : i + self.batch_size] for i in range(0, rows, self.batch_size)],
                )

    def programs(
        self,
        parties: Mapping[str, PartyData],
        progress: Mapping[str, PartyProgress] | None = None,
    ) -> dict[str, Callable[[Channel], Any]]:
        """One program per party (and the arbiter); ``progress``: where each data party
        checkpoints its weights every epoch and learns where a resumed run starts (the same
        epoch at every party; the arbiter draws a fresh key, which changes no bit of the
        weights)."""
        guest = parties.get(self.guest)
        if guest is None or guest.y is None:
            raise PartyError(f"HeteroLR needs the guest {self.guest!r} with labels")
        if self.arbiter in parties:
            raise PartyError(f"the arbiter {self.arbiter!r} holds no data; rename that party")
        hosts = [p for p in parties if p != self.guest]
        for h in hosts:
            if len(parties[h].ids) != len(guest.ids):
                raise PartyError(
                    f"{h} has {len(parties[h].ids)} rows, the guest {len(guest.ids)}: align "
                    "the parties (Psi, align) first"
                )
        roster = [self.guest, *hosts, self.arbiter]
        tables = {**parties, self.arbiter: PartyData.dataless(self.arbiter)}
        if self.loss == "logistic" and not np.isin(guest.y, (0, 1)).all():
            raise PartyError("HeteroLR(loss='logistic') needs guest labels in {0, 1}")
        at = dict(progress or {})
        return {name: self.program(tables[name], roster, at.get(name)) for name in roster}

    def program(
        self, data: PartyData, roster: Sequence[str], progress: PartyProgress | None = None
    ) -> Callable[[Channel], Any]:
        """The program of the party holding ``data`` (the arbiter: :meth:`PartyData.dataless`),
        knowing the roster's names: the guest first, the arbiter among them, the rest hosts;
        ``progress``: where a data party checkpoints every epoch (see :meth:`programs`)."""
        if self.arbiter not in roster:
            raise PartyError(
                f"HeteroLR needs its arbiter {self.arbiter!r} (the Paillier key holder, no data) "
                f"among the parties, got {list(roster)}"
            )
        if roster[0] != self.guest:
            raise PartyError(
                f"HeteroLR's guest is {self.guest!r}, but the roster starts with {roster[0]!r}"
            )
        if data.name not in roster:
            raise PartyError(f"party {data.name!r} is not in the roster {list(roster)}")
        hosts = [p for p in roster if p not in (self.guest, self.arbiter)]
        if data.name == self.arbiter:
            if len(data.ids) or data.x.size:
                raise PartyError(f"the arbiter {self.arbiter!r} holds no data; rename that party")
            return partial(self._arbiter, parties=[self.guest, *hosts])
        if data.name == self.guest:
            if data.y is None:
                raise PartyError(f"HeteroLR needs the guest {self.guest!r} with labels")
            if self.loss == "logistic" and not np.isin(data.y, (0, 1)).all():
                raise PartyError("HeteroLR(loss='logistic') needs guest labels in {0, 1}")
            return partial(self._evaluated_guest, data=data, hosts=hosts, progress=progress)
        return partial(self._evaluated_host, data=data, progress=progress)

    def _split(self, data: PartyData) -> tuple[PartyData, PartyData]:
        train, test = train_test(self.seed, len(data.ids), self.test_fraction)
        parts = data.subset(train), data.subset(test)
        return standardized(*parts) if self.standardize else parts

    def _evaluated_guest(
        self,
        ch: Channel,
        data: PartyData,
        hosts: Sequence[str],
        progress: PartyProgress | None = None,
    ) -> PartyWeights:
        train, test = self._split(data)
        model = self._guest(ch, train, hosts, progress=progress)
        metrics: dict[str, Any] = {"train_rows": len(train.ids), "test_rows": len(test.ids)}
        if len(test.ids):
            assert test.y is not None
            score = self._predictor(ch.party, model)._guest(ch, test, hosts)
            scored = classification_metrics if self.loss == "logistic" else regression_metrics
            metrics.update(scored(test.y, score))
        return replace(model, metrics=metrics)

    def _evaluated_host(
        self, ch: Channel, data: PartyData, progress: PartyProgress | None = None
    ) -> PartyWeights:
        train, test = self._split(data)
        model = self._host(ch, train, progress=progress)
        if len(test.ids):
            self._predictor(ch.party, model)._host(ch, test)
        return model

    def _predictor(self, party: str, model: PartyWeights) -> HeteroPredict:
        """The prediction exchange of the held-out rows, as ``party`` with its ``model``."""
        return HeteroPredict(models={party: model}, loss=self.loss, guest=self.guest)

    # -- the parties ---------------------------------------------------------------------------

    def _arbiter(self, ch: Channel, parties: Sequence[str]) -> None:
        phe = require("phe", feature="vertical logistic regression")
        public, private = phe.paillier.generate_paillier_keypair(n_length=self.key_bits)
        for p in parties:
            ch.send(p, Message("hlr-public-key", {}, [ints_to_array([public.n])], ["modulus n"]))
        steps = int(ch.recv(self.guest, "hlr-plan").body["steps"])
        for _ in range(steps):
            for p in parties:
                masked = array_to_ints(ch.recv(p, "hlr-masked-gradient").arrays[0])
                plain = [private.raw_decrypt(c) for c in masked]
                width = (public.n.bit_length() + 7) // 8
                ch.send(p, Message("hlr-unmasked", {}, [ints_to_array(plain, width)], ["g + r"]))

    def _guest(
        self,
        ch: Channel,
        data: PartyData,
        hosts: Sequence[str],
        progress: PartyProgress | None = None,
    ) -> PartyWeights:
        assert data.y is not None
        public = _public_key(ch.recv(self.arbiter, "hlr-public-key"))
        rows = len(data.ids)
        x = _with_intercept(data.x, self.fit_intercept)
        start, w = _start(progress, x.shape[1])
        steps = (self.epochs - start) * math.ceil(rows / self.batch_size)
        ch.send(self.arbiter, Message("hlr-plan", {"steps": steps}))
        y = np.asarray(data.y, dtype=np.float64)
        # target t such that the residual, in units of 2^-f, is q(z) - q(t): d = c (z - t)
        target = 2.0 * y - 1.0 if self.loss == "logistic" else y
        q_target = _encode(target * (2.0 if self.loss == "logistic" else 1.0), self.frac_bits)
        for epoch, batches in self.epoch_batches(rows, start):
            for idx in batches:
                w = self._guest_step(ch, public, hosts, x, q_target, idx, w)
            if progress is not None:
                progress.epoch_done(epoch + 1, {"w": w}, {})
        weights = w[:-1] if self.fit_intercept else w
        return PartyWeights(ch.party, weights, float(w[-1]) if self.fit_intercept else 0.0)

    def _guest_step(
        self,
        ch: Channel,
        public: Any,
        hosts: Sequence[str],
        x: np.ndarray,
        q_target: np.ndarray,
        idx: np.ndarray,
        w: np.ndarray,
    ) -> np.ndarray:
        """One mini-batch at the guest: its encrypted residuals from its scores and the
        hosts', sent to every host, then its own gradient step."""
        enc = [0] * len(idx)
        q_u = _encode(x[idx] @ w, self.frac_bits)
        for k in range(len(idx)):
            enc[k] = public.raw_encrypt((q_u[k] - q_target[idx[k]]) % public.n)
        for h in hosts:
            theirs = array_to_ints(ch.recv(h, "hlr-host-scores").arrays[0])
            if len(theirs) != len(idx):
                raise PartyError(f"{h} sent {len(theirs)} scores for a batch of {len(idx)}")
            enc = [a * b % public.nsquare for a, b in zip(enc, theirs, strict=True)]
        residuals = ints_to_array(enc, _width(public))
        for h in hosts:
            ch.send(h, Message("hlr-residuals", {}, [residuals], ["encrypted residuals"]))
        return self._step(ch, public, enc, x[idx], w, penalise_last=not self.fit_intercept)

    def _host(
        self, ch: Channel, data: PartyData, progress: PartyProgress | None = None
    ) -> PartyWeights:
        public = _public_key(ch.recv(self.arbiter, "hlr-public-key"))
        start, w = _start(progress, data.x.shape[1])
        for epoch, batches in self.epoch_batches(len(data.ids), start):
            for idx in batches:
                q_u = _encode(data.x[idx] @ w, self.frac_bits)
                enc = [public.raw_encrypt(v % public.n) for v in q_u]
                scores = ints_to_array(enc, _width(public))
                ch.send(self.guest, Message("hlr-host-scores", {}, [scores], ["encrypted scores"]))
                residuals = array_to_ints(ch.recv(self.guest, "hlr-residuals").arrays[0])
                if len(residuals) != len(idx):
                    raise PartyError(
                        f"the guest sent {len(residuals)} residuals for {len(idx)} rows"
                    )
                w = self._step(ch, public, residuals, data.x[idx], w, penalise_last=True)
            if progress is not None:
                progress.epoch_done(epoch + 1, {"w": w}, {})
        return PartyWeights(ch.party, w)

    def _step(
        self,
        ch: Channel,
        public: Any,
        residuals: Sequence[int],
        x: np.ndarray,
        w: np.ndarray,
        *,
        penalise_last: bool,
    ) -> np.ndarray:
        """One party's gradient step: encrypted gradient, masked, via the arbiter, unmasked."""
        n, n2 = public.n, public.nsquare
        enc_g = _encrypted_matvec(residuals, _encode(x, self.frac_bits), n2)
        masks = [secrets.randbelow(n) for _ in enc_g]
        # adding a plaintext r: multiply by g^r = 1 + n r (mod n^2); the residuals'
        # randomness already hides the ciphertext
        masked = [c * (1 + n * r) % n2 for c, r in zip(enc_g, masks, strict=True)]
        sent = ints_to_array(masked, _width(public))
        ch.send(self.arbiter, Message("hlr-masked-gradient", {}, [sent], ["[[g + r]]"]))
        plain = array_to_ints(ch.recv(self.arbiter, "hlr-unmasked").arrays[0])
        sums = np.array([_signed((m - r) % n, n) for m, r in zip(plain, masks, strict=True)])
        scale = (0.25 if self.loss == "logistic" else 1.0) / 2.0 ** (2 * self.frac_bits)
        grad = sums.astype(np.float64) * scale / len(x)
        penalty = self.l2 * w
        if not penalise_last:
            penalty[-1] = 0.0
        return w - self.lr * (grad + penalty)


@dataclass(frozen=True, kw_only=True)
class HeteroLinear(HeteroLR):
    """:class:`HeteroLR` with the squared loss: vertical linear regression (``hetero-linear``
    in configs), the metrics RMSE and R^2."""

    loss: Loss = "squared"

    def __post_init__(self) -> None:
        if self.loss != "squared":
            raise ConfigError(
                f"hetero-linear is HeteroLR with loss='squared', got loss={self.loss!r}; use "
                "hetero-lr for the logistic loss"
            )
        super().__post_init__()


@dataclass(frozen=True, kw_only=True)
class HeteroPredict:
    """Scores of an aligned (test) table under a trained :class:`HeteroLR` model: hosts send
    their partial scores x_h w_h in the clear; the guest's program returns the probabilities
    (logistic) or predictions (squared); the hosts' return None.

    Attributes:
        models: each party's :class:`PartyWeights` (each party's program reads its own only).
    """

    models: Mapping[str, PartyWeights]
    loss: Loss = "logistic"
    guest: str = "guest"

    def programs(self, parties: Mapping[str, PartyData]) -> dict[str, Callable[[Channel], Any]]:
        missing = [p for p in parties if p not in self.models]
        if missing or self.guest not in parties:
            raise PartyError(f"HeteroPredict: no model for {missing} or no guest {self.guest!r}")
        hosts = [p for p in parties if p != self.guest]
        out: dict[str, Callable[[Channel], Any]] = {
            self.guest: partial(self._guest, data=parties[self.guest], hosts=hosts)
        }
        for h in hosts:
            out[h] = partial(self._host, data=parties[h])
        return out

    def _guest(self, ch: Channel, data: PartyData, hosts: Sequence[str]) -> np.ndarray:
        model = self.models[ch.party]
        z = data.x @ model.weights + model.intercept
        for h in hosts:
            part = ch.recv(h, "hlr-test-scores").arrays[0]
            if part.shape != z.shape:
                raise PartyError(f"{h} sent {part.shape} scores for {len(z)} test rows")
            z = z + part
        return 1.0 / (1.0 + np.exp(-z)) if self.loss == "logistic" else z

    def _host(self, ch: Channel, data: PartyData) -> None:
        model = self.models[ch.party]
        scores = data.x @ model.weights
        ch.send(self.guest, Message("hlr-test-scores", {}, [scores], ["partial scores x_h w_h"]))


def _start(progress: PartyProgress | None, width: int) -> tuple[int, np.ndarray]:
    """The epoch a party starts at and its weights then (zeros for a fresh run)."""
    start, saved = progress.start() if progress is not None else (0, {})
    w = np.array(saved["w"], dtype=np.float64) if saved else np.zeros(width)
    if w.shape != (width,):
        raise PartyError(f"a checkpoint holds {w.shape} weights for {width} columns")
    return start, w


def _public_key(message: Message) -> Any:
    phe = require("phe", feature="vertical logistic regression")
    (n,) = array_to_ints(message.arrays[0])
    return phe.paillier.PaillierPublicKey(n)


def _width(public: Any) -> int:
    return (public.nsquare.bit_length() + 7) // 8


def _with_intercept(x: np.ndarray, fit: bool) -> np.ndarray:
    return np.hstack([x, np.ones((len(x), 1))]) if fit else x


def _encode(values: np.ndarray, frac_bits: int) -> np.ndarray:
    """round(v 2^f) as exact Python ints (an object array)."""
    v = np.asarray(values, dtype=np.float64)
    if not np.isfinite(v).all():
        raise PartyError("cannot encode non-finite values (diverged? lower lr)")
    return np.vectorize(int, otypes=[object])(np.rint(v * 2.0**frac_bits))


def _signed(v: int, n: int) -> int:
    if n // 4 <= v <= n - n // 4:
        raise PartyError("a fixed-point gradient overflowed the Paillier modulus; lower frac_bits")
    return v - n if v > n // 2 else v


def _encrypted_matvec(enc: Sequence[int], q_x: np.ndarray, n2: int) -> list[int]:
    """[[sum_i d_i x_ij]] for each column j: the product over rows of [[d_i]]^(x_ij), with
    negative x_ij as powers of the inverse ciphertext (small exponents, not n - |x|)."""
    from phe.util import invert, powmod

    inverse = [invert(c, n2) for c in enc]
    out = []
    for j in range(q_x.shape[1]):
        acc = 1
        for i, c in enumerate(enc):
            e = int(q_x[i, j])
            if e > 0:
                acc = acc * powmod(c, e, n2) % n2
            elif e < 0:
                acc = acc * powmod(inverse[i], -e, n2) % n2
        out.append(acc)
    return out
