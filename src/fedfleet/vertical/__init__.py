"""Vertical federated learning: parties holding different features of the same people.

Each protocol is one program per party over a :class:`Channel`; :class:`LocalNetwork` runs the
parties in one process (every message encoded as it would travel, and logged), the gRPC relay
(:mod:`fedfleet.vertical._net`) across machines with mutual TLS.
"""

from fedfleet._codec import Message
from fedfleet.vertical._boost import BoostSettings, PlainTree, fit_plain, predict_plain
from fedfleet.vertical._channel import (
    Channel,
    Delivery,
    LocalNetwork,
    PartyError,
    array_to_ints,
    ints_to_array,
    run_parties,
)
from fedfleet.vertical._hetero_lr import HeteroLinear, HeteroLR, HeteroPredict, PartyWeights
from fedfleet.vertical._party import PartyData, VerticalProtocol, align, split_columns
from fedfleet.vertical._psi import Psi, psi_hash
from fedfleet.vertical._run import run_party, simulate
from fedfleet.vertical._secureboost import (
    SecureBoost,
    SecureBoostHostModel,
    SecureBoostModel,
    prediction_programs,
)
from fedfleet.vertical._split_nn import SplitNN, SplitNNResult

__all__ = [
    "BoostSettings",
    "Channel",
    "Delivery",
    "HeteroLR",
    "HeteroLinear",
    "HeteroPredict",
    "LocalNetwork",
    "Message",
    "PartyData",
    "PartyError",
    "PartyWeights",
    "PlainTree",
    "Psi",
    "SecureBoost",
    "SecureBoostHostModel",
    "SecureBoostModel",
    "SplitNN",
    "SplitNNResult",
    "VerticalProtocol",
    "align",
    "array_to_ints",
    "fit_plain",
    "ints_to_array",
    "predict_plain",
    "prediction_programs",
    "psi_hash",
    "run_parties",
    "run_party",
    "simulate",
    "split_columns",
]
