"""Client system profiles: how fast, how well connected and how often online each client is.

A profile gives client k a compute ``speed[k]`` (1 = the reference device), download and upload
bandwidths (bytes/s), a one-way ``latency[k]`` (s, paid once per transfer) and an availability:
the probability ``availability[k]`` of being online in a round, or an on/off ``trace`` of shape
``[num_clients, T]`` (round r uses column ``(r - 1) % T``). One round trip of client k with
``s`` local steps on a model of ``b`` bytes takes

    t_k = (latency_k + b / down_k) + s * time_per_step / speed_k + (latency_k + b / up_k)

simulated seconds (:meth:`ClientProfiles.duration`); this generalises
:class:`fedfleet.sim.ClientTimes` (latency 0, one bandwidth both ways, always online).

Profiles come from :class:`ProfileSpec` (lognormal draws around a median with a given *spread*,
the ratio of the 95th to the 5th percentile: ``sigma = ln(spread) / (2 * 1.645)``, so a 10x
spread is sigma = 0.70) or from a CSV with one row per client (:func:`load_profiles_csv`).

Random keys (``np.random.SeedSequence(seed, spawn_key=...)``), disjoint from the engine's
(sampling ``(r, 0)``, clients ``(r, 1, c)``, FedBuff speeds ``(0, 2)``):

    (0, 3, f)   profile field f (0 speed, 1 download, 2 upload, 3 latency, 4 availability)
    (r, 4)      who is online in round r (one uniform per client: online iff u_k < p_k)
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedfleet.client import FitInstructions
from fedfleet.errors import ConfigError

__all__ = [
    "ClientProfiles",
    "Lognormal",
    "ProfileSpec",
    "load_profiles_csv",
    "planned_steps",
    "spread_sigma",
]

_Z95 = 1.6448536269514722  # the standard normal's 95th percentile
_FIELDS = ("speed", "download", "upload", "latency", "availability")
CSV_COLUMNS = ("speed", "download_bps", "upload_bps", "latency_s", "availability")


def spread_sigma(spread: float) -> float:
    """The lognormal sigma whose 95th/5th percentile ratio is ``spread`` (>= 1)."""
    if not (math.isfinite(spread) and spread >= 1.0):
        raise ConfigError(
            f"profiles: a spread is a ratio >= 1 (95th / 5th percentile), got {spread}"
        )
    return math.log(spread) / (2 * _Z95)


def planned_steps(instructions: FitInstructions, num_samples: int) -> int:
    """Local steps a client with ``num_samples`` samples takes for ``instructions``:
    ``epochs * ceil(n / batch_size)``, capped at ``max_steps`` (the trainers' loop)."""
    steps = instructions.epochs * math.ceil(num_samples / instructions.batch_size)
    return steps if instructions.max_steps is None else min(steps, instructions.max_steps)


@dataclass(frozen=True, kw_only=True)
class Lognormal:
    """``median * exp(sigma * z)``, ``z ~ N(0, 1)``, ``sigma = spread_sigma(spread)``.

    Attributes:
        median: the median value (> 0; ``inf`` for free transfers).
        spread: 95th / 5th percentile ratio; 1 gives every client the median.
    """

    median: float
    spread: float = 1.0

    def __post_init__(self) -> None:
        if not self.median > 0:
            raise ConfigError(f"profiles: a median must be > 0, got {self.median}")
        spread_sigma(self.spread)

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.spread == 1.0 or math.isinf(self.median):
            return np.full(n, float(self.median))
        return self.median * rng.lognormal(0.0, spread_sigma(self.spread), n)


@dataclass(frozen=True, eq=False)
class ClientProfiles:
    """Drawn (or loaded) system profiles of ``num_clients`` clients; arrays indexed by id.

    Attributes:
        speed: compute speed (> 0); a step takes ``time_per_step / speed`` seconds.
        download, upload: bandwidth in bytes/s (> 0, ``inf``: free).
        latency: seconds added to each transfer (>= 0).
        availability: probability of being online in a round, in [0, 1].
        time_per_step: seconds of one local step at speed 1.
        trace: optional bool ``[num_clients, T]`` on/off trace; overrides ``availability``.
    """

    speed: np.ndarray
    download: np.ndarray
    upload: np.ndarray
    latency: np.ndarray
    availability: np.ndarray
    time_per_step: float = 1.0
    trace: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.speed)
        for name in ("speed", "download", "upload", "latency", "availability"):
            a = getattr(self, name)
            if np.shape(a) != (n,):
                raise ConfigError(f"profiles: {name} has shape {np.shape(a)}, expected ({n},)")
        checks = {
            "speed": np.isfinite(self.speed) & (self.speed > 0),
            "download": self.download > 0,
            "upload": self.upload > 0,
            "latency": np.isfinite(self.latency) & (self.latency >= 0),
            "availability": (self.availability >= 0) & (self.availability <= 1),
        }
        for name, ok in checks.items():
            if not ok.all():
                k = int(np.argmin(ok))
                raise ConfigError(
                    f"profiles: client {k} has {name} {getattr(self, name)[k]!r}; speeds must be "
                    "> 0, bandwidths > 0 (inf: free), latency >= 0, availability in [0, 1]"
                )
        if not (math.isfinite(self.time_per_step) and self.time_per_step > 0):
            raise ConfigError(f"profiles: time_per_step must be > 0, got {self.time_per_step}")
        if self.trace is not None and (self.trace.ndim != 2 or self.trace.shape[0] != n):
            raise ConfigError(
                f"profiles: trace has shape {self.trace.shape}, expected ({n}, T) for {n} clients"
            )

    @property
    def num_clients(self) -> int:
        return len(self.speed)

    def transfer_time(self, cid: int, num_bytes: int) -> float:
        """Download plus upload of ``num_bytes`` each way, latencies included."""
        down = self.latency[cid] + num_bytes / self.download[cid]
        return float(down + self.latency[cid] + num_bytes / self.upload[cid])

    def duration(self, cid: int, num_steps: int, num_bytes: int) -> float:
        """Simulated seconds of client ``cid``'s round trip (see the module docstring)."""
        compute = num_steps * self.time_per_step / self.speed[cid]
        return float(self.transfer_time(cid, num_bytes) + compute)

    def round_time(self, cids: Sequence[int], num_steps: Sequence[int], num_bytes: int) -> float:
        """A synchronous round's duration: the server waits for the slowest client (0 if none)."""
        return max(
            (self.duration(c, s, num_bytes) for c, s in zip(cids, num_steps, strict=True)),
            default=0.0,
        )

    def steps_within(self, cid: int, budget_s: float, num_bytes: int) -> int:
        """The most local steps client ``cid`` can take and still finish within ``budget_s``
        (0 when the transfers alone do not fit)."""
        left = budget_s - self.transfer_time(cid, num_bytes)
        if left <= 0:
            return 0
        # the small slack absorbs float error when a step count fits exactly
        return math.floor(left * self.speed[cid] / self.time_per_step * (1 + 1e-12))

    def online(self, rnd: int, seed: int) -> np.ndarray:
        """Bool mask of the clients online in round ``rnd`` (key ``(rnd, 4)``, or the trace)."""
        if self.trace is not None:
            return np.asarray(self.trace[:, (rnd - 1) % self.trace.shape[1]], dtype=bool)
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(rnd, 4)))
        return rng.random(self.num_clients) < self.availability

    def available(self, clients: Sequence[int], rnd: int, seed: int) -> list[int]:
        """Those of ``clients`` online in round ``rnd``, in the given order."""
        mask = self.online(rnd, seed)
        return [c for c in clients if mask[c]]


