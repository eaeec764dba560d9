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

The RPC handlers are in :mod:`fedfleet.net.servicer`; this module holds the round loop.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

import fedfleet.net._hooks as _hooks
from fedfleet._proto import fedfleet_pb2 as pb
from fedfleet._proto import fedfleet_pb2_grpc as pb_grpc
from fedfleet.client.protocol import EvalResult, Trainer
from fedfleet.errors import FedfleetError
from fedfleet.evaluation import ClientEvaluation
from fedfleet.net._buffered import BufferedRounds
from fedfleet.net._loop import ServerLoop, SharedCondition
from fedfleet.net._rejections import RejectionLog
from fedfleet.net._state import EVALUATE, _Client, _Round, _Task
from fedfleet.net._state import _Refused as _Refused  # importable from here
from fedfleet.net.certs import read_pem
from fedfleet.net.servicer import Servicer
from fedfleet.net.settings import RunSpec, ServerSettings, grpc_options
from fedfleet.net.wire import chunk_messages, instructions_from_header, instructions_to_header
from fedfleet.rounds import (
    BufferedLoop,
    EvaluateJob,
    FitJob,
    FitReplies,
    LoopState,
    RoundLoop,
    client_seed,
)
from fedfleet.runs.build import build_federation, build_strategy, build_trainer, load_task_for
from fedfleet.runs.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fedfleet.runs.config import RunConfig
from fedfleet.runs.deploy_policy import for_deployment
from fedfleet.strategies.base import ClientUpdate, Strategy, StrategyState
from fedfleet.strategies.fedbuff import FedBuff

__all__ = [
    "FederatedServer",
    "RunSpec",
    "ServerSettings",
    "grpc_options",
    "instructions_from_header",
    "instructions_to_header",
]

log = logging.getLogger("fedfleet.net.server")


