"""Federated algorithms as small strategy pieces over one protocol.

FedAvg and its server-optimizer variants (FedAvgM, FedAdam, FedYogi, FedAdagrad) and FedProx are
configured ``FedAvg`` instances; SCAFFOLD, FedNova, q-FedAvg, DP-FedAvg, Byzantine-robust FedAvg
(median, trimmed mean, Krum) and the personalising wrappers FedPer/FedRep are their own small
strategies. FedBuff (asynchronous) is :class:`FedBuff`, run by the
round loop's asynchronous mode (:class:`fedfleet.rounds.BufferedLoop`).

Each is composed of shared pieces: a sampler (:mod:`~fedfleet.strategies._sampling`), a client
program (plain training, or training then a client-side transform such as clipping), an
aggregator (:mod:`~fedfleet.strategies._aggregators`) and server transforms
(:mod:`fedfleet.transforms`: DP noise and adaptive clipping, the server optimizer).
"""

from fedfleet.strategies._aggregators import weighted_mean
from fedfleet.strategies._base import (
    ClientResult,
    ClientUpdate,
    EvaluateAll,
    Strategy,
    StrategyState,
    plain_client_fit,
)
from fedfleet.strategies._compensation import Compensation, MoreEpochs, ScaleLR
from fedfleet.strategies._dpfedavg import AdaptiveClipping, DPFedAvg
from fedfleet.strategies._fedavg import FedAvg
from fedfleet.strategies._fedbuff import FedBuff
from fedfleet.strategies._fednova import FedNova
from fedfleet.strategies._fedopt import fedadagrad, fedadam, fedavgm, fedyogi
from fedfleet.strategies._fedprox import fedprox
from fedfleet.strategies._he_fedavg import HEFedAvg, decrypt_aggregate
from fedfleet.strategies._personal import FedPer, FedRep, head_mask
from fedfleet.strategies._qfedavg import QFedAvg
from fedfleet.strategies._robust import Krum, Median, RobustFedAvg, TrimmedMean
from fedfleet.strategies._sampling import cohort_size, sample_clients
from fedfleet.strategies._scaffold import Scaffold
from fedfleet.strategies._selection import AvailableOnly, OortSelection
from fedfleet.strategies._stragglers import Stragglers
from fedfleet.strategies._weighting import Reweighted, by_samples, by_steps, uniform

__all__ = [
    "AdaptiveClipping",
    "AvailableOnly",
    "ClientResult",
    "ClientUpdate",
    "Compensation",
    "DPFedAvg",
    "EvaluateAll",
    "FedAvg",
    "FedBuff",
    "FedNova",
    "FedPer",
    "FedRep",
    "HEFedAvg",
    "Krum",
    "Median",
    "MoreEpochs",
    "OortSelection",
    "QFedAvg",
    "Reweighted",
    "RobustFedAvg",
    "Scaffold",
    "ScaleLR",
    "Stragglers",
    "Strategy",
    "StrategyState",
    "TrimmedMean",
    "by_samples",
    "by_steps",
    "cohort_size",
    "decrypt_aggregate",
    "fedadagrad",
    "fedadam",
    "fedavgm",
    "fedprox",
    "fedyogi",
    "head_mask",
    "plain_client_fit",
    "sample_clients",
    "uniform",
    "weighted_mean",
]
