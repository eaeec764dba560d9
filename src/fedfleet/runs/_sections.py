"""The run config's fixed sections: client training, evaluation, privacy, the simulated clock and
heterogeneity. Each is a frozen pydantic model that forbids unknown keys, one docstring per field.

The sections whose ``name`` picks an entry (``[strategy]``, ``[data]``, ``[model]``) are declared by
their registries (:mod:`fedfleet.runs.algorithms`, :mod:`fedfleet.runs._datasets`,
:mod:`fedfleet.runs._models`); :class:`fedfleet.runs.RunConfig` puts them all together.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "CSV_REPLACES",
    "ClientConfig",
    "ClientsConfig",
    "ClockConfig",
    "CompensationConfig",
    "DeadlineConfig",
    "EvalConfig",
    "PrivacyConfig",
    "Section",
    "SelectionConfig",
    "TrackConfig",
]


class Section(BaseModel):
    """A fixed config section: frozen, unknown keys forbidden."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class PrivacyConfig(Section):
    noise_multiplier: float | None = Field(None, ge=0)
    """z: noise std over the clipping norm; None = calibrate it for target_epsilon."""
    clip_norm: float = Field(1.0, gt=0)
    """S: L2 bound on each client's delta (initial value with adaptive clipping)."""
    sampling: Literal["poisson", "fixed"] = "poisson"
    """'poisson': each client joins with q = clients_per_round / num_clients; 'fixed': exactly
    clients_per_round clients (needs accountant = 'rdp')."""
    delta: float = Field(1e-5, gt=0, lt=1)
    """The delta epsilon is reported at."""
    accountant: Literal["pld", "rdp"] = "pld"
    """dp-accounting's PLD (tight, Poisson only) or RDP accountant."""
    target_epsilon: float | None = Field(None, gt=0)
    """Stop before exceeding this epsilon; required when noise_multiplier is None."""
    adaptive_quantile: float | None = Field(None, gt=0, lt=1)
    """Adaptive clipping towards this quantile of client delta norms (None = fixed S)."""
    noise: Literal["seeded", "seeded-testing-only", "secure"] = "seeded"
    """'seeded' noise is reproducible (the simulation default); 'secure' draws from the OS
    CSPRNG (the deployment default: `fedfleet server`/`client` refuse 'seeded', see
    fedfleet.runs._deploy_policy); 'seeded-testing-only' is seeded noise a deployed test run
    may ask for by name."""
    local_noise_multiplier: float | None = Field(None, gt=0)
    """Local DP: each client clips its delta to clip_norm and adds N(0, (z S)^2) before upload."""
    sgd_noise_multiplier: float | None = Field(None, ge=0)
    """Sample-level DP-SGD in local training: per-sample clipping to sgd_clip_norm plus noise."""
    sgd_clip_norm: float = Field(1.0, gt=0)
    """DP-SGD's per-sample gradient clipping norm C."""


class ClientsConfig(Section):
    """System profiles of the clients for the synchronous engine's simulated clock."""

    profiles_csv: str | None = None
    """CSV with one row per client (speed, download_bps, upload_bps[, latency_s, availability]);
    it replaces every key below but time_per_step, and setting one of them with it is refused."""
    time_per_step: float = Field(1.0, gt=0)
    """Simulated seconds of one local step at speed 1."""
    speed_spread: float = Field(1.0, ge=1)
    """Lognormal compute speeds whose 95th/5th percentile ratio is this (1 = all equal)."""
    download_bps: float | None = Field(None, gt=0)
    """Median download bandwidth in bytes/s (None = instant)."""
    upload_bps: float | None = Field(None, gt=0)
    """Median upload bandwidth in bytes/s (None = instant)."""
    bandwidth_spread: float = Field(1.0, ge=1)
    """95th/5th percentile ratio of the lognormal bandwidths."""
    latency_s: float = Field(0.0, ge=0)
    """Fixed network latency per transfer."""
    availability: float = Field(1.0, gt=0, le=1)
    """Probability a client is online in a round."""

    @property
    def enabled(self) -> bool:
        return (
            self.profiles_csv is not None
            or self.speed_spread > 1
            or self.download_bps is not None
            or self.upload_bps is not None
            or self.latency_s > 0
            or self.availability < 1
        )


