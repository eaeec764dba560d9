"""The wire protocol's version: what a client and the server compare when the client registers.

Peers that speak different versions misread each other's messages (a field that moved, a
``bytes`` field that now holds the codec's header), and the failure would surface far from its
cause, as a refused upload or a decode error rounds later. So the client sends its version in
``RegisterRequest.protocol_version``, the server refuses any other than its own with
``FAILED_PRECONDITION`` and a message that names both and the side to upgrade, and the client
stops with that message; the server's version comes back in ``RegisterReply`` so a new client
refuses an old server the same way.
"""

from __future__ import annotations

__all__ = ["PROTOCOL_VERSION", "protocol_mismatch"]

PROTOCOL_VERSION = 2
"""The wire protocol this fedfleet speaks. Raise it with every change of what a message means.

- 1: the envelopes held a task's instructions and a reply's counts and arrays themselves (up
  to 7b872bc); it sent no version, so an unset field (0) stands for 1.
- 2: the envelopes carry the codec's messages (``TaskHeader.job``, ``UpdateHeader.reply``,
  ``EvaluationResult.report``; :mod:`fedfleet.net._wire`).
"""


def protocol_mismatch(client: int, server: int) -> str | None:
    """Why a client speaking protocol ``client`` and a server speaking ``server`` cannot work
    together (0: that side sent no version, so it speaks 1), saying which side to upgrade;
    None when they match.

    Example:
        >>> protocol_mismatch(1, 2)
        'client speaks protocol 1, server 2; upgrade fedfleet on the client'
        >>> protocol_mismatch(2, 2) is None
        True
    """
    c, s = client or 1, server or 1
    if c == s:
        return None
    side = "client" if c < s else "server"
    message = f"client speaks protocol {c}, server {s}; upgrade fedfleet on the {side}"
    unsent = "client" if not client else "server" if not server else None
    if unsent is not None:
        message += f" (the {unsent} sent no protocol version: a fedfleet from before versions)"
    return message
