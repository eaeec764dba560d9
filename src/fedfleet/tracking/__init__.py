"""Experiment tracking: a run's config, every round's metrics and the per-client evaluations
sent to TensorBoard or MLflow (the ``fedfleet[track]`` extra), beside ``metrics.jsonl``.

A :class:`Tracker` has four methods, each fed by a hook the engine already has::

    tb = TensorBoardTracker("runs/demo/tensorboard")
    tb.log_params(config.model_dump(mode="json"))
    sim.run(rounds, on_round=tb.log_round, on_evaluation=tb.log_evaluation)
    tb.close()

``fedfleet run`` builds them from the config's ``[track]`` section (:func:`open_trackers`).
The libraries are imported only when a tracker is made, never by ``import fedfleet``.
"""

from __future__ import annotations

from fedfleet.tracking._base import Tracker, Trackers, flatten_params, round_metrics
from fedfleet.tracking._mlflow import MLflowTracker
from fedfleet.tracking._tensorboard import TensorBoardTracker

__all__ = [
    "MLflowTracker",
    "TensorBoardTracker",
    "Tracker",
    "Trackers",
    "flatten_params",
    "round_metrics",
]
