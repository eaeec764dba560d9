"""One exception tree for the whole package.

Every message says who (client id, round), what (field, shape, value) and how to fix it, so a
user reading a log line can act on it without opening the source.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DatasetError",
    "FedfleetError",
    "LayoutError",
    "MissingExtra",
    "PrivacyBudgetExhausted",
    "RunDirError",
    "UpdateRejected",
    "clip_text",
]

MAX_REASON_CHARS = 400
"""Longest reason an UpdateRejected keeps: a reason may quote what a client sent, and a
hostile client must not be able to grow logs and checkpoints with it."""


def clip_text(text: str, limit: int = 64) -> str:
    """``text`` cut to ``limit`` characters, marking how much was left out; for quoting a field
    a client chose (a fingerprint, a tensor name) in a message."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[{len(text) - limit} more chars]"


class FedfleetError(Exception):
    """Root of every error fedfleet raises on purpose."""


class ConfigError(FedfleetError, ValueError):
    """A configuration key or value is unknown or invalid."""


class DatasetError(FedfleetError, ValueError):
    """A dataset is missing, malformed or truncated."""


class LayoutError(FedfleetError, ValueError):
    """A flat parameter vector does not match a model's layout."""


class RunDirError(FedfleetError, ValueError):
    """A run directory (``fedfleet run --out DIR``) is missing, empty or damaged."""


class MissingExtra(FedfleetError, ImportError):
    """A feature needs an optional package that is not installed; the message names the extra
    that installs it (``pip install 'fedfleet[deploy]'``). Raised by ``fedfleet._extras.require``.
    """


class PrivacyBudgetExhausted(FedfleetError):
    """Another round would spend more privacy than the run's target epsilon allows.

    Engines catch it and end the run cleanly with the rounds completed so far.
    """


class UpdateRejected(FedfleetError, ValueError):
    """A client's update failed validation and was left out of aggregation.

    Attributes:
        client_id: the client that sent it.
        round: the round it was sent in.
        reason: what was wrong, in words.
    """

    def __init__(self, client_id: int | str, round: int, reason: str) -> None:
        self.client_id = client_id
        self.round = round
        self.reason = clip_text(reason, MAX_REASON_CHARS)
        super().__init__(f"round {round}: update from client {client_id} rejected: {self.reason}")
