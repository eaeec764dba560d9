"""Every random stream fedfleet draws from, named in one place.

A stream is a NumPy ``SeedSequence(root, spawn_key=key)``: the same root and key give the same
numbers, so two purposes that share a root must never share a key (before this registry, local
DP and DP-SGD noise both used key ``(1,)`` under the client's seed, and SecAgg's round graph used
the client-sampling key ``(r, 0)``). Roots:

- ``"run"``: the run's seed (``RunConfig.seed``, ``Simulation.seed``);
- ``"client"``: a client's seed for one round, :func:`client_training` of the run seed
  (the trainer's batches use the root itself, key ``()``, through ``default_rng(seed)``);
- ``"synthetic"``: ``[SYNTHETIC_ENTROPY, seed]``, the Synthetic(alpha, beta) data generator;
- ``"secagg_entropy"``: the simulation-only seed of SecAgg clients' secrets.

:data:`REGISTRY` lists every stream with its root; a test enumerates it and checks that no two
keys under one root coincide. Add a stream here first, then use it.

    run seed            (r, 0)      client sampling of round r (FedBuff: dispatch r)
                        (r, 1, c)   client c's seed in round r
                        (r, 1)      SecAgg's central DP noise in round r
                        (r,)        DPFedAvg's central DP noise in round r
                        (0, 2)      FedBuff clock speeds
                        (0, 3, f)   client profile field f (fedfleet.sim._profiles)
                        (r, 4)      who is online in round r (fedfleet.sim._profiles)
                        (r, 5)      SecAgg's neighbour graph and dropouts in round r
                        (r, 6)      who evaluates after round r (configure_evaluate)
    client seed         ()          local training batches (and torch's initial seed)
                        (1,)        local DP noise
                        (2,)        DP-SGD gradient noise
                        (3,)        FedRep's head-phase training seed
    synthetic           (0, k)      device k;  (1,): the IID variant's shared model
    secagg entropy      (c,)        client c's secrets
    vertical table      (1, k)      which people vertical party k holds, in its order
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np

__all__ = [
    "DPSGD_NOISE",
    "FEDREP_HEAD",
    "LOCAL_DP_NOISE",
    "REGISTRY",
    "SYNTHETIC_ENTROPY",
    "TRAINING",
    "VERTICAL_TABLE_ENTROPY",
    "availability",
    "central_dp_noise",
    "client_training",
    "clock_speeds",
    "derive_seed",
    "evaluation_sampling",
    "generator",
    "profile_field",
    "sampling",
    "secagg_client_entropy",
    "secagg_dp_noise",
    "secagg_round",
    "synthetic_device",
    "synthetic_shared",
    "vertical_party_records",
    "vertical_table_stream",
]

Key = tuple[int, ...]
Root = Literal["run", "client", "synthetic", "secagg_entropy", "split_nn", "vertical_table"]


# --- under the run seed -------------------------------------------------------------------


def sampling(rnd: int) -> Key:
    """Client sampling of round ``rnd`` (FedBuff's dispatch ``rnd``, HE-FedAvg's round)."""
    return (rnd, 0)


def client_training(rnd: int, cid: int) -> Key:
    """The key client ``cid``'s seed for round ``rnd`` is generated from."""
    return (rnd, 1, cid)


def secagg_dp_noise(rnd: int) -> Key:
    """SecAggFedAvg's central DP noise on round ``rnd``'s unmasked sum."""
    return (rnd, 1)


def central_dp_noise(rnd: int) -> Key:
    """DPFedAvg's central DP noise in round ``rnd`` (root: its ``noise_seed``, the run seed)."""
    return (rnd,)


def clock_speeds() -> Key:
    """FedBuff's client compute speeds (:class:`fedfleet.sim.ClientClock`)."""
    return (0, 2)


def profile_field(field: int) -> Key:
    """Client profile field ``field`` (0 speed, 1 download, 2 upload, 3 latency, 4 availability)."""
    return (0, 3, field)


def availability(rnd: int) -> Key:
    """Who is online in round ``rnd`` (one uniform per client)."""
    return (rnd, 4)


def secagg_round(rnd: int) -> Key:
    """SecAgg's neighbour graph and simulated dropouts in round ``rnd`` (was ``(rnd, 0)``, the
    sampling key: the graph then replayed the cohort draw)."""
    return (rnd, 5)


def evaluation_sampling(rnd: int) -> Key:
    """Which clients evaluate after round ``rnd`` (a ``configure_evaluate`` that samples)."""
    return (rnd, 6)


# --- under a client's seed ------------------------------------------------------------------

