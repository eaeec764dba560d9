"""The server's record of refused messages, bounded whatever a client sends.

An authenticated client can provoke refusals as fast as it can send: keeping every refusal would
let it grow the server's memory and the checkpoint (whose JSON header holds this record) without
limit. So the record keeps a count of refusals per client and only the most recent ones in full,
each reason already clipped by :class:`~fedfleet.errors.UpdateRejected`.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Iterator
from typing import Any

from fedfleet.errors import UpdateRejected

__all__ = ["RejectionLog"]

_OTHERS = -1
"""Where refusals of clients past ``max_clients`` distinct ids are counted."""


class RejectionLog:
    """Refusals: ``len()`` counts them all; iterating gives the ``keep`` most recent."""

    def __init__(self, keep: int = 100, max_clients: int = 100_000) -> None:
        self._recent: deque[UpdateRejected] = deque(maxlen=keep)
        self._total = 0
        self._max_clients = max_clients
        self.by_client: Counter[int] = Counter()
        """Refusals per client id (ids past ``max_clients`` distinct ones count under -1)."""

    def append(self, rej: UpdateRejected) -> None:
        self._recent.append(rej)
        self._total += 1
        cid = rej.client_id if isinstance(rej.client_id, int) else _OTHERS
        if cid not in self.by_client and len(self.by_client) >= self._max_clients:
            cid = _OTHERS
        self.by_client[cid] += 1

    def extend(self, rejections: Iterable[UpdateRejected]) -> None:
        for rej in rejections:
            self.append(rej)

    def __len__(self) -> int:
        return self._total

    def __iter__(self) -> Iterator[UpdateRejected]:
        return iter(list(self._recent))

    def to_json(self) -> dict[str, Any]:
        """For the checkpoint: the counts and the recent records."""
        return {
            "total": self._total,
            "by_client": {str(c): n for c, n in sorted(self.by_client.items())},
            "recent": [
                {"client_id": r.client_id, "round": r.round, "reason": r.reason}
                for r in self._recent
            ],
        }

    def restore(self, data: Any) -> None:
        """Take back what :meth:`to_json` wrote (or the list of records older checkpoints
        held)."""
        if isinstance(data, list):  # checkpoints before the log was bounded
            data = {"recent": data, "total": len(data)}
        if not isinstance(data, dict):
            return
        for r in data.get("recent", []):
            self._recent.append(
                UpdateRejected(int(r["client_id"]), int(r["round"]), str(r["reason"]))
            )
        for c, n in data.get("by_client", {}).items():
            self.by_client[int(c)] += int(n)
        if not data.get("by_client"):
            self.by_client.update(int(r["client_id"]) for r in data.get("recent", []))
        self._total += int(data.get("total", len(data.get("recent", []))))
