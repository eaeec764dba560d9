"""Run configuration: a TOML file plus ``--set key=value`` overrides, validated up front.

Every section is a frozen pydantic model that forbids unknown keys; :func:`load_config` turns
pydantic's errors into one :class:`ConfigError` whose message lists the valid keys or values, so a
typo is caught before any data is loaded. The defaults are the README's main run: digits over 20
clients with Dirichlet(0.5) label skew, an MLP, FedAvg with 10 clients a round.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedfleet.errors import ConfigError

__all__ = [
    "STRATEGIES",
    "ClientConfig",
    "ClientsConfig",
    "ClockConfig",
    "CompensationConfig",
    "DataConfig",
    "DeadlineConfig",
    "EvalConfig",
    "ModelConfig",
    "PrivacyConfig",
    "RunConfig",
    "SelectionConfig",
    "StrategyConfig",
    "apply_overrides",
    "dump_config",
    "load_config",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


POPULATIONS = ("synthetic-population", "synthetic-iid-population")
"""Dataset names that are lazily generated populations rather than partitioned datasets."""


class DataConfig(_Section):
    name: Literal[
        "digits",
        "mnist",
        "fashion-mnist",
        "femnist",
        "leaf",
        "synthetic",
        "synthetic-iid",
        "synthetic-population",
        "synthetic-iid-population",
    ] = "digits"
    """Dataset; see ``fedfleet datasets``. 'synthetic-population' registers num_clients
    Synthetic(synthetic_alpha, synthetic_beta) devices whose data are generated only when
    sampled (memory grows with the cohort, not the population; a million clients work);
    'synthetic-iid-population' the same with one model shared by every device. The server's
    test set is 50 devices never trained on: under Synthetic(alpha, beta) each device labels
    by its own random model, so a global model scores near chance on new devices there."""
    path: str | None = None
    """Directory of the files (mnist, fashion-mnist, femnist, leaf); default $FEDFLEET_DATA."""
    num_clients: int = Field(20, ge=1)
    """Number of clients the train pool is split across (ignored by the natural partition)."""
    partition: Literal["iid", "dirichlet", "shards", "quantity", "natural"] = "dirichlet"
    """How samples are split across clients."""
    alpha: float = Field(0.5, gt=0)
    """Dirichlet concentration for label skew (smaller = more skewed)."""
    shards_per_client: int = Field(2, ge=1)
    """Shards per client for the pathological 'shards' partition."""
    quantity_distribution: Literal["lognormal", "power-law"] = "lognormal"
    """Client-size distribution for the 'quantity' partition."""
    quantity_sigma: float = Field(1.0, gt=0)
    """Lognormal sigma of client sizes."""
    quantity_exponent: float = Field(1.5, gt=0)
    """Power-law exponent of client sizes."""
    client_test_fraction: float = Field(0.0, ge=0, lt=1)
    """Held-out fraction of each client's samples for federated evaluation (0 = none)."""
    test_fraction: float = Field(0.2, gt=0, lt=1)
    """Server test fraction for datasets without a fixed test split (digits, synthetic)."""
    synthetic_alpha: float = Field(1.0, ge=0)
    """Synthetic(alpha, beta): model heterogeneity across devices."""
    synthetic_beta: float = Field(1.0, ge=0)
    """Synthetic(alpha, beta): data heterogeneity across devices."""
    num_devices: int = Field(30, ge=1)
    """Number of Synthetic devices."""
    max_samples: int | None = Field(None, ge=1)
    """synthetic-population: cap on a device's sample count (its sizes have a long tail)."""


class ModelConfig(_Section):
    name: Literal["logreg", "mlp", "2nn", "cnn"] = "mlp"
    """Reference model, sized from the dataset."""
    hidden: tuple[int, ...] = (128,)
    """Hidden layer widths of 'mlp'."""
    backend: Literal["torch", "numpy"] = "torch"
    """'numpy' trains 'logreg' with the pure-NumPy trainer."""


