"""Split learning for vertical federations: a bottom model per party, a top model at the guest.

Each party (the guest, which holds the labels, and every host) runs a *bottom* model on its own
columns; the guest's *top* model reads the bottoms' outputs (the *cut layer*) side by side and
predicts the label. One mini-batch step (Vepakomma et al. 2018, "Split learning for health";
FATE's hetero-NN):

    host k:  h_k = bottom_k(x_k[batch])               -> sends h_k (+ noise) to the guest
    guest:   z = top([bottom_g(x_g[batch]), h_1, ..., h_K]),  loss = CE(z, y[batch])
             backprop; sends dloss/dh_k (+ noise) to host k; SGD step on bottom_g and top
    host k:  backprop dloss/dh_k into bottom_k; SGD step

Without noise this is exactly the gradient step of the composed model trained on all columns in
one place (the chain rule splits at the cut), which the tests check against a single torch
model. Batches, the test split and every initial weight derive from ``seed`` through
:data:`SPLIT_NN_ENTROPY` streams, so every party agrees on them without talking.

Threat model: semi-honest parties. Hosts never see labels, the guest never sees host features,
only cut-layer activations and, back, the gradients on them; both can leak something about
the other side's data (activations invert to features for small bottoms, gradients reveal
labels, Fu et al. 2022), which ``dp_noise`` blunts: Gaussian noise of that standard deviation
on every transmitted activation and gradient. The noise is not clipped, so it gives no
accounted (epsilon, delta) guarantee; it is a knob for leakage against accuracy.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from fedfleet._codec import Message
from fedfleet._streams import SPLIT_NN_ENTROPY, split_nn_stream
from fedfleet.errors import ConfigError, DatasetError
from fedfleet.vertical._channel import Channel, PartyError
from fedfleet.vertical._holdout import roc_auc
from fedfleet.vertical._party import PartyData
from fedfleet.vertical._progress import PartyProgress

__all__ = ["SPLIT_NN_ENTROPY", "SplitNN", "SplitNNResult"]


def _stream(seed: int, *key: int) -> np.random.SeedSequence:
    return split_nn_stream(seed, *key)


def _torch_generator(seed: int, *key: int) -> torch.Generator:
    state = _stream(seed, *key).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _mlp(widths: Sequence[int], g: torch.Generator, *, relu_last: bool) -> nn.Sequential:
    """Linear layers ``widths[0] -> widths[1] -> ...`` with ReLU between (and after the last
    when ``relu_last``), initialised as torch's default (uniform in +-1/sqrt(fan_in)) but from
    ``g``, not torch's global generator."""
    layers: list[nn.Module] = []
    for k, (a, b) in enumerate(itertools.pairwise(widths)):
        linear = nn.Linear(a, b)
        bound = 1.0 / float(np.sqrt(a)) if a > 0 else 0.0
        with torch.no_grad():
            linear.weight.uniform_(-bound, bound, generator=g)
            linear.bias.uniform_(-bound, bound, generator=g)
        layers.append(linear)
        if relu_last or k < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _state(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _saved(
    models: Mapping[str, nn.Module | None], generators: Mapping[str, torch.Generator]
) -> dict[str, np.ndarray]:
    """A party's whole state as named arrays: its models' weights (plain SGD keeps no
    optimizer state) and its noise generators' states."""
    out: dict[str, np.ndarray] = {}
    for name, model in models.items():
        if model is not None:
            out.update({f"{name}/{k}": v for k, v in _state(model).items()})
    for name, g in generators.items():
        out[f"noise/{name}"] = g.get_state().numpy().copy()
    return out


def _restore(
    state: Mapping[str, np.ndarray],
    models: Mapping[str, nn.Module | None],
    generators: Mapping[str, torch.Generator],
) -> None:
    """Load what :func:`_saved` saved back into the models and generators, in place."""
    for name, model in models.items():
        if model is not None:
            prefix = f"{name}/"
            weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})
    for name, g in generators.items():
        g.set_state(torch.from_numpy(np.array(state[f"noise/{name}"])))


