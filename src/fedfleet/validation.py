"""Validation of client updates before they reach aggregation.

Shared by every transport: the simulation engine runs it on in-memory updates and the network
server on decoded messages, so a malformed update is rejected the same way wherever it comes from.
"""

from __future__ import annotations

from collections.abc import Container

import numpy as np

from fedfleet.client import FitInstructions
from fedfleet.errors import UpdateRejected
from fedfleet.params import Layout
from fedfleet.strategies._base import ClientUpdate

__all__ = ["validate_update"]


def validate_update(
    update: ClientUpdate,
    layout: Layout,
    rnd: int,
    expected_clients: Container[int],
    max_samples: int | None = None,
    instructions: FitInstructions | None = None,
    max_norm: float | None = None,
) -> None:
    """Raise :class:`UpdateRejected` naming the client and round unless ``update`` is usable.

    Checks: the client was asked to train this round; the delta and every extra upload are 1-D
    float32 arrays of the layout's size with only finite values; the sample and step counts are
    positive integers, the sample count is no larger than what the client is known to hold
    (``max_samples``) and the step count no larger than its ``instructions`` allow; every
    reported metric is a finite number (a trainer with nothing to report omits the metric
    rather than sending NaN); with ``max_norm``, the delta's L2 norm is at most that bound
    (``strategy.max_update_norm``), so one client cannot swamp the average with a huge update.
    """

    def reject(reason: str) -> UpdateRejected:
        return UpdateRejected(update.client_id, rnd, reason)

    if update.client_id not in expected_clients:
        raise reject("this client was not selected for the round")
    delta = update.delta
    if not isinstance(delta, np.ndarray):
        raise reject(f"delta is a {type(delta).__name__}, expected a numpy array")
    if delta.shape != (layout.size,):
        raise reject(
            f"delta has shape {delta.shape}, expected ({layout.size},) for model layout "
            f"{layout.fingerprint}; is the client running another model?"
        )
    if delta.dtype != np.float32:
        raise reject(
            f"delta has dtype {delta.dtype}, expected float32; cast the trained vector with "
            ".astype(np.float32) before sending"
        )
    if not np.isfinite(delta).all():
        bad = int(np.size(delta) - np.isfinite(delta).sum())
        raise reject(f"delta has {bad} non-finite values (NaN or Inf)")
    if max_norm is not None:
        norm = float(np.linalg.norm(delta))
        if norm > max_norm:
            raise reject(
                f"delta has L2 norm {norm:.6g}, above the bound {max_norm:g} "
                "(strategy.max_update_norm); the update is left out of the round"
            )
    n = update.num_samples
    if not isinstance(n, int | np.integer) or n <= 0:
        raise reject(f"num_samples must be a positive integer, got {n!r}")
    if max_samples is not None and n > max_samples:
        raise reject(f"declared {n} samples but holds only {max_samples}")
    if not isinstance(update.num_steps, int | np.integer) or update.num_steps < 0:
        raise reject(f"num_steps must be a non-negative integer, got {update.num_steps!r}")
    if instructions is not None:
        most = instructions.epochs * -(-int(n) // instructions.batch_size)
        if instructions.max_steps is not None:
            most = min(most, instructions.max_steps)
        if update.num_steps > most:
            raise reject(
                f"claims {update.num_steps} local steps but its instructions allow at most {most}"
            )
    for name, value in update.metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float | np.number):
            raise reject(f"metric {name!r} is {value!r}, expected a number")
        if not np.isfinite(value):
            raise reject(f"metric {name!r} is {value}, expected a finite number")
    for name, extra in update.extras.items():
        if (
            not isinstance(extra, np.ndarray)
            or extra.dtype != np.float32
            or extra.shape != (layout.size,)
        ):
            shape = getattr(extra, "shape", None)
            dtype = getattr(extra, "dtype", type(extra).__name__)
            raise reject(
                f"extra {name!r} has shape {shape} and dtype {dtype}, expected "
                f"({layout.size},) float32"
            )
        if not np.isfinite(extra).all():
            raise reject(f"extra {name!r} has non-finite values (NaN or Inf)")