@dataclass(frozen=True, kw_only=True)
class ProfileSpec:
    """Distributions to draw :class:`ClientProfiles` from.

    Attributes:
        time_per_step: seconds of one local step at speed 1.
        speed: compute speeds (median 1; ``spread=10`` for a 10x spread).
        download, upload: bandwidths in bytes/s.
        latency: seconds per transfer (``median`` > 0; use ``spread=1`` for a constant).
        availability: probability of being online per round, the same for every client.

    Examples:
        >>> spec = ProfileSpec(speed=Lognormal(median=1.0, spread=10.0), availability=0.8)
        >>> profiles = spec.sample(num_clients=100, seed=0)
    """

    time_per_step: float = 1.0
    speed: Lognormal = Lognormal(median=1.0)
    download: Lognormal = Lognormal(median=math.inf)
    upload: Lognormal = Lognormal(median=math.inf)
    latency: float | Lognormal = 0.0
    availability: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.availability <= 1.0:
            raise ConfigError(f"profiles: availability must be in [0, 1], got {self.availability}")

    def sample(self, num_clients: int, seed: int) -> ClientProfiles:
        """Draw every client's profile; each field from its own key ``(0, 3, f)``."""

        def rng(f: str) -> np.random.Generator:
            key = (0, 3, _FIELDS.index(f))
            return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))

        if isinstance(self.latency, Lognormal):
            latency = self.latency.draw(num_clients, rng("latency"))
        else:
            latency = np.full(num_clients, float(self.latency))
        return ClientProfiles(
            speed=self.speed.draw(num_clients, rng("speed")),
            download=self.download.draw(num_clients, rng("download")),
            upload=self.upload.draw(num_clients, rng("upload")),
            latency=latency,
            availability=np.full(num_clients, float(self.availability)),
            time_per_step=self.time_per_step,
        )