STRATEGIES = (
    "fedavg",
    "fedavgm",
    "fedprox",
    "fedadam",
    "fedyogi",
    "fedadagrad",
    "scaffold",
    "fednova",
    "qfedavg",
    "fedper",
    "fedrep",
    "fedbuff",
    "dpfedavg",
    "secagg",
)


class StrategyConfig(_Section):
    name: Literal[STRATEGIES] = "fedavg"  # type: ignore[valid-type]
    """Federated algorithm: fedavg, fedavgm, fedprox, fedadam, fedyogi, fedadagrad, scaffold,
    fednova, qfedavg, fedper, fedrep (personalised), fedbuff (asynchronous), dpfedavg
    (client-level differential privacy, see [privacy]), secagg (SecAgg+ secure aggregation;
    central DP on the unmasked sum when privacy.noise_multiplier is set)."""
    clients_per_round: int | None = Field(10, ge=1)
    """Clients sampled per round (K); ignored when 'fraction' is set."""
    fraction: float | None = Field(None, gt=0, le=1)
    """Fraction of clients sampled per round (C); overrides clients_per_round when set."""
    server_lr: float | None = Field(None, gt=0)
    """Server learning rate; default 1.0, or 0.03 for fedadam/fedyogi/fedadagrad."""
    server_momentum: float | None = Field(None, ge=0, lt=1)
    """Server momentum; default 0.0, or 0.9 for fedavgm."""
    b1: float = Field(0.9, ge=0, lt=1)
    """FedAdam/FedYogi first-moment decay."""
    b2: float = Field(0.99, ge=0, lt=1)
    """FedAdam/FedYogi second-moment decay."""
    tau: float = Field(1e-3, gt=0)
    """FedOpt adaptivity constant."""
    mu: float = Field(0.01, ge=0)
    """Proximal coefficient: fedprox (default 0.01); fednova applies it when set > 0 there."""
    q: float = Field(1.0, ge=0)
    """q-FedAvg fairness parameter (0 = plain averaging)."""
    straggler_fraction: float = Field(0.0, ge=0, le=1)
    """Share of each round's clients that can do only 1..E local epochs."""
    straggler_policy: Literal["drop", "partial"] = "partial"
    """Stragglers are left out ('drop', FedAvg's way) or send their partial work ('partial')."""
    head: tuple[str, ...] = ()
    """fedper/fedrep: parameter-name prefixes kept personal; default the model's last layer."""
    head_epochs: int = Field(1, ge=1)
    """fedrep: local epochs on the personal head before the body epochs."""
    buffer_size: int = Field(10, ge=1)
    """fedbuff: updates buffered per server step (K)."""
    concurrency: int = Field(20, ge=1)
    """fedbuff: clients training at any time."""
    staleness_exponent: float = Field(0.5, ge=0)
    """fedbuff: updates are weighted by 1 / (1 + staleness) ** exponent."""
    weighting: Literal["samples", "steps", "uniform"] = "samples"
    """Aggregation weights: by sample count (FedAvg), by local steps completed, or uniform."""
    max_update_norm: float | None = Field(None, gt=0)
    """Refuse (and name) any client update whose delta has a larger L2 norm (None = no bound)."""


class PrivacyConfig(_Section):
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
    fedfleet.runs.deploy_policy); 'seeded-testing-only' is seeded noise a deployed test run
    may ask for by name."""
    local_noise_multiplier: float | None = Field(None, gt=0)
    """Local DP: each client clips its delta to clip_norm and adds N(0, (z S)^2) before upload."""
    sgd_noise_multiplier: float | None = Field(None, ge=0)
    """Sample-level DP-SGD in local training: per-sample clipping to sgd_clip_norm plus noise."""
    sgd_clip_norm: float = Field(1.0, gt=0)
    """DP-SGD's per-sample gradient clipping norm C."""


class ClientsConfig(_Section):
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


