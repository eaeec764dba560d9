"""Sample-level DP-SGD for local training (Abadi et al. 2016, "Deep Learning with Differential
Privacy"), for the cross-silo case where each client's own records need protecting.

Every step of :class:`DPSGDTrainer`:

1. draw a batch: ``"poisson"`` (default) takes each of the client's n samples independently with
   rate q = B / n, as DP-SGD's accounting assumes; ``"fixed"`` draws exactly B of n uniformly
   without replacement, independently every step (not epoch shuffles);
2. compute per-sample gradients g_i with ``torch.func`` (``functional_call`` + ``vmap`` +
   ``grad``) and clip each: g_i <- g_i * min(1, C / ||g_i||_2);
3. g = (sum_i g_i + N(0, (sigma C)^2 I)) / B', with B' = q n (the *expected* batch size, a fixed
   denominator so one sample moves the sum by at most C) for Poisson, and B for fixed batches;
4. w <- w - lr (g + mu (w - w0) + correction): FedProx's and SCAFFOLD's terms are data-free
   (they depend on the weights and on the server's broadcast only), so adding them after the
   noise costs no privacy.

Accounting (:func:`dpsgd_epsilon`): T steps compose T subsampled Gaussian mechanisms; Poisson
batches are accounted under add/remove adjacency with PLD (default) or RDP, fixed-size batches
under replace-one with RDP (sensitivity 2C, noise multiplier sigma / 2), exactly like the
client-level :class:`fedfleet.privacy.DpAccounting`, which does the work. Each fit reports
``dpsgd_epsilon``: the epsilon of *that fit's* steps at ``delta`` for the client's records, and
``dpsgd_sample_rate`` (q). A client that trains in R rounds with T_r steps each has spent
``dpsgd_epsilon(sigma, q, sum_r T_r, delta)`` (same q every round);
:class:`fedfleet.privacy.DPSGDLedger` tracks that sum for every client of a run.
Models with float buffers (BatchNorm statistics) are refused: batch statistics mix samples, so
per-sample clipping would not bound one sample's influence.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

import fedfleet._streams as _streams
from fedfleet.client import EvalResult, FitInstructions, FitResult, TorchTrainer, gradient_terms
from fedfleet.data import ArrayDataset
from fedfleet.errors import ConfigError
from fedfleet.params import Layout
from fedfleet.privacy._accountant import DpAccounting
from fedfleet.transforms._dp import NoiseSource, gaussian

__all__ = ["DPSGDTrainer", "dpsgd_epsilon"]

BatchSampling = Literal["poisson", "fixed"]


@lru_cache(maxsize=256)
def dpsgd_epsilon(
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    *,
    accountant: Literal["pld", "rdp"] = "pld",
    sampling: BatchSampling = "poisson",
    dataset_size: int | None = None,
) -> float:
    """Epsilon at ``delta`` after ``steps`` DP-SGD steps with noise multiplier sigma.

    ``sampling="poisson"``: rate ``sample_rate`` per step (add/remove adjacency; PLD or RDP).
    ``sampling="fixed"``: B = round(sample_rate * dataset_size) of ``dataset_size`` without
    replacement each step (replace-one adjacency; RDP only).

    Examples:
        >>> round(dpsgd_epsilon(1.1, 256 / 60000, 60 * 60000 // 256, 1e-5), 1)  # MNIST, E=60
        2.4
    """
    if sampling == "poisson":
        acc = DpAccounting(
            noise_multiplier=noise_multiplier,
            population=max(1, dataset_size or 1),
            sampling_rate=sample_rate,
            delta=delta,
            accountant=accountant,
        )
    else:
        if dataset_size is None:
            raise ConfigError("fixed-size batches need dataset_size for the accountant")
        acc = DpAccounting(
            noise_multiplier=noise_multiplier,
            population=dataset_size,
            sampling="fixed",
            cohort_size=max(1, round(sample_rate * dataset_size)),
            delta=delta,
            accountant="rdp",
        )
    return acc.epsilon(steps)


def _batches(
    n: int, batch_size: int, steps: int, sampling: BatchSampling, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """Index arrays of ``steps`` batches (Poisson: possibly empty) drawn from ``rng``."""
    q = min(1.0, batch_size / n)
    for _ in range(steps):
        if sampling == "poisson":
            yield np.flatnonzero(rng.random(n) < q)
        else:
            yield np.sort(rng.choice(n, size=min(batch_size, n), replace=False))


class DPSGDTrainer:
    """A :class:`fedfleet.client.Trainer` whose local training is DP-SGD; see the module docs.

    Args:
        model: a module or a zero-argument factory (as for :class:`TorchTrainer`).
        clip_norm: C, the per-sample gradient bound (``math.inf``: no clipping).
        noise_multiplier: sigma; the summed gradient gets N(0, (sigma C)^2) noise.
        loss_fn: ``loss_fn(outputs, targets)`` returning the *mean* loss of a batch.
        sampling: ``"poisson"`` (rate B/n per step) or ``"fixed"`` (B without replacement).
        noise: ``"seeded"`` (from the fit's seed; simulation) or ``"secure"`` (OS CSPRNG).
        delta: the delta ``dpsgd_epsilon`` is reported at.
        accountant: ``"pld"`` or ``"rdp"`` (fixed-size batches always use RDP).
        device: where training runs.

    A fit runs ``epochs * max(1, round(n / B))`` steps (capped by ``max_steps``), i.e. E
    expected passes over the data.

    Examples:
        >>> trainer = DPSGDTrainer(lambda: torch.nn.Linear(4, 3), clip_norm=1.0,
        ...                        noise_multiplier=1.1)
    """

    def __init__(
        self,
        model: nn.Module | Callable[[], nn.Module],
        *,
        clip_norm: float,
        noise_multiplier: float,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
        sampling: BatchSampling = "poisson",
        noise: NoiseSource = "seeded",
        delta: float = 1e-5,
        accountant: Literal["pld", "rdp"] = "pld",
        device: str | torch.device = "cpu",
    ) -> None:
        if not clip_norm > 0:
            raise ConfigError(f"clip_norm must be > 0 (math.inf for none), got {clip_norm}")
        if not 0 <= noise_multiplier < math.inf:
            raise ConfigError(
                f"noise_multiplier must be a finite number >= 0, got {noise_multiplier}"
            )
        if noise_multiplier > 0 and math.isinf(clip_norm):
            raise ConfigError("noise needs a finite clip_norm: the noise std is sigma * C")
        if sampling not in ("poisson", "fixed"):
            raise ConfigError(f"sampling must be 'poisson' or 'fixed', got {sampling!r}")
        self._base = TorchTrainer(model, loss_fn=loss_fn, device=device)
        module = self._base.model
        params = dict(module.named_parameters())
        extra = [n for n in self._base.layout.names if n not in params]
        if extra:
            raise ConfigError(
                f"DP-SGD needs a model whose federated state is parameters only; {extra} are "
                "float buffers (BatchNorm statistics mix samples); use GroupNorm/LayerNorm"
            )
        self.clip_norm = float(clip_norm)
        self.noise_multiplier = float(noise_multiplier)
        self.loss_fn = loss_fn
        self.sampling: BatchSampling = sampling
        self.noise: NoiseSource = noise
        self.delta = delta
        self.accountant: Literal["pld", "rdp"] = accountant
        self.device = self._base.device
        self._module = module

        def sample_loss(
            p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
        ) -> torch.Tensor:
            out = functional_call(self._module, p, (x.unsqueeze(0),))
            return self.loss_fn(out, y.unsqueeze(0))

        self._per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))

    @property
    def layout(self) -> Layout:
        return self._base.layout

    def init_vector(self, seed: int) -> np.ndarray:
        return self._base.init_vector(seed)

    def evaluate(self, vector: np.ndarray, data: ArrayDataset) -> EvalResult:
        return self._base.evaluate(vector, data)

    def export(self, vector: np.ndarray) -> nn.Module:
        return self._base.export(vector)

    def _views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            s.name: flat[s.offset : s.offset + s.numel].view(s.shape) for s in self.layout.specs
        }

    def per_sample_grads(
        self, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """Per-sample gradients as a ``[batch, layout.size]`` matrix (layout order)."""
        g = self._per_sample(self._views(flat), x, y)
        return torch.cat([g[s.name].reshape(len(x), -1) for s in self.layout.specs], dim=1)

    def clipped_grads(
        self, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample gradients clipped to ``clip_norm`` and their norms before clipping."""
        g = self.per_sample_grads(flat, x, y)
        norms = torch.linalg.vector_norm(g, dim=1)
        factor = torch.clamp(self.clip_norm / norms, max=1.0)  # inf (C = inf or g = 0) -> 1
        return g * factor.unsqueeze(1), norms

    def steps_for(self, n: int, instructions: FitInstructions) -> int:
        steps = instructions.epochs * max(1, round(n / instructions.batch_size))
        return steps if instructions.max_steps is None else min(steps, instructions.max_steps)

    def fit(
        self, vector: np.ndarray, data: ArrayDataset, instructions: FitInstructions, seed: int
    ) -> FitResult:
        """DP-SGD from ``vector`` on ``data``; batches from ``default_rng(seed)``, noise from
        ``SeedSequence(seed, spawn_key=(2,))`` (or the CSPRNG; local DP has key (1,))."""
        mu, correction = gradient_terms(instructions, self.layout)
        self.layout.check(vector)
        x = torch.as_tensor(data.x, device=self.device)
        y = torch.as_tensor(data.y, device=self.device)
        n = len(y)
        if n == 0:
            raise ConfigError("DP-SGD got an empty dataset")
        b = instructions.batch_size
        steps = self.steps_for(n, instructions)
        rng = np.random.default_rng(seed)
        noise_rng = _streams.generator(seed, _streams.DPSGD_NOISE)
        denominator = min(b, n) if self.sampling == "fixed" else min(1.0, b / n) * n
        w0 = torch.from_numpy(vector).to(self.device)
        w = w0.clone()
        corr = None if correction is None else torch.from_numpy(correction).to(self.device)
        std = self.noise_multiplier * self.clip_norm
        self._module.train()
        # device-side sums: no host sync inside the loop (the same float64 / int64 arithmetic)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        clipped = torch.zeros((), dtype=torch.int64, device=self.device)
        seen = 0
        for idx in _batches(n, b, steps, self.sampling, rng):
            total = torch.zeros_like(w)
            if len(idx):
                ti = torch.from_numpy(idx).to(self.device)
                g, norms = self.clipped_grads(w, x[ti], y[ti])
                total += g.sum(dim=0)
                clipped += (norms > self.clip_norm).sum()
                with torch.no_grad():
                    out = functional_call(self._module, self._views(w), (x[ti],))
                    loss_sum += self.loss_fn(out, y[ti]).double() * len(idx)
                seen += len(idx)
            if std > 0:
                noise = gaussian(w.numel(), std, self.noise, noise_rng)
                total += torch.from_numpy(noise).to(total)
            step = total / denominator
            if mu != 0.0:
                step += mu * (w - w0)
            if corr is not None:
                step += corr
            w = w - instructions.lr * step
        metrics: dict[str, float] = {
            "dpsgd_clipped_fraction": int(clipped) / seen if seen else 0.0,
            "dpsgd_sample_rate": min(1.0, b / n),  # for the cumulative DPSGDLedger
        }
        if seen:
            metrics["train_loss"] = float(loss_sum) / seen
        if self.noise_multiplier > 0:  # metrics must be finite: no epsilon without noise
            metrics["dpsgd_epsilon"] = dpsgd_epsilon(
                self.noise_multiplier,
                min(1.0, b / n),
                steps,
                self.delta,
                accountant=self.accountant if self.sampling == "poisson" else "rdp",
                sampling=self.sampling,
                dataset_size=n,
            )
        return FitResult(w.detach().to("cpu").numpy().astype(np.float32), n, steps, metrics)