def load_profiles_csv(
    path: str | Path, *, time_per_step: float = 1.0, num_clients: int | None = None
) -> ClientProfiles:
    """Profiles from a CSV with a header and one row per client, in client-id order.

    Columns: ``speed``, ``download_bps``, ``upload_bps`` (required), ``latency_s`` (default 0),
    ``availability`` (default 1); an optional ``client_id`` column must read 0, 1, 2, ...
    ``inf`` is accepted for bandwidths. Errors name the file, row and column.
    """
    path = Path(path)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in CSV_COLUMNS[:3] if c not in header]
        if missing:
            raise ConfigError(f"{path}: missing column(s) {missing}; the header is {header}")
        unknown = [c for c in header if c not in (*CSV_COLUMNS, "client_id")]
        if unknown:
            raise ConfigError(
                f"{path}: unknown column(s) {unknown}; valid: {['client_id', *CSV_COLUMNS]}"
            )
        cols: dict[str, list[float]] = {c: [] for c in CSV_COLUMNS}
        defaults = {"latency_s": 0.0, "availability": 1.0}
        for i, row in enumerate(reader):
            line = i + 2  # the header is line 1
            if "client_id" in row and row["client_id"] is not None:
                if row["client_id"].strip() != str(i):
                    raise ConfigError(
                        f"{path}, line {line}: client_id {row['client_id']!r}, expected {i}; "
                        "rows must list clients 0, 1, 2, ... in order"
                    )
            for c in CSV_COLUMNS:
                raw = row.get(c)
                if raw is None or raw.strip() == "":
                    if c in defaults:
                        cols[c].append(defaults[c])
                        continue
                    raise ConfigError(f"{path}, line {line}: column {c!r} is empty")
                try:
                    cols[c].append(float(raw))
                except ValueError:
                    raise ConfigError(
                        f"{path}, line {line}: column {c!r} is {raw!r}, not a number"
                    ) from None
    n = len(cols["speed"])
    if num_clients is not None and n != num_clients:
        raise ConfigError(f"{path}: {n} client rows for a federation of {num_clients} clients")
    try:
        return ClientProfiles(
            speed=np.asarray(cols["speed"]),
            download=np.asarray(cols["download_bps"]),
            upload=np.asarray(cols["upload_bps"]),
            latency=np.asarray(cols["latency_s"]),
            availability=np.asarray(cols["availability"]),
            time_per_step=time_per_step,
        )
    except ConfigError as err:  # say which row of the file
        raise ConfigError(f"{path}: {err} (client k is on line k + 2)") from None