_CSV_REPLACES = (
    "speed_spread",
    "download_bps",
    "upload_bps",
    "bandwidth_spread",
    "latency_s",
    "availability",
)
"""The [clients] keys whose values clients.profiles_csv replaces (time_per_step it keeps)."""


class DeadlineConfig(_Section):
    policy: Literal["none", "drop", "partial", "overselect"] = "none"
    """Late clients are dropped, do only the steps that fit (partial work), or the first `keep`
    to finish are kept (over-selection)."""
    seconds: float | None = Field(None, gt=0)
    """The round deadline in simulated seconds (required for drop and partial)."""
    keep: int | None = Field(None, ge=1)
    """overselect: how many of the selected clients to keep."""


class SelectionConfig(_Section):
    method: Literal["uniform", "oort"] = "uniform"
    """Client selection: uniform among online clients, or Oort-style utility x speed penalty."""
    preferred_s: float | None = Field(None, gt=0)
    """Oort's preferred round duration T (default: the deadline)."""
    alpha: float = Field(2.0, ge=0)
    """Oort's penalty exponent for clients slower than T."""
    epsilon: float = Field(0.2, ge=0, le=1)
    """Oort's exploration share."""


class CompensationConfig(_Section):
    rule: Literal["none", "more_epochs", "scale_lr"] = "none"
    """Adapt lagging clients' next instructions: more local epochs (within the deadline) or a
    scaled learning rate; off by default."""
    factor: float = Field(2.0, gt=0)
    """Epoch multiplier or learning-rate scale for lagging clients."""
    threshold: float = Field(1.2, gt=0)
    """A client lags when its recent loss exceeds this multiple of the clients' median."""


class ClockConfig(_Section):
    time_per_step: float = Field(1.0, gt=0)
    """Simulated seconds of one local step on a speed-1 client (fedbuff)."""
    speed_sigma: float = Field(0.0, ge=0)
    """Sigma of lognormal client speeds (0 = all equal)."""


class ClientConfig(_Section):
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

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, v: str) -> str:
        from fedfleet.client.torch_trainer import optimizer_names

        if v.lower() not in optimizer_names():
            raise ValueError(f"unknown optimizer {v!r}; valid: {', '.join(optimizer_names())}")
        return v.lower()

    def optimizer_args(self) -> dict[str, float]:
        """The ``torch.optim`` keyword arguments: weight decay, momentum where it applies."""
        args = {"weight_decay": self.weight_decay}
        if self.optimizer in ("sgd", "rmsprop"):
            args["momentum"] = self.momentum
        return args


class EvalConfig(_Section):
    every: int = Field(1, ge=0)
    """Centralized test-set evaluation every k rounds (0 = only after the last round)."""
    federated_every: int = Field(0, ge=0)
    """Evaluation on clients' held-out splits every k rounds (0 = off); needs held-out data."""