class FederatedServer(Servicer, BufferedRounds):
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

    # ----- lifecycle -------------------------------------------------------------------------

    def start(self) -> int:
        """Listen (the gRPC server runs on an event loop thread of its own); returns the port."""
        s = self.settings
        creds = None
        if not s.insecure:
            d = Path(s.certs_dir or "")
            creds = grpc.ssl_server_credentials(
                [
                    (
                        read_pem(d / "server.key", "server private key"),
                        read_pem(d / "server.pem", "server certificate"),
                    )
                ],
                root_certificates=read_pem(d / "ca.pem", "CA certificate"),
                require_client_auth=True,
            )
        self._loop.start()
        try:
            self.port = self._loop.run(self._listen(creds), timeout=60.0)
        except BaseException:
            self._loop.close()  # no server: the loop thread must not outlive this call
            raise
        log.info("listening on %s:%d (layout %s)", s.host, self.port, self.fingerprint)
        return self.port

    async def _listen(self, creds: grpc.ServerCredentials | None) -> int:
        s = self.settings
        server = grpc.aio.server(
            options=grpc_options(s.max_message_bytes),
            maximum_concurrent_rpcs=s.max_concurrent_rpcs,
        )
        pb_grpc.add_FedFleetServicer_to_server(self, server)
        if self.secure is not None:  # secure aggregation hook
            self.secure.register(server)
        address = f"{s.host}:{s.port}"
        try:
            if creds is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, creds)
        except RuntimeError:
            port = 0
        if port == 0:
            raise FedfleetError(f"cannot listen on {address}; is the port in use?")
        await server.start()
        self._server = server
        return port

    def stop(self, grace: float = 1.0, linger_s: float | None = None) -> None:
        """Tell connected clients the run is over (waiting up to ``linger_s``, default 5 s,
        for each to hear it: a waiting poll hears at once), then shut down."""
        linger = 5.0 if linger_s is None else linger_s
        end = time.monotonic() + linger
        self._finish()
        with self._cond:
            while set(self._connected()) - self._told_done and time.monotonic() < end:
                self._cond.wait(0.1)
        with self._stopping:  # stop() may be called from two threads: one shuts down
            server, self._server = self._server, None
            if server is not None:
                self._loop.run(server.stop(grace), timeout=grace + 10.0)
            self._loop.close()

    def _finish(self, message: str = "") -> None:
        """The run is over (``message``: why, if it failed); every waiting call hears it."""
        with self._cond:
            if not self._done:
                self._done, self._done_message = True, message
            self._cond.notify_all()
        self._wake()

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

    def _wait_for_clients(self, rnd: int) -> list[int] | None:
        """The connected clients once there are ``min_clients`` (None: the server stopped)."""
        with self._cond:
            while len(self._connected()) < self.settings.min_clients:
                if self._done:
                    return None
                self._cond.wait(0.5)
            return self._connected()

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

    def _connected(self) -> list[int]:
        """Clients that can be given a task now (call with ``_cond`` held): they asked for a
        task since registering, and have a GetTask call open or their last call ended within
        ``heartbeat_timeout_s``; not one that hung up."""
        now = time.monotonic()
        limit = self.settings.heartbeat_timeout_s
        return sorted(
            c
            for c, info in self._clients.items()
            if info.polled and not info.gone and (info.waiting or now - info.last_seen <= limit)
        )

    def _open_round(self, r: _Round) -> None:
        """Publish ``r``: its clients' waiting GetTask calls pick up their tasks."""
        with self._cond:
            self._round = r
            self._cond.notify_all()
        self._wake(list(r.tasks))

    def _close_round(self) -> _Round | None:
        """No more hand-outs or answers for the open round; returns it. Task streams end."""
        with self._cond:
            current, self._round = self._round, None
            self._cond.notify_all()
        if current is not None:
            self._wake(list(current.tasks))
        return current

    def _await_answers(self, r: _Round, deadline: float) -> None:
        """Wait until every selected client of ``r`` answered or hung up, or ``deadline``."""
        with self._cond:
            while not r.settled(self.settings.rejoin_grace_s) and not self._done:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.5))

    def fit(self, job: FitJob) -> FitReplies | None:
        """The round's tasks to the planned clients (each downloads the model in chunks with its
        instructions and seed), then wait until each answered or hung up, or
        ``round_timeout_s``; the accepted uploads in plan order (validated as they arrived)."""
        rnd, plan = job.round, job.plan
        tasks = {
            cid: _Task(rnd, secrets.token_hex(16), ins, client_seed(job.seed, rnd, cid))
            for cid, ins in plan
        }
        with self._cond:
            connected = len(self._connected())
        log.info("round %d: %d connected, selected %s", rnd, connected, sorted(tasks))
        current = self._publish(rnd, job.vector, tasks)
        if self._done:
            return None
        missing = sorted(current.selected - current.answered)
        if missing:
            gone = sorted(current.gone.keys() & set(missing))
            log.warning("round %d: no update from clients %s (hung up: %s)", rnd, missing, gone)
        updates = [current.accepted[cid][0] for cid, _ in plan if cid in current.accepted]
        return FitReplies(updates, aggregate=self._aggregate)

    def _publish(self, rnd: int, vector: np.ndarray, tasks: dict[int, _Task]) -> _Round:
        """Open a round of ``tasks`` (TRAIN or EVALUATE), wait for its answers, close it."""
        deadline = time.monotonic() + self.settings.round_timeout_s
        current = _Round(rnd, vector, tasks, set(tasks))
        current.broadcast = self._broadcast_messages(vector)
        self._open_round(current)
        self._await_answers(current, deadline)
        self._close_round()
        return current

    def _broadcast_messages(self, vector: np.ndarray) -> list[pb.TaskMessage]:
        return [pb.TaskMessage(chunk=c) for c in chunk_messages([vector], self.settings.chunk_size)]

    def evaluators(self, rnd: int) -> list[int]:
        """The connected clients that registered a held-out split (ascending ids): whom the
        strategy's ``configure_evaluate`` may pick."""
        with self._cond:
            return [c for c in self._connected() if self._clients[c].num_test_samples > 0]

    def evaluate(self, job: EvaluateJob) -> list[ClientEvaluation]:
        """Federated evaluation of ``job.vector``: each of ``job.clients`` evaluates it locally
        (its own model too, for FedPer/FedRep) and reports."""
        rnd, clients = job.round, job.clients
        if not clients:
            log.warning("round %d: no client to evaluate", rnd)
            return []
        tasks = {cid: _Task(rnd, secrets.token_hex(16), None, 0, EVALUATE) for cid in clients}
        current = self._publish(rnd, job.vector, tasks)
        missing = sorted(current.selected - set(current.evaluations))
        if missing:
            log.warning("round %d: no evaluation from clients %s", rnd, missing)
        reports = [
            ClientEvaluation(
                r.num_samples,
                r.loss,
                r.accuracy,
                r.global_loss if r.personalized else None,
                r.global_accuracy if r.personalized else None,
            )
            for r in (current.evaluations[c] for c in sorted(current.evaluations))
            if r.num_samples > 0
        ]
        log.info("round %d: federated evaluation on %d clients", rnd, len(reports))
        return reports


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
