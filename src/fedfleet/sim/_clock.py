"""A minimal client timing model for simulated clocks.

One round trip of client k (download the model, train, upload the update) takes

    download + num_steps * time_per_step / speed_k + upload,
    download = upload = model_bytes / bandwidth_k

simulated seconds. Speeds are lognormal, ``speed_k = exp(sigma * z_k)`` with ``z_k ~ N(0, 1)``
drawn from the run seed (``SeedSequence(seed, spawn_key=(0, 2))``), so ``speed_sigma`` sets the
spread: sigma = 0.7 puts the 95th percentile speed about 10x above the 5th (``exp(2 * 1.645 *
0.7)``). Bandwidth is one number for every client or one per client. Fuller system profiles
(separate download and upload bandwidths, latency, availability) are
:class:`fedfleet.sim.ClientProfiles`; :meth:`ClientClock.profiles` turns a clock into
them, so the synchronous engine and FedBuff can run the very same clients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

import fedfleet._streams as _streams
from fedfleet.errors import ConfigError
from fedfleet.sim._profiles import ClientProfiles

__all__ = ["ClientClock", "ClientTimes"]


@dataclass(frozen=True, kw_only=True)
class ClientClock:
    """How long clients take, before it is drawn for a run's clients.

    Attributes:
        time_per_step: simulated seconds of one local step on a speed-1 client.
        speed_sigma: sigma of the lognormal client speeds; 0 runs every client at speed 1.
        speeds: explicit per-client speeds (one per client, > 0); overrides ``speed_sigma``.
        bandwidth: bytes per second each way, one number for all clients or one per client;
            ``inf`` makes transfers free.

    Examples:
        >>> times = ClientClock(time_per_step=0.1, speed_sigma=0.7).sample(num_clients=100, seed=0)
        >>> seconds = times.duration(cid=3, num_steps=20, num_bytes=4 * 101_770)
    """

    time_per_step: float = 1.0
    speed_sigma: float = 0.0
    speeds: tuple[float, ...] | None = None
    bandwidth: float | tuple[float, ...] = math.inf

    def __post_init__(self) -> None:
        if not (math.isfinite(self.time_per_step) and self.time_per_step > 0):
            raise ConfigError(f"clock: time_per_step must be > 0, got {self.time_per_step}")
        if not (math.isfinite(self.speed_sigma) and self.speed_sigma >= 0):
            raise ConfigError(f"clock: speed_sigma must be >= 0, got {self.speed_sigma}")
        if self.speeds is not None and not all(math.isfinite(s) and s > 0 for s in self.speeds):
            raise ConfigError(f"clock: every speed must be finite and > 0, got {self.speeds}")
        bandwidths = self.bandwidth if isinstance(self.bandwidth, tuple) else (self.bandwidth,)
        if not all(b > 0 for b in bandwidths):
            raise ConfigError(f"clock: bandwidth must be > 0 (inf: free), got {self.bandwidth}")

    def sample(self, num_clients: int, seed: int) -> ClientTimes:
        """Each client's speed and bandwidth for a run with ``num_clients`` clients."""
        if self.speeds is not None:
            speed = _per_client("speeds", self.speeds, num_clients)
        elif self.speed_sigma == 0.0:
            speed = np.ones(num_clients)
        else:
            rng = _streams.generator(seed, _streams.clock_speeds())
            speed = rng.lognormal(0.0, self.speed_sigma, num_clients)
        if isinstance(self.bandwidth, tuple):
            bandwidth = _per_client("bandwidth", self.bandwidth, num_clients)
        else:
            bandwidth = np.full(num_clients, float(self.bandwidth))
        return ClientTimes(speed, bandwidth, self.time_per_step)

    def profiles(self, num_clients: int, seed: int) -> ClientProfiles:
        """The clients of :meth:`sample` as :class:`ClientProfiles` (the bandwidth both ways,
        no latency, always online), for ``Simulation(..., profiles=...)``."""
        times = self.sample(num_clients, seed)
        return ClientProfiles(
            speed=times.speed,
            download=times.bandwidth,
            upload=times.bandwidth.copy(),
            latency=np.zeros(num_clients),
            availability=np.ones(num_clients),
            time_per_step=self.time_per_step,
        )


@dataclass(frozen=True, eq=False)
class ClientTimes:
    """A clock drawn for one run: ``speed[k]`` and ``bandwidth[k]`` (bytes/s) of client k."""

    speed: np.ndarray
    bandwidth: np.ndarray
    time_per_step: float

    def duration(self, cid: int, num_steps: int, num_bytes: int) -> float:
        """Simulated seconds for client ``cid`` to download ``num_bytes``, take ``num_steps``
        local steps and upload ``num_bytes``."""
        transfer = num_bytes / self.bandwidth[cid]
        return float(transfer + num_steps * self.time_per_step / self.speed[cid] + transfer)

    def round_time(self, cids: list[int], num_steps: list[int], num_bytes: int) -> float:
        """A synchronous round's duration: the server waits for the slowest client."""
        return max(
            (self.duration(c, s, num_bytes) for c, s in zip(cids, num_steps, strict=True)),
            default=0.0,
        )


def _per_client(name: str, values: tuple[float, ...], num_clients: int) -> np.ndarray:
    if len(values) != num_clients:
        raise ConfigError(
            f"clock: {len(values)} {name} for {num_clients} clients; give one per client"
        )
    return np.asarray(values, dtype=np.float64)
