"""The round loop and its one extension point, the :class:`Transport`.

Simulation (:mod:`fedfleet.sim`) and deployment (:mod:`fedfleet.net`) are front ends of
:class:`RoundLoop`: they differ only in the transport they hand it and where they keep state.
"""

from fedfleet.rounds._buffered import Arrival, AsyncTransport, BufferedLoop, Dispatch
from fedfleet.rounds._loop import (
    TIMING_KEYS,
    LoopState,
    Pacer,
    RoundLoop,
    round_record,
    weighted_train_loss,
)
from fedfleet.rounds._transport import (
    Aggregate,
    EvaluateJob,
    FitJob,
    FitReplies,
    FunctionTransport,
    Transport,
    as_transport,
    client_seed,
    evaluation_rng,
    plan_metrics,
    sampling_rng,
)

__all__ = [
    "TIMING_KEYS",
    "Aggregate",
    "Arrival",
    "AsyncTransport",
    "BufferedLoop",
    "Dispatch",
    "EvaluateJob",
    "FitJob",
    "FitReplies",
    "FunctionTransport",
    "LoopState",
    "Pacer",
    "RoundLoop",
    "Transport",
    "as_transport",
    "client_seed",
    "evaluation_rng",
    "plan_metrics",
    "round_record",
    "sampling_rng",
    "weighted_train_loss",
]
