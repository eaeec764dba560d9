"""Vertical federated learning: parties holding different features of the same people.

Each protocol is one program per party over a :class:`Channel`; :class:`LocalNetwork` runs the
parties in one process (every message encoded as it would travel, and logged), the gRPC relay
(:mod:`fedfleet.vertical.net`) across machines with mutual TLS.
"""

from fedfleet._codec.frame import Message
from fedfleet.vertical._channel import (
    Channel,
    Delivery,
    LocalNetwork,
    PartyError,
    array_to_ints,
    ints_to_array,
    run_parties,
)
from fedfleet.vertical._party import PartyData, VerticalProtocol, align, split_columns
from fedfleet.vertical._split_nn import SplitNN, SplitNNResult

__all__ = [
    "Channel",
    "Delivery",
    "LocalNetwork",
    "Message",
    "PartyData",
    "PartyError",
    "SplitNN",
    "SplitNNResult",
    "VerticalProtocol",
    "align",
    "array_to_ints",
    "ints_to_array",
    "run_parties",
    "split_columns",
]
