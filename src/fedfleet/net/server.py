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

Every ``eval.federated_every`` rounds (and after the last), Flower's ``configure_evaluate``: the
server sends the new global model to every connected client that holds a held-out split (an
EVALUATE task); each evaluates it there and reports (num_samples, loss, accuracy) through
``SubmitEvaluation``; the server records ``client_accuracy_{mean,worst10,min,std}`` and
``client_loss_mean`` exactly as :class:`~fedfleet.sim.Simulation` does.

The RPC handlers are in :mod:`fedfleet.net.servicer`; this module holds the round loop.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import numpy as np

import fedfleet.net._hooks as _hooks
from fedfleet._proto import fedfleet_pb2 as pb
from fedfleet._proto import fedfleet_pb2_grpc as pb_grpc
from fedfleet.client.protocol import Trainer
from fedfleet.errors import FedfleetError, PrivacyBudgetExhausted
from fedfleet.evaluation import ClientEvaluation, evaluation_summary
from fedfleet.net._loop import ServerLoop, SharedCondition
from fedfleet.net._rejections import RejectionLog
from fedfleet.net._state import EVALUATE, _Client, _Round, _Task
from fedfleet.net._state import _Refused as _Refused  # importable from here
from fedfleet.net.certs import read_pem
from fedfleet.net.servicer import Servicer
from fedfleet.net.settings import ServerSettings, grpc_options
from fedfleet.net.wire import chunk_messages, instructions_from_header, instructions_to_header
from fedfleet.runs.build import build_federation, build_strategy, build_trainer, load_task_for
from fedfleet.runs.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fedfleet.runs.config import RunConfig
from fedfleet.runs.deploy_policy import for_deployment
from fedfleet.sim.engine import _sampling_rng, _weighted_train_loss, client_seed
from fedfleet.strategies.base import ClientUpdate, Strategy, StrategyState

__all__ = [
    "FederatedServer",
    "ServerSettings",
    "grpc_options",
    "instructions_from_header",
    "instructions_to_header",
]

log = logging.getLogger("fedfleet.net.server")


