"""What the server records about a round: the clients whose updates it aggregated, the
checkpoint, and the two-phase commit that makes clients' staged state take effect.

A round's aggregated clients become pending (:meth:`_Bookkeeping.aggregated`); the checkpoint
written next holds them with the per-client records and the rejection log; only then does
:meth:`_Bookkeeping.commit` publish them, so each client's next task header carries its new
applied round. A resumed server thus never replays a round whose client state has moved on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedfleet.net._settings import RunSpec
from fedfleet.net._state import _Client, _ServerState
from fedfleet.rounds import LoopState
from fedfleet.runs._checkpoint import Checkpoint, save_checkpoint
from fedfleet.strategies import ClientUpdate, Strategy, StrategyState
from fedfleet.strategies._fedbuff import FedBuff

__all__ = ["_Bookkeeping"]


class _Bookkeeping(_ServerState):
    """Round records, checkpoint and commit of ``FederatedServer`` (mixed into it)."""

    strategy: Strategy | FedBuff
    run_spec: RunSpec
    on_aggregate: Any
    aggregated_updates: int

    def aggregated(self, rnd: int, updates: Sequence[ClientUpdate]) -> None:
        """Round ``rnd`` aggregates ``updates`` (receipts, for a secure sum): they are applied
        once its checkpoint is written (:meth:`commit`)."""
        if self.on_aggregate is not None:
            self.on_aggregate(rnd, updates)
        self.aggregated_updates += len(updates)
        self._pending = {**self._applied, **{u.client_id: rnd for u in updates}}

    def _aggregate(
        self, rnd: int, vector: np.ndarray, state: StrategyState, updates: Sequence[ClientUpdate]
    ) -> tuple[np.ndarray, StrategyState, dict[str, float]]:
        self.aggregated(rnd, updates)
        assert not isinstance(self.strategy, FedBuff)  # FedBuff runs _run_buffered
        return self.strategy.aggregate_fit(rnd, vector, state, updates)

    def _save(self, state: LoopState) -> None:
        assert self.settings.run_dir is not None
        save_checkpoint(
            self.settings.run_dir,
            state.round,
            self.run_spec.seed,
            self.fingerprint,
            state.vector,
            state.strategy_state,
            state.history,
            self._server_records(self._pending),
        )

    def commit(self, rnd: int, accepted: Sequence[int]) -> None:
        """Round ``rnd``'s checkpoint is on disk: from now on the accepted clients' staged state
        is in effect (their next task header carries the new applied round). A resumed server
        thus never replays a round whose client state has already moved on."""
        with self._cond:
            self._applied = dict(self._pending)

    def _server_records(self, applied: dict[int, int]) -> dict[str, Any]:
        """What the server itself knows per client, for the checkpoint (JSON); ``applied``:
        each client's last aggregated round as of the checkpoint's round."""
        with self._cond:
            clients = {
                str(cid): {
                    "num_samples": c.num_samples,
                    "num_test_samples": c.num_test_samples,
                    "applied_round": applied.get(cid, -1),
                }
                for cid, c in sorted(self._clients.items())
            }
            rejected = self.rejected.to_json()
        return {"clients": clients, "rejected": rejected}

    def _restore(self, ckpt: Checkpoint) -> None:
        """Take back the per-client records; restored clients count as disconnected until
        they call in again."""
        with self._cond:
            for key, c in ckpt.server.get("clients", {}).items():
                cid = int(key)
                self._clients.setdefault(
                    cid, _Client(int(c["num_samples"]), -float("inf"), int(c["num_test_samples"]))
                )
                if int(c["applied_round"]) >= 0:
                    self._applied[cid] = int(c["applied_round"])
            self.rejected.restore(ckpt.server.get("rejected", []))
