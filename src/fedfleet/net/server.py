"""The federated server: the simulation's round loop with the network in place of function calls.

Per round, exactly as :class:`fedfleet.sim.Simulation` does it:

    configure_fit(rnd, vector, state, connected clients, _sampling_rng(seed, rnd))
    -> broadcast (each selected client downloads the model in chunks with its task, seeded
       client_seed(seed, rnd, cid)) -> clients run strategy.client_fit and upload in chunks
    -> validate_update on every upload -> aggregate_fit over the accepted updates in plan order

Clients only make outgoing calls: ``Register``, then ``GetTask`` (a long poll that returns WAIT,
TRAIN with the model, or DONE) and ``SubmitUpdate``. A round starts once ``min_clients`` clients
are connected (polled within ``heartbeat_timeout_s``), ends when every selected client answered
or at ``round_timeout_s``, and is accepted with at least ``min_accept`` valid updates; otherwise
it is retried with the clients connected then. Bad uploads are refused with the reason, logged
with the client id, and never reach aggregation.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from fedfleet.client.protocol import FitInstructions, Trainer
from fedfleet.errors import FedfleetError, PrivacyBudgetExhausted, UpdateRejected
from fedfleet.net import fedfleet_pb2 as pb
from fedfleet.net import fedfleet_pb2_grpc as pb_grpc
from fedfleet.net.certs import client_id_from_cn
from fedfleet.net.checkpoint import load_checkpoint, save_checkpoint
from fedfleet.net.wire import (
    MAX_EXTRAS,
    TensorReceiver,
    WireError,
    chunk_messages,
    scalar_from_pb,
    scalar_to_pb,
    tensor_infos,
)
from fedfleet.runs.build import build_federation, build_strategy, build_trainer, load_task_for
from fedfleet.runs.config import RunConfig
from fedfleet.sim.engine import _sampling_rng, _weighted_train_loss, client_seed
from fedfleet.strategies.base import ClientUpdate, Strategy, StrategyState
from fedfleet.validation import validate_update

__all__ = ["FederatedServer", "ServerSettings", "grpc_options", "instructions_to_header"]

log = logging.getLogger("fedfleet.net.server")


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    """How the server listens and paces rounds."""

    host: str = "127.0.0.1"
    """Interface to listen on (0.0.0.0 for every interface)."""
    port: int = 0
    """TCP port; 0 picks a free one (see ``FederatedServer.port``)."""
    min_clients: int = 2
    """Connected clients needed before a round starts."""
    min_accept: int = 1
    """Valid updates needed for a round to count; fewer and the round is retried."""
    round_timeout_s: float = 600.0
    """Deadline for a round's uploads; late clients are left out of the round."""
    heartbeat_timeout_s: float = 30.0
    """A client that has not called in this long counts as disconnected."""
    poll_wait_s: float = 2.0
    """How long a GetTask long poll waits for a task before answering WAIT."""
    chunk_size: int = 1 << 20
    """Bytes of array data per stream message."""
    max_message_bytes: int = 4 << 20
    """gRPC's per-message limit, both directions (chunks must fit in it)."""
    certs_dir: str | None = None
    """Directory with ca.pem, server.pem, server.key (and revoked.txt) for mutual TLS."""
    revoked_path: str | None = None
    """File of revoked client CNs or ids, one a line; default certs_dir/revoked.txt."""
    insecure: bool = False
    """Serve plaintext without authentication (testing only; logs a warning)."""
    run_dir: str | None = None
    """Where the per-round checkpoint and metrics go (None = no checkpoints)."""
    max_workers: int = 32
    """Server threads, i.e. concurrent calls (each long poll holds one)."""

    def __post_init__(self) -> None:
        if self.chunk_size + 1024 > self.max_message_bytes:
            raise FedfleetError(
                f"chunk_size {self.chunk_size} does not fit in max_message_bytes "
                f"{self.max_message_bytes} (leave 1 KiB for the framing); lower chunk_size"
            )
        if not self.insecure and self.certs_dir is None:
            raise FedfleetError(
                "the server needs certs_dir (ca.pem, server.pem, server.key; create them with "
                "`fedfleet certs`) or, for local testing only, insecure=True"
            )
        if self.min_accept < 1 or self.min_clients < 1:
            raise FedfleetError("min_clients and min_accept must be at least 1")


def grpc_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def instructions_to_header(ins: FitInstructions, header: pb.TaskHeader) -> None:
    header.epochs = ins.epochs
    header.batch_size = ins.batch_size
    header.lr = ins.lr
    header.max_steps = -1 if ins.max_steps is None else ins.max_steps
    for k, v in ins.config.items():
        header.config[k].CopyFrom(scalar_to_pb(v))


