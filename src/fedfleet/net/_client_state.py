"""A deployed client's private state on its own disk, crash-safe.

Where each kind of state lives in deployment, and why:

- **Client-private state** (SCAFFOLD's control variate, FedPer/FedRep heads): only on the client.
  The server must never hold it (it is the client's; for personalisation it is the part that
  is *not* federated). With ``--state-dir`` it lives in ``DIR/client-<id>.safetensors`` (this
  module), so a client that is killed and restarted continues with it; without, in memory.
- **Server state** (global vector, strategy state such as SCAFFOLD's server control variate
  or server optimizer moments, round, history, the registered clients' sample counts, the last
  round each client's update was aggregated, the rejection log): the server's checkpoint
  (:mod:`fedfleet.net._checkpoint`).
- **RNG state**: none to save; every draw derives from the run seed and the round.

A client's new state must take effect exactly when the server aggregates the update computed
with it, or client and server disagree (SCAFFOLD's server variate is the mean of the clients').
Acceptance of an upload is not enough: the round may still be retried (too few updates), or the
server may crash before its checkpoint and replay the round. So a client's state is two-phase:

1. before uploading round r's update, the client stores its new state as *pending* for round r
   (atomically, with the committed state beside it);
2. every TRAIN, EVALUATE and DONE task carries ``applied_round``, the last round whose update
   from this client the server aggregated (kept in the server checkpoint). The client then
   commits the pending state if ``applied_round`` equals its round, and drops it otherwise.

Every write goes to a temporary file, is fsynced, renamed over the old file and the directory
fsynced, so a SIGKILL at any moment leaves the old file or the new one. The file is safetensors
(no pickle): arrays ``committed/<name>`` and ``pending/<name>``, metadata ``client_id`` and
``pending_round``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedfleet._atomic import atomic_write_safetensors, read_safetensors
from fedfleet.client import ClientState
from fedfleet.errors import FedfleetError

__all__ = ["ClientStateFile"]

_META = "fedfleet.client_state"


class ClientStateFile:
    """One client's committed and pending state, in memory and (optionally) in ``directory``.

    It is a :class:`~fedfleet.client.ClientStateStore` for this one client:
    ``get(cid)`` returns the committed state, which is what local training must start from.
    """

    def __init__(self, client_id: int, directory: str | Path | None = None) -> None:
        self.client_id = client_id
        self.path = (
            None if directory is None else Path(directory) / f"client-{client_id}.safetensors"
        )
        self._committed: dict[str, np.ndarray] | None = None
        self._pending: dict[str, np.ndarray] | None = None
        self.pending_round = -1
        if self.path is not None and self.path.exists():
            self._load(self.path)

    # ----- the ClientStateStore protocol (committed state) -----------------------------------

    def get(self, cid: int) -> ClientState | None:
        self._check(cid)
        return (
            None if self._committed is None else {k: v.copy() for k, v in self._committed.items()}
        )

    def put(self, cid: int, state: ClientState) -> None:
        """Replace the committed state directly (no pending phase)."""
        self._check(cid)
        self._committed = _copy(state)
        self._write()

    def __len__(self) -> int:
        return 0 if self._committed is None else 1

    # ----- two-phase update ------------------------------------------------------------------

    def stage(self, rnd: int, state: ClientState | None) -> None:
        """Keep ``state`` as the state round ``rnd``'s update was computed to leave behind."""
        self._pending = None if state is None else _copy(state)
        self.pending_round = rnd
        self._write()

    def resolve(self, applied_round: int) -> bool:
        """The server says its last aggregated update from this client is ``applied_round``:
        commit the pending state if it belongs to that round, else drop it. Returns whether
        the pending state was committed."""
        if self.pending_round < 0:
            return False
        applied = self.pending_round == applied_round
        if applied and self._pending is not None:
            self._committed = self._pending
        self._pending, self.pending_round = None, -1
        self._write()
        return applied

    # ----- files -----------------------------------------------------------------------------

    def _check(self, cid: int) -> None:
        if cid != self.client_id:
            raise FedfleetError(
                f"the state file of client {self.client_id} was asked for client {cid}; "
                "each client process keeps only its own state"
            )

    def _write(self) -> None:
        if self.path is None:
            return
        arrays = {f"committed/{k}": v for k, v in (self._committed or {}).items()}
        arrays.update({f"pending/{k}": v for k, v in (self._pending or {}).items()})
        meta = {
            "client_id": self.client_id,
            "has_committed": self._committed is not None,
            "pending_round": self.pending_round,
            "has_pending": self._pending is not None,
        }
        atomic_write_safetensors(self.path, arrays, {_META: json.dumps(meta)})

    def _load(self, path: Path) -> None:
        try:
            meta, arrays = read_safetensors(path, _META)
        except ValueError as e:
            raise FedfleetError(
                f"cannot read client state {str(path)!r}: {e}; remove it to start this client "
                "without state (its next update then starts from none)"
            ) from None
        if meta.get("client_id") != self.client_id:
            raise FedfleetError(
                f"{str(path)!r} holds the state of client {meta.get('client_id')}, not of client "
                f"{self.client_id}; give each client its own --state-dir file"
            )

        def part(prefix: str) -> dict[str, np.ndarray]:
            return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}

        self._committed = part("committed/") if meta["has_committed"] else None
        self._pending = part("pending/") if meta["has_pending"] else None
        self.pending_round = int(meta["pending_round"])


def _copy(state: ClientState) -> dict[str, np.ndarray]:
    return {k: np.array(v, dtype=np.float32) for k, v in state.items()}