class RunConfig(_Section):
    seed: int = 0
    """The one seed every random draw derives from."""
    rounds: int = Field(50, ge=1)
    """Communication rounds."""
    threads: int = Field(1, ge=1)
    """torch intra-op threads for local training (1 is fastest for small models)."""
    executor: Literal[
        "auto", "sequential", "threaded", "vectorised", "compiled", "process", "ray"
    ] = "auto"
    """How a round's clients train: 'vectorised' (all at once with torch.func; SGD, models
    without BatchNorm/dropout), 'sequential' (one after another; any model and optimizer),
    'threaded' (the sequential loop, a client per core; no dropout), 'compiled' (small MLPs with
    SGD: a client's loop one numba call, `threads` clients at a time), 'auto' (compiled,
    vectorised or threaded where each wins, with plain-training strategies),
    'process' (contiguous chunks over `workers` forked processes, one torch thread each) or
    'ray' (chunks over `workers` Ray tasks on the cluster at `ray_address`)."""
    workers: int = Field(2, ge=1)
    """Worker processes ('process') or Ray tasks per round ('ray')."""
    worker_executor: Literal["auto", "sequential", "vectorised", "compiled"] = "auto"
    """How each process or Ray task trains its chunk ('auto' as for `executor`)."""
    ray_address: str | None = None
    """The Ray cluster, e.g. 'HEAD:6379'; unset uses $RAY_ADDRESS, else a local Ray instance."""
    ray_connect_timeout_s: float = Field(30.0, gt=0)
    """Joining the cluster fails after about this long, with the cause (unreachable: at once)."""
    device: Literal["cpu", "cuda"] = "cpu"
    """Where local training and evaluation run; 'cuda' needs a visible CUDA device."""
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    strategy: StrategyConfig = StrategyConfig()
    client: ClientConfig = ClientConfig()
    eval: EvalConfig = EvalConfig()
    clock: ClockConfig = ClockConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    clients: ClientsConfig = ClientsConfig()
    deadline: DeadlineConfig = DeadlineConfig()
    selection: SelectionConfig = SelectionConfig()
    compensation: CompensationConfig = CompensationConfig()

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if self.model.backend == "numpy" and self.model.name != "logreg":
            raise ValueError("model.backend = 'numpy' supports model.name = 'logreg' only")
        if self.strategy.name in ("fedper", "fedrep") and self.model.backend != "torch":
            raise ValueError(f"strategy {self.strategy.name} needs model.backend = 'torch'")
        s = self.strategy
        unstraggled = ("scaffold", "qfedavg", "dpfedavg", "fedbuff", "secagg")
        if s.straggler_fraction > 0 and s.name in unstraggled:
            raise ValueError(
                f"strategy.straggler_fraction is not supported by {s.name}; it works with fedavg, "
                "fedavgm, fedprox, fedadam, fedyogi, fedadagrad, fednova, fedper and fedrep"
            )
        if s.server_momentum and s.name not in ("fedavg", "fedavgm", "fednova", "fedper", "fedrep"):
            raise ValueError(f"strategy.server_momentum has no effect with {s.name}; remove it")
        if self.model.backend == "numpy" and s.name in ("fednova", "scaffold"):
            raise ValueError(f"{s.name} needs model.backend = 'torch' (its SGD settings)")
        c, fields = self.clients, ClientsConfig.model_fields
        clash = [k for k in _CSV_REPLACES if getattr(c, k) != fields[k].default]
        if c.profiles_csv is not None and clash:
            keys = ", ".join(f"clients.{k}" for k in clash)
            raise ValueError(
                f"clients.profiles_csv gives every client's speed, bandwidths, latency and "
                f"availability, so it would override {keys}: remove {keys}, or put the values "
                "in the CSV's columns (speed, download_bps, upload_bps, latency_s, availability)"
            )
        d = self.deadline
        if d.policy in ("drop", "partial") and d.seconds is None:
            raise ValueError(f"deadline.policy = '{d.policy}' needs deadline.seconds")
        if d.policy == "overselect" and d.keep is None:
            raise ValueError("deadline.policy = 'overselect' needs deadline.keep")
        if self.selection.method == "oort" and (
            self.selection.preferred_s is None and d.seconds is None
        ):
            raise ValueError("selection.method = 'oort' needs selection.preferred_s or a deadline")
        if s.name == "fedbuff" and (d.policy != "none" or self.selection.method != "uniform"):
            raise ValueError("fedbuff runs its own clock: use [clock], not [deadline]/[selection]")
        p = self.privacy
        if p.local_noise_multiplier is not None and s.name not in (
            "fedavg",
            "fedavgm",
            "fedprox",
            "fedadam",
            "fedyogi",
            "fedadagrad",
            "fednova",
        ):
            raise ValueError(
                "privacy.local_noise_multiplier (local DP) needs a strategy that uploads only "
                "its delta: fedavg, fedavgm, fedprox, fedadam, fedyogi, fedadagrad or fednova"
            )
        if p.sgd_noise_multiplier is not None and (
            self.model.backend != "torch" or self.client.optimizer != "sgd"
        ):
            raise ValueError("DP-SGD needs model.backend = 'torch' and client.optimizer = 'sgd'")
        if (
            self.strategy.name == "dpfedavg"
            and p.noise_multiplier is None
            and (p.target_epsilon is None)
        ):
            raise ValueError(
                "dpfedavg needs privacy.noise_multiplier, or privacy.target_epsilon to calibrate it"
            )
        if self.device == "cuda" and (self.model.backend != "torch" or self.executor == "process"):
            raise ValueError(
                "device = 'cuda' needs model.backend = 'torch' and an in-process or Ray "
                "executor (CUDA does not survive the fork of executor = 'process')"
            )
        if self.executor in ("process", "ray") and s.name == "fedbuff":
            raise ValueError(
                f"executor = '{self.executor}' splits a synchronous round's cohort; fedbuff "
                "runs its own asynchronous loop: use executor = 'auto' with fedbuff"
            )
        if self.data.name in POPULATIONS and (
            s.name == "fedbuff" or self.data.client_test_fraction > 0
        ):
            raise ValueError(
                "data.name = 'synthetic-population' runs the synchronous engine without held-out "
                "client data: use another strategy than fedbuff and data.client_test_fraction = 0"
            )
        if self.eval.federated_every and not (
            self.data.client_test_fraction > 0 or self.data.partition == "natural"
        ):
            raise ValueError(
                "eval.federated_every needs held-out client data: set data.client_test_fraction "
                "> 0 or use data.partition = 'natural'"
            )
        return self