class FederatedServer(Servicer):
    """Serves one run of ``config`` to clients that connect over gRPC.

    Example:
        >>> server = FederatedServer(config, ServerSettings(insecure=True))  # doctest: +SKIP
        >>> server.start(); result = server.run()  # doctest: +SKIP
    """

    def __init__(
        self,
        config: RunConfig,
        settings: ServerSettings,
        *,
        trainer: Trainer | None = None,
        strategy: Strategy | None = None,
    ) -> None:
        config = for_deployment(config)  # deployed DP noise from the OS CSPRNG
        self.config, self.settings = config, settings
        self.task = load_task_for(config)
        federation = build_federation(config, self.task)
        self.trainer = trainer or build_trainer(config, self.task)
        self.strategy = strategy or build_strategy(config, self.trainer, federation.num_clients)
        self.layout = self.trainer.layout
        self.fingerprint = self.layout.fingerprint
        self.max_update_norm = config.strategy.max_update_norm
        self._loop = ServerLoop()
        self._stopping = threading.Lock()
        self._cond = SharedCondition(self._loop)
        self._clients: dict[int, _Client] = {}
        self._round: _Round | None = None
        self._applied: dict[int, int] = {}
        """Per client, the last round whose update from it was aggregated (checkpointed)."""
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
        """Run ``rounds`` (default config.rounds) rounds; returns history, vector and state."""
        rounds = rounds or self.config.rounds
        seed = self.config.seed
        vector = self.trainer.init_vector(seed)
        state = self.strategy.init(vector)
        history: list[dict[str, Any]] = []
        first = 1
        if resume:
            if self.settings.run_dir is None:
                raise FedfleetError("resume needs run_dir, the directory of the checkpoint")
            ckpt = load_checkpoint(self.settings.run_dir)
            if ckpt.fingerprint != self.fingerprint or ckpt.seed != seed:
                raise FedfleetError(
                    f"checkpoint is for layout {ckpt.fingerprint} seed {ckpt.seed}, this run is "
                    f"layout {self.fingerprint} seed {seed}; resume with the run's own config"
                )
            vector, state, history, first = ckpt.vector, ckpt.state, ckpt.history, ckpt.round + 1
            self._restore(ckpt)
            log.info("resuming after round %d", ckpt.round)
        try:
            return self._run_rounds(first, rounds, vector, state, history)
        except BaseException as err:
            self._finish(f"the server stopped with an error: {type(err).__name__}: {err}")
            raise

    def _run_rounds(
        self,
        first: int,
        rounds: int,
        vector: np.ndarray,
        state: StrategyState,
        history: list[dict[str, Any]],
    ) -> dict[str, Any]:
        seed = self.config.seed
        start = time.perf_counter()
        for rnd in range(first, rounds + 1):
            t0 = time.perf_counter()
            try:
                play = self._play_round if self.secure is None else self.secure.play_round
                outcome = play(rnd, vector, state)  # secure aggregation hook (see __init__)
            except PrivacyBudgetExhausted as stop:
                log.warning("stopping before round %d: %s", rnd, stop)
                break
            if outcome is None:  # stopped
                break
            plan, updates = outcome
            if self.on_aggregate is not None:
                self.on_aggregate(rnd, updates)
            self.aggregated_updates += len(updates)
            # secure aggregation hook: a SecAgg round aggregates the sum it unmasked
            aggregate = self.strategy if self.secure is None else self.secure
            vector, state, agg = aggregate.aggregate_fit(rnd, vector, state, updates)
            # clients commit their staged state when a header tells them it was applied, so
            # the round's checkpoint must exist first: a resumed server must never replay a
            # round whose client state has already moved on
            applied = {**self._applied, **{u.client_id: rnd for u in updates}}
            record: dict[str, Any] = {
                "round": rnd,
                "num_clients": len(updates),
                "num_rejected": len(plan) - len(updates),
                "train_loss": _weighted_train_loss(updates),
            }
            record.update(getattr(plan, "metrics", {}))
            record.update({k: v for k, v in agg.items() if k != "aggregated"})
            last = rnd == rounds
            every = self.config.eval.every
            if last or (every and rnd % every == 0):
                ev = self.trainer.evaluate(vector, self.task.test)
                record["test_loss"], record["test_accuracy"] = ev.loss, ev.accuracy
            history.append(record)
            fed_every = self.config.eval.federated_every
            evaluate = fed_every and (last or rnd % fed_every == 0)

            # checkpoint, then publish `applied`; with federated evaluation, evaluate (EVALUATE
            # headers carry the new applied rounds: FedPer's heads count) and checkpoint again
            for evaluating in (False, True) if evaluate else (False,):
                if evaluating:
                    record.update(self._play_evaluate(rnd, vector))
                record["round_time_s"] = time.perf_counter() - t0
                record["wall_time_s"] = time.perf_counter() - start
                if self.settings.run_dir is not None:
                    save_checkpoint(
                        self.settings.run_dir,
                        rnd,
                        seed,
                        self.fingerprint,
                        vector,
                        state,
                        history,
                        self._server_records(applied),
                    )
                with self._cond:  # from now on these clients' staged state is in effect
                    self._applied = applied
            log.info(
                "round %d: %d updates, test accuracy %s",
                rnd,
                len(updates),
                record.get("test_accuracy"),
            )
        self._finish()
        return {"history": history, "vector": vector, "state": state, "layout": self.layout}

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

    def _play_round(
        self, rnd: int, vector: np.ndarray, state: StrategyState
    ) -> tuple[Any, list[ClientUpdate]] | None:
        s = self.settings
        while True:
            with self._cond:
                while len(self._connected()) < s.min_clients:
                    if self._done:
                        return None
                    self._cond.wait(0.5)
                clients = self._connected()
            plan = self.strategy.configure_fit(
                rnd, vector, state, clients, _sampling_rng(self.config.seed, rnd)
            )
            tasks = {
                cid: _Task(rnd, secrets.token_hex(16), ins, client_seed(self.config.seed, rnd, cid))
                for cid, ins in plan
            }
            log.info("round %d: %d connected, selected %s", rnd, len(clients), sorted(tasks))
            deadline = time.monotonic() + s.round_timeout_s
            current = _Round(rnd, vector, tasks, set(tasks))
            current.broadcast = self._broadcast_messages(vector)
            self._open_round(current)
            self._await_answers(current, deadline)
            self._close_round()
            if self._done:
                return None
            missing = sorted(current.selected - current.answered)
            if missing:
                gone = sorted(current.gone.keys() & set(missing))
                log.warning("round %d: no update from clients %s (hung up: %s)", rnd, missing, gone)
            updates = [current.accepted[cid][0] for cid, _ in plan if cid in current.accepted]
            if len(updates) >= s.min_accept:
                return plan, updates
            log.warning(
                "round %d: %d valid updates, fewer than min_accept=%d; retrying the round",
                rnd,
                len(updates),
                s.min_accept,
            )

    def _broadcast_messages(self, vector: np.ndarray) -> list[pb.TaskMessage]:
        return [pb.TaskMessage(chunk=c) for c in chunk_messages([vector], self.settings.chunk_size)]

    def _play_evaluate(self, rnd: int, vector: np.ndarray) -> dict[str, float]:
        """Federated evaluation of ``vector``: every connected client with a held-out split
        evaluates it locally; the per-client accuracies summarised as in simulation."""
        with self._cond:
            clients = [c for c in self._connected() if self._clients[c].num_test_samples > 0]
        if not clients:
            log.warning("round %d: no connected client holds a held-out split to evaluate", rnd)
            return {}
        tasks = {cid: _Task(rnd, secrets.token_hex(16), None, 0, EVALUATE) for cid in clients}
        deadline = time.monotonic() + self.settings.round_timeout_s
        current = _Round(rnd, vector, tasks, set(tasks))
        current.broadcast = self._broadcast_messages(vector)
        self._open_round(current)
        self._await_answers(current, deadline)
        self._close_round()
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
        out = evaluation_summary(reports)
        log.info("round %d: federated evaluation on %d clients: %s", rnd, len(reports), out)
        return out
