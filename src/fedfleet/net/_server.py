"""The federated server: the simulation's round loop with the network in place of function calls.

Per round, exactly as :class:`fedfleet.sim.Simulation` does it:

    configure_fit(rnd, vector, state, connected clients, _sampling_rng(seed, rnd))
    -> broadcast (each selected client downloads the model in chunks with its task, seeded
       client_seed(seed, rnd, cid)) -> clients run strategy.client_fit and upload in chunks
    -> validate_update on every upload -> aggregate_fit over the accepted updates in plan order

Clients only make outgoing calls: ``Register``, then ``GetTask`` (a long poll that returns WAIT,
TRAIN with the model, or DONE; a task's stream stays open until the client answers it) and
``SubmitUpdate``. A client is connected while it has a ``GetTask`` call open or its last call
ended less than ``heartbeat_timeout_s`` ago, and not after it hung up. A round starts once
``min_clients`` clients are connected, ends when every selected client answered or hung up, or
at ``round_timeout_s``, and is accepted with at least ``min_accept`` valid updates; otherwise it
is retried with the clients connected then. Bad uploads are refused with the reason, logged with
the client id, counted in a bounded log, and never reach aggregation.

Every ``eval.federated_every`` rounds (and after the last), the strategy's evaluation phase:
its ``configure_evaluate`` picks among the connected clients that hold a held-out split (by
default all of them); the server sends them the new global model (an EVALUATE task); each
evaluates it there and reports (num_samples, loss, accuracy) through ``SubmitEvaluation``; the
strategy's ``aggregate_evaluate`` makes the record's metrics (by default
``client_accuracy_{mean,worst10,min,std}`` and ``client_loss_mean``), exactly as
:class:`~fedfleet.sim.Simulation` does.

The RPC handlers are in :mod:`fedfleet.net._servicer`; the server's other parts are private
modules mixed into :class:`FederatedServer`, one concept each: publishing rounds of tasks
(``_publishing.py``), the round's records, checkpoint and commit (``_bookkeeping.py``),
listening and stopping (``_lifecycle.py``), and FedBuff's asynchronous round
(``_buffered.py``). They share the state declared in ``_state.py``, guarded by ``_cond``; this
module builds the round loop.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np

import fedfleet.net._hooks as _hooks
from fedfleet.client import EvalResult, Trainer
from fedfleet.errors import FedfleetError
from fedfleet.net._bookkeeping import _Bookkeeping
from fedfleet.net._buffered import BufferedRounds
from fedfleet.net._lifecycle import _Lifecycle
from fedfleet.net._loop import ServerLoop, SharedCondition
from fedfleet.net._publishing import _Publishing
from fedfleet.net._rejections import RejectionLog
from fedfleet.net._servicer import Servicer
from fedfleet.net._settings import RunSpec, ServerSettings, grpc_options
from fedfleet.net._state import _Client, _Round
from fedfleet.net._state import _Refused as _Refused  # importable from here
from fedfleet.net._wire import instructions_from_header, instructions_to_header
from fedfleet.rounds import BufferedLoop, LoopState, RoundLoop
from fedfleet.runs import RunConfig, for_deployment
from fedfleet.runs._build import build_federation, build_strategy, build_trainer, load_task_for
from fedfleet.runs._checkpoint import load_checkpoint
from fedfleet.strategies import Strategy
from fedfleet.strategies._fedbuff import FedBuff

__all__ = [
    "FederatedServer",
    "RunSpec",
    "ServerSettings",
    "grpc_options",
    "instructions_from_header",
    "instructions_to_header",
]

log = logging.getLogger("fedfleet.net.server")


class FederatedServer(Servicer, BufferedRounds, _Publishing, _Bookkeeping, _Lifecycle):
    """Serves one federated run of ``strategy`` over ``trainer``'s model to clients that connect
    over gRPC: the round loop (:class:`fedfleet.rounds.RoundLoop`, or FedBuff's
    :class:`~fedfleet.rounds.BufferedLoop`) with this server as its transport.

    Args:
        trainer: the model's layout, initialisation and the server's evaluation.
        strategy: the federated algorithm (its server side runs here).
        settings: how the server listens and paces rounds.
        run: seed, rounds and evaluation (:class:`RunSpec`).

    Examples:
        >>> server = FederatedServer(trainer, FedAvg(clients_per_round=2),  # doctest: +SKIP
        ...                          ServerSettings(insecure=True), RunSpec(seed=0, rounds=5))
        >>> server.start(); result = server.run()  # doctest: +SKIP

    :meth:`from_config` builds the trainer, strategy and run from a run config, as
    ``fedfleet server`` does.
    """

    def __init__(
        self,
        trainer: Trainer,
        strategy: Strategy | FedBuff,
        settings: ServerSettings,
        run: RunSpec | None = None,
    ) -> None:
        self.trainer, self.strategy, self.settings = trainer, strategy, settings
        self.run_spec = run or RunSpec()
        self.config: RunConfig | None = None
        """The run config, when built by :meth:`from_config`."""
        self.layout = self.trainer.layout
        self.fingerprint = self.layout.fingerprint
        self.max_update_norm = self.run_spec.max_update_norm
        self._loop = ServerLoop()
        self._stopping = threading.Lock()
        self._cond = SharedCondition(self._loop)
        self._clients: dict[int, _Client] = {}
        self._round: _Round | None = None
        self._applied: dict[int, int] = {}
        """Per client, the last round whose update from it was aggregated (checkpointed)."""
        self._pending: dict[int, int] = {}
        """``_applied`` once the round being aggregated is committed."""
        self._done = False
        self._done_message = ""
        """Sent to clients with DONE: empty when the run finished, else why it stopped."""
        self._told_done: set[int] = set()
        self._uploads_open: set[int] = set()
        self._revoked_cache = None
        self._log_counts: Counter[int | str] = Counter()
        self._server: grpc.aio.Server | None = None
        self.port = 0
        self.aggregated_updates = 0
        """Updates handed to aggregate_fit so far (every one passed validate_update)."""
        self.rejected = RejectionLog(settings.max_rejections_kept)
        self.on_aggregate: Any = None  # test hook: called with each round's update list
        # secure aggregation hook: a SecAggFedAvg (or HEFedAvg) run plays its rounds through
        # the runner fedfleet.net.secure registered (fedfleet.net imports it)
        self.secure = _hooks.secure_rounds_for(self)
        if settings.insecure:
            log.warning(
                "serving WITHOUT TLS or client authentication (--insecure): anyone who can reach "
                "%s:%s can join the federation; use only for local testing",
                settings.host,
                settings.port,
            )

    @classmethod
    def from_config(
        cls,
        config: RunConfig,
        settings: ServerSettings,
        *,
        trainer: Trainer | None = None,
        strategy: Strategy | FedBuff | None = None,
    ) -> FederatedServer:
        """The server of the run ``config`` describes (its data gives the test split and the
        federation's size; deployed DP noise comes from the OS CSPRNG)."""
        config = for_deployment(config)
        task = load_task_for(config)
        federation = build_federation(config, task)
        trainer = trainer or build_trainer(config, task)
        strategy = strategy or build_strategy(config, trainer, federation.num_clients)
        run = RunSpec(
            seed=config.seed,
            rounds=config.rounds,
            test_data=task.test,
            eval_every=config.eval.every,
            federated_every=config.eval.federated_every,
            max_update_norm=config.strategy.max_update_norm,
        )
        server = cls(trainer, strategy, settings, run)
        server.config = config
        return server

    # ----- the round loop --------------------------------------------------------------------

    def run(self, rounds: int | None = None, resume: bool = False) -> dict[str, Any]:
        """Run ``rounds`` (default config.rounds) rounds of the round loop
        (:class:`fedfleet.rounds.RoundLoop`) with this server as its transport (or the secure
        round runner, for SecAgg and HE); returns history, vector and state."""
        spec = self.run_spec
        rounds, seed = rounds or spec.rounds, spec.seed
        vector = self.trainer.init_vector(seed)
        start = LoopState(0, vector, self.strategy.init(vector))
        if resume:
            if self.settings.run_dir is None:
                raise FedfleetError("resume needs run_dir, the directory of the checkpoint")
            ckpt = load_checkpoint(self.settings.run_dir)
            if ckpt.fingerprint != self.fingerprint or ckpt.seed != seed:
                raise FedfleetError(
                    f"checkpoint is for layout {ckpt.fingerprint} seed {ckpt.seed}, this run is "
                    f"layout {self.fingerprint} seed {seed}; resume with the run's own config"
                )
            start = LoopState(ckpt.round, ckpt.vector, ckpt.state, ckpt.history)
            self._restore(ckpt)
            log.info("resuming after round %d", ckpt.round)
        if isinstance(self.strategy, FedBuff):
            return self._run_buffered(rounds, start)
        assert not isinstance(self.strategy, FedBuff)
        loop = RoundLoop(
            self.strategy,
            self if self.secure is None else self.secure,  # secure aggregation hook
            seed,
            self._wait_for_clients,
            test=self._test,
            eval_every=spec.eval_every,
            federated_every=spec.federated_every,
            evaluators=self.evaluators,
            min_accept=self.settings.min_accept,
            checkpoint=None if self.settings.run_dir is None else self._save,
            checkpoint_before_commit=True,
        )
        try:
            end = loop.run(rounds, start, on_round=_log_round)
        except BaseException as err:
            self._finish(f"the server stopped with an error: {type(err).__name__}: {err}")
            raise
        self._finish()
        return {
            "history": end.history,
            "vector": end.vector,
            "state": end.strategy_state,
            "layout": self.layout,
        }

    def _run_buffered(self, versions: int, start: LoopState) -> dict[str, Any]:
        """FedBuff: the asynchronous loop with this server as its transport
        (:mod:`fedfleet.net._buffered`), ``versions`` server steps. Not resumable: the clients in
        flight are in no checkpoint."""
        assert isinstance(self.strategy, FedBuff)
        if start.round:
            raise FedfleetError("fedbuff runs cannot be resumed; start the server afresh")
        self._open_asynchronous(start.vector)
        loop = BufferedLoop(
            self.strategy,
            self,
            self.run_spec.seed,
            test=self._test,
            eval_every=self.run_spec.eval_every,
        )
        try:
            end, _ = loop.run(versions, start, on_round=_log_version)
        except BaseException as err:
            self._finish(f"the server stopped with an error: {type(err).__name__}: {err}")
            raise
        finally:
            self._close_round()
        self._finish()
        return {
            "history": end.history,
            "vector": end.vector,
            "state": end.strategy_state,
            "layout": self.layout,
        }

    @property
    def _test(self) -> Callable[[np.ndarray], EvalResult] | None:
        data = self.run_spec.test_data
        return None if data is None else lambda v: self.trainer.evaluate(v, data)


def _log_version(record: dict[str, Any]) -> None:
    log.info(
        "version %d: %d updates (staleness mean %.2f), test accuracy %s",
        record["version"],
        record["num_clients"],
        record["staleness_mean"],
        record.get("test_accuracy"),
    )


def _log_round(record: dict[str, Any]) -> None:
    log.info(
        "round %d: %d updates, test accuracy %s",
        record["round"],
        record["num_clients"],
        record.get("test_accuracy"),
    )