CSV_REPLACES = (
    "speed_spread",
    "download_bps",
    "upload_bps",
    "bandwidth_spread",
    "latency_s",
    "availability",
)
"""The [clients] keys whose values clients.profiles_csv replaces (time_per_step it keeps)."""


class DeadlineConfig(Section):
    policy: Literal["none", "drop", "partial", "overselect"] = "none"
    """Late clients are dropped, do only the steps that fit (partial work), or the first `keep`
    to finish are kept (over-selection)."""
    seconds: float | None = Field(None, gt=0)
    """The round deadline in simulated seconds (required for drop and partial)."""
    keep: int | None = Field(None, ge=1)
    """overselect: how many of the selected clients to keep."""


class SelectionConfig(Section):
    method: Literal["uniform", "oort"] = "uniform"
    """Client selection: uniform among online clients, or Oort-style utility x speed penalty."""
    preferred_s: float | None = Field(None, gt=0)
    """Oort's preferred round duration T (default: the deadline)."""
    alpha: float = Field(2.0, ge=0)
    """Oort's penalty exponent for clients slower than T."""
    epsilon: float = Field(0.2, ge=0, le=1)
    """Oort's exploration share."""


class CompensationConfig(Section):
    rule: Literal["none", "more_epochs", "scale_lr"] = "none"
    """Adapt lagging clients' next instructions: more local epochs (within the deadline) or a
    scaled learning rate; off by default."""
    factor: float = Field(2.0, gt=0)
    """Epoch multiplier or learning-rate scale for lagging clients."""
    threshold: float = Field(1.2, gt=0)
    """A client lags when its recent loss exceeds this multiple of the clients' median."""


class ClockConfig(Section):
    time_per_step: float = Field(1.0, gt=0)
    """Simulated seconds of one local step on a speed-1 client (fedbuff)."""
    speed_sigma: float = Field(0.0, ge=0)
    """Sigma of lognormal client speeds (0 = all equal)."""


class ClientConfig(Section):
    epochs: int = Field(2, ge=1)
    """Local epochs E."""
    batch_size: int = Field(16, ge=1)
    """Local batch size B."""
    lr: float = Field(0.2, gt=0)
    """Client learning rate."""
    optimizer: str = "sgd"
    """Any torch.optim optimizer by name: sgd, adam, adamw, rmsprop, ..."""
    momentum: float = Field(0.0, ge=0, lt=1)
    """Momentum for optimizers that take it (sgd, rmsprop); reset every round."""
    weight_decay: float = Field(0.0, ge=0)
    """L2 weight decay of the client optimizer."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Local steps' arithmetic: 'bf16' = mixed precision (bfloat16 autocast, float32 weights),
    client by client; 'fp32' (default) is exact and bit-identical for a seed."""

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, v: str) -> str:
        from fedfleet.client import optimizer_names

        if v.lower() not in optimizer_names():
            raise ValueError(f"unknown optimizer {v!r}; valid: {', '.join(optimizer_names())}")
        return v.lower()

    def optimizer_args(self) -> dict[str, float]:
        """The ``torch.optim`` keyword arguments: weight decay, momentum where it applies."""
        args = {"weight_decay": self.weight_decay}
        if self.optimizer in ("sgd", "rmsprop"):
            args["momentum"] = self.momentum
        return args


class EvalConfig(Section):
    every: int = Field(1, ge=0)
    """Centralized test-set evaluation every k rounds (0 = only after the last round)."""
    federated_every: int = Field(0, ge=0)
    """Evaluation on clients' held-out splits every k rounds (0 = off); needs held-out data."""


class TrackConfig(Section):
    """Experiment tracking (:mod:`fedfleet.tracking`, the ``fedfleet[track]`` extra): every
    round's metrics and the per-client evaluations, beside ``metrics.jsonl``."""

    tensorboard: bool = False
    """TensorBoard event files in the run directory's tensorboard/ (tensorboard --logdir runs)."""
    mlflow: bool = False
    """Log to MLflow: the config as params, every round's metrics, per-client evaluations."""
    mlflow_uri: str | None = None
    """MLflow tracking URI (setting it turns mlflow on); None = sqlite:///RUN_DIR/mlflow.db."""
    mlflow_experiment: str = "fedfleet"
    """The MLflow experiment the run goes into (created when missing)."""

    @property
    def mlflow_on(self) -> bool:
        return self.mlflow or self.mlflow_uri is not None
