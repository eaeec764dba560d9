"""What can go wrong in a secure aggregation, as part of fedfleet's exception tree."""

from __future__ import annotations

from fedfleet.errors import FedfleetError

__all__ = ["STAGE_NAMES", "SecAggAborted", "SecAggProtocolError"]

STAGE_NAMES = {
    0: "setup",
    1: "advertise keys",
    2: "share keys",
    3: "masked input collection",
    4: "unmasking",
}


class SecAggAborted(FedfleetError):
    """Too few clients are left at a stage to finish (or to finish safely): the aggregation stops
    and reveals nothing.

    Attributes:
        stage: the protocol stage (0-4, see ``STAGE_NAMES``).
        survivors: how many clients (or, with ``client`` set, how many of that client's
            neighbours) were left.
        threshold: how many were needed.
        client: the client whose secret could not be recovered or whose neighbourhood was too
            thin, when the abort is about one client (None: about the whole cohort).
    """

    def __init__(
        self, stage: int, survivors: int, threshold: int, client: int | None = None, why: str = ""
    ) -> None:
        self.stage = stage
        self.survivors = survivors
        self.threshold = threshold
        self.client = client
        who = "clients" if client is None else f"neighbours of client {client}"
        super().__init__(
            f"secure aggregation aborted at stage {stage} ({STAGE_NAMES[stage]}): {survivors} "
            f"{who} left, threshold {threshold}{'; ' + why if why else ''}. Nothing was revealed; "
            "retry the round with more clients, a lower threshold or fewer dropouts"
        )


class SecAggProtocolError(FedfleetError, ValueError):
    """A message broke the protocol (wrong stage, unknown sender, a request that would reveal
    both secrets of one client, a share that fails authentication)."""