TRAINING: Key = ()
"""Local training's batches: ``default_rng(seed)`` is ``SeedSequence(seed)``, the root."""
LOCAL_DP_NOISE: Key = (1,)
"""Local DP's noise on the uploaded delta."""
DPSGD_NOISE: Key = (2,)
"""DP-SGD's gradient noise (was ``(1,)``, local DP's key: with both on, the draws were equal)."""
FEDREP_HEAD: Key = (3,)
"""FedRep's head phase trains with a seed generated from this key (was ``(1,)``)."""


# --- other roots ----------------------------------------------------------------------------

SYNTHETIC_ENTROPY = 0x53594E
"""'SYN': the synthetic data's root is ``[SYNTHETIC_ENTROPY, seed]``, apart from the run's."""


def synthetic_device(k: int) -> Key:
    """Synthetic(alpha, beta) device ``k``."""
    return (0, k)


def synthetic_shared() -> Key:
    """The IID variant's shared W, b."""
    return (1,)


SPLIT_NN_ENTROPY = 0x53504C
"""'SPL': split learning's root is ``[SPLIT_NN_ENTROPY, seed]``; keys ``(0, i)``: party i's
bottom init, ``(1,)``: the top's init, ``(2,)``: the test split, ``(3, e)``: epoch e's batch
order, ``(4, i)``: party i's activation noise, ``(5, i)``: the guest's noise on the gradients it
sends party i (:mod:`fedfleet.vertical`: every party derives them, nothing is exchanged)."""


def split_nn(*key: int) -> Key:
    """A split-learning stream's key (see :data:`SPLIT_NN_ENTROPY`)."""
    return tuple(key)


def split_nn_stream(seed: int, *key: int) -> np.random.SeedSequence:
    """Split learning's stream ``key`` under the run's ``seed``."""
    return np.random.SeedSequence([SPLIT_NN_ENTROPY, seed], spawn_key=split_nn(*key))


VERTICAL_TABLE_ENTROPY = 0x564552
"""'VER': a vertical task's table root is ``[VERTICAL_TABLE_ENTROPY, seed]``: key ``()`` the
synthetic table (:mod:`fedfleet.vertical._task`), ``(1, k)`` which people party k holds and in
what order (:func:`vertical_party_records`)."""


def vertical_party_records(k: int) -> Key:
    """Party ``k``'s share of the people of a vertical task, and its row order."""
    return (1, k)


def vertical_table_stream(seed: int, key: Key) -> np.random.SeedSequence:
    """A vertical task table's stream ``key`` under the task's ``seed``."""
    return np.random.SeedSequence([VERTICAL_TABLE_ENTROPY, seed], spawn_key=key)


def secagg_client_entropy(cid: int) -> Key:
    """Client ``cid``'s secrets in a seeded (simulation-only) SecAgg run."""
    return (cid,)


# --- using them -----------------------------------------------------------------------------


def generator(root: int | list[int], key: Key) -> np.random.Generator:
    """``default_rng(SeedSequence(root, spawn_key=key))``."""
    return np.random.default_rng(np.random.SeedSequence(root, spawn_key=key))


def derive_seed(root: int, key: Key) -> int:
    """A 32-bit seed generated from stream ``key`` of ``root`` (for a callee that takes a seed)."""
    return int(np.random.SeedSequence(root, spawn_key=key).generate_state(1)[0])


KeyFn = Callable[..., Key]

REGISTRY: dict[str, tuple[Root, KeyFn]] = {
    "sampling": ("run", sampling),
    "client_training": ("run", client_training),
    "secagg_dp_noise": ("run", secagg_dp_noise),
    "central_dp_noise": ("run", central_dp_noise),
    "clock_speeds": ("run", clock_speeds),
    "profile_field": ("run", profile_field),
    "availability": ("run", availability),
    "secagg_round": ("run", secagg_round),
    "evaluation_sampling": ("run", evaluation_sampling),
    "training": ("client", lambda: TRAINING),
    "local_dp_noise": ("client", lambda: LOCAL_DP_NOISE),
    "dpsgd_noise": ("client", lambda: DPSGD_NOISE),
    "fedrep_head": ("client", lambda: FEDREP_HEAD),
    "synthetic_device": ("synthetic", synthetic_device),
    "synthetic_shared": ("synthetic", synthetic_shared),
    "secagg_client_entropy": ("secagg_entropy", secagg_client_entropy),
    "split_nn": ("split_nn", split_nn),
    "vertical_party_records": ("vertical_table", vertical_party_records),
}
"""Every stream: name -> (root, key function of the stream's indices: round, client, ...)."""