@dataclass(frozen=True)
class SplitNNResult:
    """What one party ends with: its trained model(s) as arrays, and (the guest) the metrics.

    Attributes:
        party: the party's name.
        bottom: its bottom model's weights (None for a guest without features).
        top: the top model's weights (the guest only).
        metrics: the guest's ``loss`` per epoch and, on the test rows, ``accuracy`` and (two
            classes) ``auc``; a host's ``batches``.
    """

    party: str
    bottom: dict[str, np.ndarray] | None
    top: dict[str, np.ndarray] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class SplitNN:
    """Split learning (a vertical neural network) between a guest and its hosts.

    Examples:
        >>> parties = split_columns(x, y, [[0, 1], [2, 3], [4, 5]])  # doctest: +SKIP
        >>> net = LocalNetwork([p.name for p in parties])  # doctest: +SKIP
        >>> out = run_parties(net, SplitNN(epochs=5).programs({p.name: p for p in parties}))
        ... # doctest: +SKIP
        >>> out["guest"].metrics["accuracy"]  # doctest: +SKIP
    """

    bottom_widths: tuple[int, ...] = (16,)
    """Widths of each party's bottom model after its input; the last is the cut layer's."""
    top_widths: tuple[int, ...] = (16,)
    """Hidden widths of the guest's top model (its output is one logit per class)."""
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.1
    """Plain SGD's step size, the same for every party's model."""
    seed: int = 0
    test_fraction: float = 0.25
    """Share of the aligned rows held out for evaluation (the same rows at every party)."""
    standardize: bool = True
    """Each party scales its own columns to zero mean, unit variance on the training rows."""
    dp_noise: float = 0.0
    """Standard deviation of Gaussian noise on every transmitted activation and gradient."""

    def __post_init__(self) -> None:
        problems = []
        if not self.bottom_widths or min(self.bottom_widths) < 1:
            problems.append(f"bottom_widths must be positive widths, got {self.bottom_widths}")
        if self.top_widths and min(self.top_widths) < 1:
            problems.append(f"top_widths must be positive, got {self.top_widths}")
        if self.epochs < 1 or self.batch_size < 1:
            problems.append(
                f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}"
            )
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.test_fraction < 1.0:
            problems.append(f"test_fraction must be in [0, 1), got {self.test_fraction}")
        if not self.dp_noise >= 0.0:
            problems.append(f"dp_noise must be >= 0, got {self.dp_noise}")
        if problems:
            raise ConfigError("split-nn: " + "; ".join(problems))

    # --- what every party derives from the settings alone ---------------------------------

    @property
    def cut_width(self) -> int:
        return self.bottom_widths[-1]

    def bottom_model(self, in_features: int, index: int) -> nn.Sequential:
        """The initial bottom model of the party at ``index`` of the roster (guest first)."""
        g = _torch_generator(self.seed, 0, index)
        return _mlp((in_features, *self.bottom_widths), g, relu_last=True)

    def top_model(self, in_features: int, classes: int) -> nn.Sequential:
        """The guest's initial top model over ``in_features`` concatenated cut outputs."""
        g = _torch_generator(self.seed, 1)
        return _mlp((in_features, *self.top_widths, classes), g, relu_last=False)

    def train_test(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions of the training and test rows among ``rows`` aligned rows."""
        order = np.random.default_rng(_stream(self.seed, 2)).permutation(rows)
        n_test = round(self.test_fraction * rows)
        return np.sort(order[n_test:]), np.sort(order[:n_test])

    def batches(self, epoch: int, train: np.ndarray) -> list[np.ndarray]:
        """Epoch ``epoch``'s mini-batches: positions of ``train`` in a seeded order."""
        order = train[np.random.default_rng(_stream(self.seed, 3, epoch)).permutation(len(train))]
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    # --- the programs ---------------------------------------------------------------------

    def programs(
        self,
        parties: Mapping[str, PartyData],
        progress: Mapping[str, PartyProgress] | None = None,
    ) -> dict[str, Callable[[Channel], Any]]:
        """One program per party; the guest is the one party holding labels, the hosts follow
        in the mapping's order; ``progress``: each party's (see :meth:`program`)."""
        guests = [p for p in parties.values() if p.y is not None]
        if len(guests) != 1:
            raise DatasetError(
                f"split-nn needs exactly one party with labels (the guest), got "
                f"{[p.name for p in guests]}"
            )
        roster = [guests[0].name] + [n for n, p in parties.items() if p.y is None]
        at = dict(progress or {})
        return {name: self.program(parties[name], roster, at.get(name)) for name in roster}

    def program(
        self, data: PartyData, roster: Sequence[str], progress: PartyProgress | None = None
    ) -> Callable[[Channel], Any]:
        """The program of the party holding ``data``; ``roster`` names every party, guest
        first (a deployed party knows its own table and the roster, nothing else).
        ``progress``: where the party checkpoints each epoch and learns where to start (a
        resumed run starts every party after the same epoch)."""
        if data.name not in roster:
            raise PartyError(f"party {data.name!r} is not in the roster {list(roster)}")
        if data.name == roster[0]:
            if data.y is None:
                raise DatasetError(f"split-nn: the guest {data.name!r} holds no labels")
            return lambda ch: self._guest(ch, data, list(roster), progress)
        return lambda ch: self._host(ch, data, list(roster), progress)

    def _features(self, data: PartyData, train: np.ndarray) -> torch.Tensor:
        x = np.asarray(data.x, dtype=np.float64)
        if self.standardize and x.shape[1] and len(train):
            mean = x[train].mean(axis=0)
            std = x[train].std(axis=0)
            x = (x - mean) / np.where(std > 0, std, 1.0)
        return torch.from_numpy(x.astype(np.float32))

    def _noisy(self, t: torch.Tensor, g: torch.Generator) -> np.ndarray:
        out = t.detach()
        if self.dp_noise > 0:
            out = out + self.dp_noise * torch.randn(out.shape, generator=g, dtype=out.dtype)
        return np.ascontiguousarray(out.numpy(), dtype=np.float32)

    def _host(
        self, ch: Channel, data: PartyData, roster: list[str], progress: PartyProgress | None
    ) -> SplitNNResult:
        index = roster.index(data.name)
        guest = roster[0]
        train, test = self.train_test(len(data.ids))
        x = self._features(data, train)
        bottom = self.bottom_model(x.shape[1], index)
        opt = torch.optim.SGD(bottom.parameters(), lr=self.lr)
        noise = _torch_generator(self.seed, 4, index)
        start, saved = progress.start() if progress is not None else (0, {})
        if saved:
            _restore(saved, {"bottom": bottom}, {"activations": noise})
        steps = sum(len(self.batches(e, train)) for e in range(start))
        for epoch in range(start, self.epochs):
            for b, batch in enumerate(self.batches(epoch, train)):
                h = bottom(x[torch.from_numpy(batch)])
                tag = {"epoch": epoch, "batch": b}
                ch.send(guest, Message("activations", tag, [self._noisy(h, noise)], ["h"]))
                grad = ch.recv(guest, "gradients").arrays[0]
                if grad.shape != tuple(h.shape):
                    raise PartyError(
                        f"{data.name}: the guest sent gradients of shape {grad.shape} for "
                        f"activations of shape {tuple(h.shape)} (epoch {epoch}, batch {b})"
                    )
                opt.zero_grad()
                h.backward(torch.from_numpy(np.asarray(grad, dtype=np.float32)))
                opt.step()
                steps += 1
            if progress is not None:
                progress.epoch_done(
                    epoch + 1, _saved({"bottom": bottom}, {"activations": noise}), {}
                )
        if len(test):
            with torch.no_grad():
                h = bottom(x[torch.from_numpy(test)])
            ch.send(guest, Message("test-activations", {}, [self._noisy(h, noise)], ["h"]))
        return SplitNNResult(data.name, _state(bottom), metrics={"batches": steps})

    def _guest(
        self, ch: Channel, data: PartyData, roster: list[str], progress: PartyProgress | None
    ) -> SplitNNResult:
        hosts = roster[1:]
        assert data.y is not None
        classes, y_all = np.unique(np.asarray(data.y), return_inverse=True)
        if len(classes) < 2:
            raise DatasetError(f"split-nn: the guest's labels hold one class ({classes[0]!r})")
        y = torch.from_numpy(y_all.astype(np.int64))
        train, test = self.train_test(len(data.ids))
        x = self._features(data, train)
        bottom = self.bottom_model(x.shape[1], 0) if x.shape[1] else None
        top_in = self.cut_width * (len(hosts) + (bottom is not None))
        top = self.top_model(top_in, len(classes))
        params = list(top.parameters()) + (list(bottom.parameters()) if bottom else [])
        opt = torch.optim.SGD(params, lr=self.lr)
        noise = {h: _torch_generator(self.seed, 5, i + 1) for i, h in enumerate(hosts)}
        losses: list[float] = []
        models = {"bottom": bottom, "top": top}
        start, saved = progress.start() if progress is not None else (0, {})
        if saved:
            _restore(saved, models, noise)
            losses = [float(v) for v in saved["losses"]]
        for epoch in range(start, self.epochs):
            total = 0.0
            for b, batch in enumerate(self.batches(epoch, train)):
                received = [self._activations(ch, h, "activations", len(batch)) for h in hosts]
                for a in received:
                    a.requires_grad_(True)
                rows = torch.from_numpy(batch)
                cut = ([bottom(x[rows])] if bottom is not None else []) + received
                loss = nn.functional.cross_entropy(top(torch.cat(cut, dim=1)), y[rows])
                opt.zero_grad()
                loss.backward()
                for h, a in zip(hosts, received, strict=True):
                    assert a.grad is not None
                    tag = {"epoch": epoch, "batch": b}
                    grad = self._noisy(a.grad, noise[h])
                    ch.send(h, Message("gradients", tag, [grad], ["dloss/dh"]))
                opt.step()
                total += float(loss.detach()) * len(batch)
            losses.append(total / max(len(train), 1))
            if progress is not None:
                state = _saved(models, noise) | {"losses": np.array(losses, dtype=np.float64)}
                progress.epoch_done(epoch + 1, state, {"loss": losses[-1]})
        metrics: dict[str, Any] = {"loss": losses, "train_rows": len(train), "test_rows": len(test)}
        if len(test):
            received = [self._activations(ch, h, "test-activations", len(test)) for h in hosts]
            with torch.no_grad():
                rows = torch.from_numpy(test)
                cut = ([bottom(x[rows])] if bottom is not None else []) + received
                proba = torch.softmax(top(torch.cat(cut, dim=1)), dim=1).numpy()
            metrics.update(_classification_metrics(y_all[test], proba))
        return SplitNNResult(
            data.name, _state(bottom) if bottom is not None else None, _state(top), metrics
        )

    def _activations(self, ch: Channel, host: str, kind: str, rows: int) -> torch.Tensor:
        a = ch.recv(host, kind).arrays[0]
        if a.shape != (rows, self.cut_width):
            raise PartyError(
                f"{host} sent {kind} of shape {a.shape}, expected ({rows}, {self.cut_width}); "
                "are all parties running the same split-nn settings?"
            )
        return torch.from_numpy(np.array(a, dtype=np.float32))


def _classification_metrics(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Accuracy, and AUC of the second class's probability when there are two classes."""
    out = {"accuracy": float(np.mean(proba.argmax(axis=1) == y))}
    if proba.shape[1] == 2 and len(np.unique(y)) == 2:
        out["auc"] = roc_auc(y == y.max(), proba[:, 1])
    return out
