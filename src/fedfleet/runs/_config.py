"""Run configuration: a TOML file plus ``--set key=value`` overrides, validated up front.

Every section is a frozen pydantic model that forbids unknown keys; :func:`load_config` turns
pydantic's errors into one :class:`ConfigError` whose message lists the valid keys or values, so a
typo is caught before any data is loaded. ``[strategy]``, ``[data]`` and ``[model]`` are unions
keyed on their ``name``, built from the registries (:mod:`fedfleet.runs.algorithms`,
:mod:`fedfleet.runs._datasets`, :mod:`fedfleet.runs._models`): each name has its own keys, and the
rules across sections ask the registered entries for their capabilities. The defaults are the
README's main run: digits over 20 clients with Dirichlet(0.5) label skew, an MLP, FedAvg with 10
clients a round.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import (
    BaseModel,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from fedfleet.errors import ConfigError
from fedfleet.runs._datasets import DATASETS, DataParams, PartitionParams
from fedfleet.runs._models import MODELS, ModelParams
from fedfleet.runs._registry import Registry
from fedfleet.runs._sections import (
    CSV_REPLACES,
    ClientConfig,
    ClientsConfig,
    ClockConfig,
    CompensationConfig,
    DeadlineConfig,
    EvalConfig,
    PrivacyConfig,
    Section,
    SelectionConfig,
    TrackConfig,
)
from fedfleet.runs._user_code import BASE_DIR
from fedfleet.runs.algorithms import ALGORITHMS, StrategyParams

__all__ = [
    "ClientConfig",
    "ClientsConfig",
    "ClockConfig",
    "CompensationConfig",
    "DataParams",
    "DeadlineConfig",
    "EvalConfig",
    "ModelParams",
    "PrivacyConfig",
    "RunConfig",
    "SelectionConfig",
    "StrategyParams",
    "TrackConfig",
    "apply_overrides",
    "dump_config",
    "load_config",
    "validate_config",
]

_NAMED: dict[str, Registry[Any, Any]] = {"data": DATASETS, "model": MODELS, "strategy": ALGORITHMS}
"""The sections whose ``name`` picks a registered entry, and their registries."""


class RunConfig(Section):
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
    data: SerializeAsAny[DataParams] = DATASETS.validate({})
    """[data]: the dataset and how it is split across clients; keys depend on data.name."""
    model: SerializeAsAny[ModelParams] = MODELS.validate({})
    """[model]: the model; keys depend on model.name."""
    strategy: SerializeAsAny[StrategyParams] = ALGORITHMS.validate({})
    """[strategy]: the federated algorithm; keys depend on strategy.name."""
    client: ClientConfig = ClientConfig()
    eval: EvalConfig = EvalConfig()
    clock: ClockConfig = ClockConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    clients: ClientsConfig = ClientsConfig()
    deadline: DeadlineConfig = DeadlineConfig()
    selection: SelectionConfig = SelectionConfig()
    compensation: CompensationConfig = CompensationConfig()
    track: TrackConfig = TrackConfig()

    @field_validator("data", "model", "strategy", mode="before")
    @classmethod
    def _registered(cls, value: Any, info: ValidationInfo) -> Any:
        assert info.field_name is not None
        return _NAMED[info.field_name].validate(value, info.context)

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        s, d, m, p = self.strategy, self.data, self.model, self.privacy
        algorithm, dataset, model = ALGORITHMS[s.name], DATASETS[d.name], MODELS[m.name]
        if m.backend == "numpy" and not model.numpy:
            names = " or ".join(repr(n) for n in MODELS.names(lambda e: e.numpy))
            raise ValueError(f"model.backend = 'numpy' supports model.name = {names} only")
        if dataset.tokens != model.tokens:
            fits = " or ".join(map(repr, MODELS.names(lambda e: e.tokens == dataset.tokens)))
            what = "token windows (text)" if dataset.tokens else "numeric features"
            raise ValueError(
                f"model.name = {m.name!r} does not fit data.name = {d.name!r}, whose samples are "
                f"{what}; use model.name = {fits}"
            )
        if algorithm.needs_torch and m.backend != "torch":
            raise ValueError(
                f"strategy {s.name} needs model.backend = 'torch' ({algorithm.needs_torch})"
            )
        c, fields = self.clients, ClientsConfig.model_fields
        clash = [k for k in CSV_REPLACES if getattr(c, k) != fields[k].default]
        if c.profiles_csv is not None and clash:
            keys = ", ".join(f"clients.{k}" for k in clash)
            raise ValueError(
                f"clients.profiles_csv gives every client's speed, bandwidths, latency and "
                f"availability, so it would override {keys}: remove {keys}, or put the values "
                "in the CSV's columns (speed, download_bps, upload_bps, latency_s, availability)"
            )
        dl = self.deadline
        if dl.policy in ("drop", "partial") and dl.seconds is None:
            raise ValueError(f"deadline.policy = '{dl.policy}' needs deadline.seconds")
        if dl.policy == "overselect" and dl.keep is None:
            raise ValueError("deadline.policy = 'overselect' needs deadline.keep")
        if self.selection.method == "oort" and (
            self.selection.preferred_s is None and dl.seconds is None
        ):
            raise ValueError("selection.method = 'oort' needs selection.preferred_s or a deadline")
        if algorithm.asynchronous and (dl.policy != "none" or self.selection.method != "uniform"):
            raise ValueError(
                f"{s.name} runs its own clock: use [clock], not [deadline]/[selection]"
            )
        if p.local_noise_multiplier is not None and not algorithm.delta_only:
            names = ", ".join(ALGORITHMS.names(lambda e: e.delta_only))
            raise ValueError(
                "privacy.local_noise_multiplier (local DP) needs a strategy that uploads only "
                f"its delta: {names}"
            )
        if p.sgd_noise_multiplier is not None and (
            m.backend != "torch" or self.client.optimizer != "sgd"
        ):
            raise ValueError("DP-SGD needs model.backend = 'torch' and client.optimizer = 'sgd'")
        if algorithm.needs_noise and p.noise_multiplier is None and p.target_epsilon is None:
            raise ValueError(
                f"{s.name} needs privacy.noise_multiplier, or privacy.target_epsilon to "
                "calibrate it"
            )
        if self.device == "cuda" and (m.backend != "torch" or self.executor == "process"):
            raise ValueError(
                "device = 'cuda' needs model.backend = 'torch' and an in-process or Ray "
                "executor (CUDA does not survive the fork of executor = 'process')"
            )
        if self.executor in ("process", "ray") and algorithm.asynchronous:
            raise ValueError(
                f"executor = '{self.executor}' splits a synchronous round's cohort; {s.name} "
                f"runs its own asynchronous loop: use executor = 'auto' with {s.name}"
            )
        if dataset.population is not None and algorithm.asynchronous:
            raise ValueError(
                f"data.name = '{d.name}' is a population the synchronous engine generates as "
                f"it samples: use another strategy than {s.name}"
            )
        if isinstance(d, PartitionParams) and d.partition == "natural" and not dataset.natural:
            natural = ", ".join(DATASETS.names(lambda e: e.natural))
            raise ValueError(
                f"data.partition = 'natural' needs a dataset with its own users ({natural}); "
                f"{d.name} has none: use iid, dirichlet, shards or quantity"
            )
        if self.eval.federated_every and not d.held_out_clients():
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
        if e["type"] == "unknown_key":  # a named section's: the registry's message says it all
            lines.append(e["msg"])
        elif e["type"] == "extra_forbidden":
            section = loc[0] if len(loc) > 1 else None
            where = f"[{section}]" if section else "the top level"
            lines.append(f"unknown key {key!r}; valid keys in {where}: {_valid_keys(section)}")
        elif loc and isinstance(e.get("input"), Mapping):  # a rule within a section
            lines.append(f"{key}: {str(e['msg']).removeprefix('Value error, ')}")
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
    base_dir = Path(path).resolve().parent if path is not None else None
    return validate_config(apply_overrides(raw, overrides), base_dir=base_dir)


def validate_config(raw: Mapping[str, Any], *, base_dir: Path | None = None) -> RunConfig:
    """``raw`` validated; references to the user's code (``model.factory``, ``data.loader``)
    are resolved against ``base_dir`` (the config file's folder; default the working
    directory)."""
    try:
        return RunConfig.model_validate(dict(raw), context={BASE_DIR: base_dir})
    except ValidationError as e:
        raise _explain(e) from None


def dump_config(config: RunConfig) -> str:
    """The resolved config as TOML (keys left at None are omitted); loads back to ``config``."""
    return tomli_w.dumps(config.model_dump(mode="json", exclude_none=True))