_SECTIONS: dict[str, type[BaseModel]] = {
    name: info.annotation
    for name, info in RunConfig.model_fields.items()
    if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
}


def _valid_keys(section: str | None) -> str:
    model = _SECTIONS.get(section, RunConfig) if section else RunConfig
    return ", ".join(model.model_fields)


def _explain(err: ValidationError) -> ConfigError:
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        key = ".".join(loc) or "config"
        if e["type"] == "extra_forbidden":
            section = loc[0] if len(loc) > 1 else None
            where = f"[{section}]" if section else "the top level"
            lines.append(f"unknown key {key!r}; valid keys in {where}: {_valid_keys(section)}")
        elif loc:
            lines.append(f"{key}: {e['msg']} (got {e.get('input')!r})")
        else:  # a rule across sections: the message says it all
            lines.append(str(e["msg"]).removeprefix("Value error, "))
    return ConfigError("invalid configuration:\n  " + "\n  ".join(lines))


def _parse_value(text: str) -> Any:
    """A TOML value (number, bool, array, quoted string), or the bare text as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``raw`` with each ``section.key=value`` (or ``key=value``) applied."""
    out: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r} (e.g. client.lr=0.1)")
        parts = key.strip().split(".")
        if len(parts) > 2:
            raise ConfigError(f"--set key {key!r} is too deep; use section.key, e.g. client.lr")
        if len(parts) == 2:
            section, name = parts
            if section not in _SECTIONS:
                raise ConfigError(
                    f"unknown section {section!r} in --set {item!r}; valid sections: "
                    f"{', '.join(_SECTIONS)}"
                )
            out.setdefault(section, {})[name] = _parse_value(value)
        else:
            out[parts[0]] = _parse_value(value)
    return out


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a TOML file (or start from the defaults), apply overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            raw = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {str(p)!r} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {str(p)!r} is not valid TOML: {e}") from None
    return validate_config(apply_overrides(raw, overrides))


def validate_config(raw: Mapping[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(dict(raw))
    except ValidationError as e:
        raise _explain(e) from None


def dump_config(config: RunConfig) -> str:
    """The resolved config as TOML (keys left at None are omitted); loads back to ``config``."""
    return tomli_w.dumps(config.model_dump(mode="json", exclude_none=True))