def instructions_from_header(
    header: pb.TaskHeader, payload: dict[str, np.ndarray]
) -> FitInstructions:
    return FitInstructions(
        epochs=int(header.epochs),
        batch_size=int(header.batch_size),
        lr=float(header.lr),
        max_steps=None if header.max_steps < 0 else int(header.max_steps),
        config={k: scalar_from_pb(v) for k, v in header.config.items()},
        payload=payload,
    )


@dataclass
class _Client:
    num_samples: int
    last_seen: float


@dataclass
class _Task:
    rnd: int
    task_id: str
    instructions: FitInstructions
    seed: int


@dataclass
class _Round:
    rnd: int
    vector: np.ndarray
    tasks: dict[int, _Task]
    selected: set[int]
    accepted: dict[int, tuple[ClientUpdate, int]] = field(default_factory=dict)
    answered: set[int] = field(default_factory=set)


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class FederatedServer(pb_grpc.FedFleetServicer):
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
        self.config, self.settings = config, settings
        self.task = load_task_for(config)
        federation = build_federation(config, self.task)
        self.trainer = trainer or build_trainer(config, self.task)
        self.strategy = strategy or build_strategy(config, self.trainer, federation.num_clients)
        self.layout = self.trainer.layout
        self.fingerprint = self.layout.fingerprint
        self._cond = threading.Condition()
        self._clients: dict[int, _Client] = {}
        self._round: _Round | None = None
        self._done = False
        self._told_done: set[int] = set()
        self._server: grpc.Server | None = None
        self.port = 0
        self.aggregated_updates = 0
        """Updates handed to aggregate_fit so far (every one passed validate_update)."""
        self.rejected: list[UpdateRejected] = []
        self.on_aggregate: Any = None  # test hook: called with each round's update list
        if settings.insecure:
            log.warning(
                "serving WITHOUT TLS or client authentication (--insecure): anyone who can reach "
                "%s:%s can join the federation; use only for local testing",
                settings.host,
                settings.port,
            )

    # ----- lifecycle -------------------------------------------------------------------------

    def start(self) -> int:
        """Listen; returns the bound port."""
        s = self.settings
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=s.max_workers),
            options=grpc_options(s.max_message_bytes),
            maximum_concurrent_rpcs=s.max_workers * 4,
        )
        pb_grpc.add_FedFleetServicer_to_server(self, server)
        address = f"{s.host}:{s.port}"
        if s.insecure:
            self.port = server.add_insecure_port(address)
        else:
            d = Path(s.certs_dir or "")
            creds = grpc.ssl_server_credentials(
                [((d / "server.key").read_bytes(), (d / "server.pem").read_bytes())],
                root_certificates=(d / "ca.pem").read_bytes(),
                require_client_auth=True,
            )
            self.port = server.add_secure_port(address, creds)
        if self.port == 0:
            raise FedfleetError(f"cannot listen on {address}; is the port in use?")
        server.start()
        self._server = server
        log.info("listening on %s:%d (layout %s)", s.host, self.port, self.fingerprint)
        return self.port

    def stop(self, grace: float = 1.0, linger_s: float | None = None) -> None:
        """Tell connected clients the run is over (waiting up to ``linger_s``, default
        ``poll_wait_s + 5``, for each to poll once more), then shut down."""
        linger = self.settings.poll_wait_s + 5.0 if linger_s is None else linger_s
        end = time.monotonic() + linger
        with self._cond:
            self._done = True
            self._cond.notify_all()
            while set(self._connected()) - self._told_done and time.monotonic() < end:
                self._cond.wait(0.1)
        if self._server is not None:
            self._server.stop(grace).wait(grace + 5.0)

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
            log.info("resuming after round %d", ckpt.round)
        start = time.perf_counter()
        for rnd in range(first, rounds + 1):
            t0 = time.perf_counter()
            try:
                outcome = self._play_round(rnd, vector, state)
            except PrivacyBudgetExhausted as stop:
                log.warning("stopping before round %d: %s", rnd, stop)
                break
            if outcome is None:  # stopped
                break
            plan, updates = outcome
            if self.on_aggregate is not None:
                self.on_aggregate(rnd, updates)
            self.aggregated_updates += len(updates)
            vector, state, agg = self.strategy.aggregate_fit(rnd, vector, state, updates)
            record: dict[str, Any] = {
                "round": rnd,
                "num_clients": len(updates),
                "num_rejected": len(plan) - len(updates),
                "train_loss": _weighted_train_loss(updates),
            }
            record.update(getattr(plan, "metrics", {}))
            record.update({k: v for k, v in agg.items() if k != "aggregated"})
            every = self.config.eval.every
            if rnd == rounds or (every and rnd % every == 0):
                ev = self.trainer.evaluate(vector, self.task.test)
                record["test_loss"], record["test_accuracy"] = ev.loss, ev.accuracy
            record["round_time_s"] = time.perf_counter() - t0
            record["wall_time_s"] = time.perf_counter() - start
            history.append(record)
            log.info(
                "round %d: %d updates, test accuracy %s",
                rnd,
                len(updates),
                record.get("test_accuracy"),
            )
            if self.settings.run_dir is not None:
                save_checkpoint(
                    self.settings.run_dir, rnd, seed, self.fingerprint, vector, state, history
                )
        with self._cond:
            self._done = True
            self._cond.notify_all()
        return {"history": history, "vector": vector, "state": state, "layout": self.layout}

    def _connected(self) -> list[int]:
        now = time.monotonic()
        limit = self.settings.heartbeat_timeout_s
        return sorted(c for c, info in self._clients.items() if now - info.last_seen <= limit)

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
            with self._cond:
                self._round = _Round(rnd, vector, tasks, set(tasks))
                self._cond.notify_all()
                while self._round.answered != self._round.selected and not self._done:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(min(left, 0.5))
                current, self._round = self._round, None
                self._cond.notify_all()
            if self._done:
                return None
            missing = sorted(current.selected - current.answered)
            if missing:
                log.warning("round %d: no update from clients %s by the deadline", rnd, missing)
            updates = [current.accepted[cid][0] for cid, _ in plan if cid in current.accepted]
            if len(updates) >= s.min_accept:
                return plan, updates
            log.warning(
                "round %d: %d valid updates, fewer than min_accept=%d; retrying the round",
                rnd,
                len(updates),
                s.min_accept,
            )

    # ----- identity --------------------------------------------------------------------------

    def _revoked(self) -> set[str]:
        path = self.settings.revoked_path
        if path is None and self.settings.certs_dir is not None:
            path = str(Path(self.settings.certs_dir) / "revoked.txt")
        if path is None:
            return set()
        try:
            lines = Path(path).read_text().splitlines()
        except FileNotFoundError:
            return set()
        return {ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")}

    def _identify(self, context: grpc.ServicerContext, claimed: int) -> int:
        """The caller's client id: from its certificate under TLS, as claimed when insecure."""
        if self.settings.insecure:
            if claimed < 0:
                raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "client_id must be >= 0")
            return claimed
        auth = context.auth_context()
        cns = auth.get("x509_common_name") or []
        cn = cns[0].decode(errors="replace") if cns else ""
        cid = client_id_from_cn(cn)
        if cid is None:
            log.warning("refused peer %s: certificate CN %r names no client", context.peer(), cn)
            raise _Refused(
                grpc.StatusCode.PERMISSION_DENIED,
                f"certificate CN {cn!r} is not a client certificate (expected client-<id>)",
            )
        revoked = self._revoked()
        if cn in revoked or str(cid) in revoked:
            log.warning("refused revoked client %s (CN %r) from %s", cid, cn, context.peer())
            raise _Refused(
                grpc.StatusCode.PERMISSION_DENIED, f"the credential of {cn} has been revoked"
            )
        return cid

    # ----- RPCs ------------------------------------------------------------------------------

    def Register(self, request: pb.RegisterRequest, context: grpc.ServicerContext) -> Any:
        try:
            cid = self._identify(context, request.client_id)
        except _Refused as r:
            context.abort(r.code, r.message)
        if request.layout_fingerprint != self.fingerprint:
            log.warning(
                "refused client %d: model layout %s, the server's is %s",
                cid,
                request.layout_fingerprint,
                self.fingerprint,
            )
            return pb.RegisterReply(
                ok=False,
                client_id=cid,
                layout_fingerprint=self.fingerprint,
                message=(
                    f"client {cid} runs model layout {request.layout_fingerprint!r} but the "
                    f"server's is {self.fingerprint!r}; use the server's model config"
                ),
            )
        if request.num_samples <= 0:
            return pb.RegisterReply(ok=False, client_id=cid, message="num_samples must be positive")
        with self._cond:
            self._clients[cid] = _Client(int(request.num_samples), time.monotonic())
            self._cond.notify_all()
        log.info(
            "client %d registered from %s (%d samples)", cid, context.peer(), request.num_samples
        )
        return pb.RegisterReply(ok=True, client_id=cid, layout_fingerprint=self.fingerprint)

    def GetTask(self, request: pb.TaskRequest, context: grpc.ServicerContext) -> Any:
        try:
            cid = self._identify(context, request.client_id)
        except _Refused as r:
            context.abort(r.code, r.message)
        deadline = time.monotonic() + self.settings.poll_wait_s
        with self._cond:
            if cid not in self._clients:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, "register before GetTask")
            while True:
                self._clients[cid].last_seen = time.monotonic()
                self._cond.notify_all()
                rnd = self._round
                if self._done:
                    self._told_done.add(cid)
                    self._cond.notify_all()
                    yield pb.TaskMessage(header=pb.TaskHeader(kind=pb.TaskHeader.DONE))
                    return
                if rnd is not None and cid in rnd.tasks and cid not in rnd.answered:
                    task, vector = rnd.tasks[cid], rnd.vector
                    break
                left = deadline - time.monotonic()
                if left <= 0 or not context.is_active():
                    yield pb.TaskMessage(header=pb.TaskHeader(kind=pb.TaskHeader.WAIT))
                    return
                self._cond.wait(min(left, 0.5))
        ins = task.instructions
        arrays = {"vector": vector, **dict(ins.payload)}
        header = pb.TaskHeader(
            kind=pb.TaskHeader.TRAIN,
            round=task.rnd,
            seed=task.seed,
            task_id=task.task_id,
            layout_fingerprint=self.fingerprint,
            tensors=tensor_infos(arrays),
        )
        instructions_to_header(ins, header)
        yield pb.TaskMessage(header=header)
        for chunk in chunk_messages(list(arrays.values()), self.settings.chunk_size):
            yield pb.TaskMessage(chunk=chunk)

    def SubmitUpdate(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:
        try:
            first = next(request_iterator, None)
            if first is None or first.WhichOneof("body") != "header":
                return pb.UpdateReply(accepted=False, reason="the stream must start with a header")
            h = first.header
            cid = self._identify(context, h.client_id)
        except _Refused as r:
            context.abort(r.code, r.message)
        except grpc.RpcError:
            return pb.UpdateReply(accepted=False, reason="stream broken")
        try:
            rnd, task, vector, max_samples = self._open_task(cid, h)
            if h.layout_fingerprint != self.fingerprint:
                raise WireError(
                    f"update is for layout {h.layout_fingerprint!r}, the server's is "
                    f"{self.fingerprint!r}"
                )
            receiver = TensorReceiver(h.tensors, self.layout.size)
            if receiver.names[0] != "vector":
                raise WireError(f"the first tensor must be 'vector', got {receiver.names[0]!r}")
            for msg in request_iterator:
                if msg.WhichOneof("body") != "chunk":
                    raise WireError("a second header inside one update stream")
                receiver.add(msg.chunk)
            arrays = receiver.finish()
            trained = arrays.pop("vector")
            update = ClientUpdate(
                cid,
                trained - vector,
                int(h.num_samples),
                int(h.num_steps),
                dict(h.metrics),
                arrays,
            )
            validate_update(
                update,
                self.layout,
                rnd,
                {cid},
                max_samples=max_samples,
                instructions=task.instructions,
            )
        except (WireError, UpdateRejected) as err:
            reason = err.reason if isinstance(err, UpdateRejected) else str(err)
            rej = UpdateRejected(cid, int(h.round), reason)
            log.warning("%s (from %s)", rej, context.peer())
            with self._cond:
                self.rejected.append(rej)
                current = self._round
                if current is not None and current.rnd == h.round and cid in current.tasks:
                    if current.tasks[cid].task_id == h.task_id:
                        current.answered.add(cid)
                        self._cond.notify_all()
            return pb.UpdateReply(accepted=False, reason=reason)
        except grpc.RpcError:
            log.warning("client %d: upload stream broke off in round %d", cid, h.round)
            return pb.UpdateReply(accepted=False, reason="stream broken")
        with self._cond:
            current = self._round
            if current is None or current.rnd != rnd or cid in current.answered:
                return pb.UpdateReply(accepted=False, reason="the round closed before the upload")
            current.accepted[cid] = (update, len(h.tensors))
            current.answered.add(cid)
            self._clients[cid].last_seen = time.monotonic()
            self._cond.notify_all()
        log.info(
            "round %d: accepted update from client %d (%d samples, %d steps)",
            rnd,
            cid,
            update.num_samples,
            update.num_steps,
        )
        return pb.UpdateReply(accepted=True)

    def _open_task(self, cid: int, h: pb.UpdateHeader) -> tuple[int, _Task, np.ndarray, int]:
        with self._cond:
            info = self._clients.get(cid)
            if info is None:
                raise WireError("client is not registered")
            current = self._round
            if current is None or current.rnd != h.round or cid not in current.tasks:
                raise WireError(f"no open task for client {cid} in round {h.round}")
            task = current.tasks[cid]
            if not secrets.compare_digest(task.task_id, h.task_id):
                raise WireError("task id does not match this round's task (stale or replayed)")
            if cid in current.answered:
                raise WireError("this task was already answered (replayed upload)")
            if len(h.tensors) > 1 + MAX_EXTRAS:
                raise WireError(f"{len(h.tensors)} tensors declared, at most {1 + MAX_EXTRAS}")
            return current.rnd, task, current.vector, info.num_samples
