"""The server's per-round checkpoint: :mod:`fedfleet.runs._checkpoint`, which simulation and
deployment share (one format, one atomic writer); re-exported here for the gRPC server."""

from fedfleet.runs._checkpoint import (
    CHECKPOINT_NAME,
    PAUSE_ENV,
    Checkpoint,
    load_checkpoint,
    save_checkpoint,
)

__all__ = ["CHECKPOINT_NAME", "PAUSE_ENV", "Checkpoint", "load_checkpoint", "save_checkpoint"]
