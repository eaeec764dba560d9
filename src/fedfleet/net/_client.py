"""The federated client: registers, polls for tasks, trains with the strategy's client side.

Only outgoing calls. For each TRAIN task the client downloads the global model (and any strategy
payload) in chunks, runs ``strategy.client_fit(trainer, vector, data, instructions, seed, state)``
with the seed the server sent (``client_seed(seed, rnd, cid)``, as in simulation), uploads the
trained vector in chunks. Its new private state takes effect only once the server reports that
it aggregated that update (two-phase, see :mod:`fedfleet.net._client_state`); with
``state_dir`` that state is on disk, so a killed and restarted client continues with it.
For each EVALUATE task it evaluates the model on its held-out split (for personalising
strategies its own model too) and reports through ``SubmitEvaluation``. When the connection
drops it reconnects with exponential backoff and registers again; each failed attempt is
logged with its cause in plain words (nothing listens at the address, the server refused this
certificate, the server speaks TLS, ...). A cause retrying cannot fix stops the client at once.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

import fedfleet.net._hooks as _hooks
from fedfleet._codec import Job
from fedfleet._proto import fedfleet_pb2 as pb
from fedfleet._proto import fedfleet_pb2_grpc as pb_grpc
from fedfleet.client import Trainer
from fedfleet.data import ArrayDataset
from fedfleet.errors import ConfigError, FedfleetError
from fedfleet.evaluation import ClientEvaluation
from fedfleet.net._certs import read_pem
from fedfleet.net._client_state import ClientStateFile
from fedfleet.net._protocol import PROTOCOL_VERSION, protocol_mismatch
from fedfleet.net._settings import grpc_options
from fedfleet.net._wire import (
    chunk_messages,
    evaluation_to_pb,
    instructions_from_header,
    receiver,
    reply_to_header,
)
from fedfleet.runs import RunConfig, for_deployment
from fedfleet.runs._build import build_federation, build_strategy, build_trainer, load_task_for
from fedfleet.strategies._base import Personalized, Strategy
from fedfleet.strategies._fedbuff import FedBuff

__all__ = ["ClientRefused", "ClientSettings", "FederatedClient"]

log = logging.getLogger("fedfleet.net.client")

_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}

_CONFIG_ERROR_REPEATS = 3
"""A configuration error gives up once this many connection attempts in a row failed with it:
a single one could be a server that was stopped in the middle of a handshake."""


class ClientRefused(FedfleetError):
    """The server refused this client for good (layout mismatch, revoked or unknown credential)."""


@dataclass(frozen=True, kw_only=True)
class ClientSettings:
    """Where the server is and how to talk to it."""

    server: str
    """host:port of the server."""
    certs_dir: str | None = None
    """Directory with ca.pem and this client's client-<id>.pem / client-<id>.key."""
    cert: str | None = None
    """This client's certificate (default certs_dir/client-<id>.pem)."""
    key: str | None = None
    """This client's private key (default certs_dir/client-<id>.key)."""
    ca: str | None = None
    """The CA certificate that signed the server's (default certs_dir/ca.pem)."""
    insecure: bool = False
    """Plaintext, no authentication (testing only; logs a warning)."""
    server_name: str | None = None
    """Override the TLS host name checked against the server certificate."""
    chunk_size: int = 4 << 20
    max_message_bytes: int = 8 << 20
    backoff_initial_s: float = 0.2
    """First reconnect delay; it doubles (with jitter) after each failed attempt."""
    backoff_max_s: float = 10.0
    """Longest delay between two connection attempts."""
    give_up_after_s: float | None = 300.0
    """Stop reconnecting after this long without reaching the server, with the last reason
    (None = never). A configuration error (a refused certificate, TLS on one side only)
    stops sooner: retrying does not fix it."""
    rpc_timeout_s: float = 600.0
    state_dir: str | None = None
    """Keep this client's private state (control variates, personal heads) in
    ``state_dir/client-<id>.safetensors`` so it survives a restart (None = in memory only)."""


class FederatedClient:
    """One client process of a federation: ``trainer``'s model trained on ``data`` with
    ``strategy``'s client side whenever the server asks.

    Args:
        trainer: the model's layout and local training (the server's must have the same
            layout, or registration is refused).
        strategy: the federated algorithm; this process runs its ``client_fit`` (and, for
            SecAgg and HE, its upload protocol). Deployed DP noise should come from the OS
            CSPRNG: :meth:`from_config` applies that rule, a caller building the strategy
            itself applies it too (``noise="secure"``).
        settings: where the server is and how to talk to it.
        client_id: this client's id (under mutual TLS its certificate's CN must name it).
        data: this client's training data (its partition of the federation).
        test_data: its held-out split for federated evaluation (None: it reports none).

    Example:
        >>> client = FederatedClient(trainer, FedAvg(clients_per_round=2),  # doctest: +SKIP
        ...                          ClientSettings(server="127.0.0.1:50051", insecure=True),
        ...                          client_id=0, data=partition)
        >>> client.run()  # doctest: +SKIP

    :meth:`from_config` builds the trainer, strategy and data from a run config, as
    ``fedfleet client`` does.
    """

    def __init__(
        self,
        trainer: Trainer,
        strategy: Strategy | FedBuff,
        settings: ClientSettings,
        *,
        client_id: int,
        data: ArrayDataset,
        test_data: ArrayDataset | None = None,
    ) -> None:
        self.trainer, self.strategy, self.settings = trainer, strategy, settings
        self.client_id, self.data, self.test_data = client_id, data, test_data
        self.config: RunConfig | None = None
        """The run config, when built by :meth:`from_config`."""
        self.states = ClientStateFile(client_id, settings.state_dir)
        """This client's private state: committed, and pending until the server applies it."""
        self.rounds_done: list[int] = []
        if settings.insecure:
            log.warning(
                "connecting WITHOUT TLS (--insecure): traffic is readable and unauthenticated"
            )

    @classmethod
    def from_config(
        cls,
        config: RunConfig,
        settings: ClientSettings,
        client_id: int,
        *,
        data: ArrayDataset | None = None,
        trainer: Trainer | None = None,
        strategy: Strategy | FedBuff | None = None,
        test_data: ArrayDataset | None = None,
    ) -> FederatedClient:
        """The client ``client_id`` of the run ``config`` describes (deployed DP noise from the
        OS CSPRNG). ``data`` defaults to partition ``client_id`` of the config's federation,
        the same split the simulation uses, so a network run can be checked against
        ``Simulation`` bit for bit; ``test_data`` to that client's held-out split, if the
        config has one."""
        config = for_deployment(config)  # local DP noise from the OS CSPRNG
        if data is None or trainer is None or strategy is None:
            task = load_task_for(config)
            federation = build_federation(config, task)
            if data is None:
                n = federation.num_clients
                if not 0 <= client_id < n:
                    raise ConfigError(
                        f"client id {client_id} is not in this federation: [data] num_clients "
                        f"= {n} gives ids 0..{n - 1}; pass one of those, or give this client "
                        "its own data (--data)"
                    )
                data = federation.train_data(client_id)
                test_data = federation.test_data(client_id) if test_data is None else test_data
            trainer = trainer or build_trainer(config, task)
            strategy = strategy or build_strategy(config, trainer, federation.num_clients)
        client = cls(
            trainer, strategy, settings, client_id=client_id, data=data, test_data=test_data
        )
        client.config = config
        return client

    def _pem_paths(self) -> dict[str, Path]:
        """This client's credential files: what each is -> its path."""
        s = self.settings
        d = Path(s.certs_dir) if s.certs_dir else None
        given = {"CA certificate": s.ca, "client key": s.key, "client certificate": s.cert}
        names = ["ca.pem", f"client-{self.client_id}.key", f"client-{self.client_id}.pem"]
        paths = {}
        for (what, path), name in zip(given.items(), names, strict=True):
            if path is not None:
                paths[what] = Path(path)
            elif d is not None:
                paths[what] = d / name
            else:
                raise FedfleetError(
                    f"no {what} ({name}): pass certs_dir or the file itself, or insecure"
                )
        return paths

    def _channel(self) -> grpc.Channel:
        s = self.settings
        options = grpc_options(s.max_message_bytes)
        if s.insecure:
            return grpc.insecure_channel(s.server, options=options)
        pem = {what: read_pem(path, what) for what, path in self._pem_paths().items()}
        creds = grpc.ssl_channel_credentials(
            root_certificates=pem["CA certificate"],
            private_key=pem["client key"],
            certificate_chain=pem["client certificate"],
        )
        if s.server_name:
            options.append(("grpc.ssl_target_name_override", s.server_name))
        return grpc.secure_channel(s.server, creds, options=options)

    def run(self) -> list[int]:
        """Take part until the server says DONE; returns the rounds this client trained in.

        Reconnects with exponential backoff, logging why each attempt failed; raises
        :class:`FedfleetError` with the last reason after ``give_up_after_s`` without the
        server, or as soon as a configuration error repeats (see :func:`_diagnose`).
        """
        s = self.settings
        delay = s.backoff_initial_s
        lost_since: float | None = None
        last, repeats = "", 0  # the last configuration error and how often it came in a row
        while True:
            connected = False
            try:
                with self._channel() as channel:
                    stub = pb_grpc.FedFleetStub(channel)
                    self._register(stub)
                    connected = True
                    delay, lost_since, last, repeats = s.backoff_initial_s, None, "", 0
                    if self._serve(stub):
                        return self.rounds_done
            except grpc.RpcError as err:
                code, details = err.code(), err.details() or ""
                if code not in _RETRYABLE:
                    raise self._refused(err) from None
                reason, config_error = _diagnose(code, details, s, self._pem_paths)
                if connected:  # it was up: a server restart or a network drop, not the setup
                    if config_error:
                        reason = f"the server closed the connection ({_last_error(details)})"
                    what = f"lost the connection to {s.server}: {reason}"
                else:
                    what = f"cannot connect: {reason}"
                    repeats = repeats + 1 if config_error and reason == last else int(config_error)
                    last = reason if config_error else ""
                if repeats >= _CONFIG_ERROR_REPEATS:
                    raise FedfleetError(
                        f"client {self.client_id} {what}; giving up, retrying will not fix "
                        f"this (gRPC: {code.name}: {_last_error(details)})"
                    ) from None
                now = time.monotonic()
                lost_since = lost_since or now
                if s.give_up_after_s is not None and now - lost_since > s.give_up_after_s:
                    raise FedfleetError(
                        f"client {self.client_id} {what}; giving up after "
                        f"{now - lost_since:.0f} s (give_up_after_s = {s.give_up_after_s:g})"
                    ) from None
                pause = delay * (0.5 + random.random())  # jitter: clients don't stampede
                log.warning("client %d %s; retrying in %.1f s", self.client_id, what, pause)
                log.debug("client %d: gRPC said %s: %s", self.client_id, code.name, details)
                time.sleep(pause)
                delay = min(delay * 2, s.backoff_max_s)

    def register_once(self) -> None:
        """Connect and register once (no retries): raises ClientRefused or grpc.RpcError."""
        with self._channel() as channel:
            try:
                self._register(pb_grpc.FedFleetStub(channel))
            except grpc.RpcError as err:
                if err.code() in _RETRYABLE:
                    raise
                raise self._refused(err) from None

    def _refused(self, err: grpc.RpcError) -> ClientRefused:
        code, details = err.code(), err.details()
        return ClientRefused(f"server refused client {self.client_id}: {code.name}: {details}")

    def _register(self, stub: pb_grpc.FedFleetStub) -> None:
        reply = stub.Register(
            pb.RegisterRequest(
                client_id=self.client_id,
                layout_fingerprint=self.trainer.layout.fingerprint,
                num_samples=len(self.data),
                num_test_samples=0 if self.test_data is None else len(self.test_data),
                protocol_version=PROTOCOL_VERSION,
            ),
            timeout=self.settings.rpc_timeout_s,
        )
        if not reply.ok:
            raise ClientRefused(f"server refused client {self.client_id}: {reply.message}")
        mismatch = protocol_mismatch(PROTOCOL_VERSION, reply.protocol_version)
        if mismatch is not None:  # an older server accepts anyone, then misreads the uploads
            raise ClientRefused(
                f"client {self.client_id} cannot join {self.settings.server}: {mismatch}"
            )
        log.info("client %d registered", self.client_id)

    def _serve(self, stub: pb_grpc.FedFleetStub) -> bool:
        """Poll and train until DONE (True); RpcErrors propagate to the reconnect loop."""
        layout = self.trainer.layout
        while True:
            # no deadline: a task's stream stays open while this client trains (the server
            # learns at once if the client dies); keepalive pings find a dead server
            stream = stub.GetTask(pb.TaskRequest(client_id=self.client_id))
            first = next(stream, None)
            if first is None or first.WhichOneof("body") != "header":
                continue
            h = first.header
            if h.kind == pb.TaskHeader.WAIT:
                continue
            self.states.resolve(int(h.applied_round))
            if h.kind == pb.TaskHeader.DONE:
                if h.message:
                    raise FedfleetError(f"client {self.client_id}: {h.message}")
                log.info("client %d: the server finished the run", self.client_id)
                return True
            source = f"the server's round {h.round} task"
            rx = receiver(h.job, source, kind="jobs", size=layout.size)
            while not rx.complete and (msg := next(stream, None)) is not None:
                rx.add(msg.chunk.tensor, msg.chunk.offset, msg.chunk.data)
            vector, job = instructions_from_header(rx.head, rx.finish().arrays)
            if h.kind == pb.TaskHeader.EVALUATE:
                self._evaluate(stub, h, vector)
            elif job is None or job.client_id != self.client_id:
                raise FedfleetError(
                    f"client {self.client_id}: the server's round {h.round} TRAIN task holds "
                    f"{'no job' if job is None else f'the job of client {job.client_id}'}"
                )
            else:
                self._train(stub, h, vector, job)
            for _ in stream:  # the server ends the task's stream once it has the answer
                pass

    def _train(
        self, stub: pb_grpc.FedFleetStub, h: pb.TaskHeader, vector: np.ndarray, job: Job
    ) -> None:
        result = self.strategy.client_fit(
            self.trainer,
            vector,
            self.data,
            job.instructions,
            job.seed,
            self.states.get(self.client_id),
        )
        secure_upload = _hooks.secure_upload_for(self.strategy)  # secure aggregation hook
        if secure_upload is not None:  # SecAgg / HE: masked or encrypted, through their protocol
            if secure_upload(self, h, vector, result):
                self.rounds_done.append(int(h.round))
            return
        if result.state is not None:  # before the upload: the server may apply it at once
            self.states.stage(int(h.round), result.state)
        header = pb.UpdateHeader(
            client_id=self.client_id,
            round=h.round,
            task_id=h.task_id,
            layout_fingerprint=self.trainer.layout.fingerprint,
        )
        uploads = reply_to_header(result, header)
        reply = stub.SubmitUpdate(
            _update_stream(header, uploads, self.settings.chunk_size),
            timeout=self.settings.rpc_timeout_s,
        )
        if reply.accepted:
            self.rounds_done.append(int(h.round))
        else:
            self.states.resolve(-1)  # refused: it will never be aggregated
            log.warning(
                "client %d: round %d update rejected: %s", self.client_id, h.round, reply.reason
            )

    def _evaluate(self, stub: pb_grpc.FedFleetStub, h: pb.TaskHeader, vector: np.ndarray) -> None:
        """Evaluate the global model (and, for FedPer/FedRep, this client's own) locally."""
        report = ClientEvaluation(0, 0.0, 0.0)  # nothing held out: a report of no samples
        data = self.test_data
        if data is not None and len(data) > 0:
            ev = self.trainer.evaluate(vector, data)
            strategy = self.strategy
            personalize = strategy.personalize if isinstance(strategy, Personalized) else None
            if personalize is None:
                report = ClientEvaluation(int(ev.num_samples), float(ev.loss), float(ev.accuracy))
            else:
                mine = personalize(vector, self.states.get(self.client_id))
                own = self.trainer.evaluate(mine, data)
                report = ClientEvaluation(
                    int(own.num_samples),
                    float(own.loss),
                    float(own.accuracy),
                    float(ev.loss),
                    float(ev.accuracy),
                )
        request = pb.EvaluationResult(client_id=self.client_id, round=h.round, task_id=h.task_id)
        evaluation_to_pb(report, request)
        reply = stub.SubmitEvaluation(request, timeout=self.settings.rpc_timeout_s)
        if not reply.accepted:
            log.warning(
                "client %d: round %d evaluation refused: %s", self.client_id, h.round, reply.reason
            )


def _last_error(details: str) -> str:
    """gRPC's reason without its prefixes: 'failed to connect to all addresses; last error:
    UNKNOWN: ipv4:127.0.0.1:5: Socket closed' -> 'ipv4:127.0.0.1:5: Socket closed'."""
    tail = details.rsplit("last error: ", 1)[-1]
    for code in ("UNKNOWN: ", "UNAVAILABLE: "):
        tail = tail.removeprefix(code)
    return tail.strip()


def _diagnose(
    code: grpc.StatusCode,
    details: str,
    settings: ClientSettings,
    pem_paths: Callable[[], dict[str, Path]],
) -> tuple[str, bool]:
    """Why a call failed, in words a user acts on, and whether it is a configuration error
    (one retrying will not fix).

    Read from what grpcio 1.85 reports on 127.0.0.1 (all UNAVAILABLE): nothing listening is
    '... Connection refused'; a server certificate from another CA is 'Tls handshake failed
    ... certificate signature failure'; a TLS client against a plaintext server is 'Tls
    handshake failed ... WRONG_VERSION_NUMBER'; a plaintext client against a TLS server, and a
    TLS client whose certificate the server refuses (another CA, none), are both 'Socket
    closed' (the server hangs up; TLS 1.3 tells the client no more).
    """
    text = details.lower()
    where = settings.server
    if "connection refused" in text:
        return f"nothing listens at {where} (is the server running, on that host and port?)", False
    if "wrong_version_number" in text:
        return (
            f"the server at {where} does not speak TLS (was it started with --insecure?): give it "
            "--certs-dir, or pass --insecure to this client too"
        ), True
    if "hostname verification" in text:
        return (
            f"the certificate of the server at {where} is not issued for that host: connect by a "
            "name the certificate lists (localhost, 127.0.0.1 for `fedfleet certs`) or set "
            "server_name"
        ), True
    if "tls handshake failed" in text or "certificate verify failed" in text:
        if "expired" in text:
            return f"the certificate of the server at {where} has expired", True
        if "signature failure" in text or "issuer" in text or "verify failed" in text:
            ca = pem_paths()["CA certificate"]
            return (
                f"this client does not trust the server at {where}: its certificate is not "
                f"signed by the CA certificate {str(ca)!r} (do the server and this client hold "
                "credentials from different CAs?)"
            ), True
        return f"the TLS handshake with {where} failed ({_last_error(details)})", True
    if "socket closed" in text:
        if settings.insecure:
            return (
                f"the server at {where} speaks TLS: it closed this plaintext connection (drop "
                "--insecure and give this client its certificates)"
            ), True
        cert = pem_paths()["client certificate"]
        return (
            f"the server at {where} refused this client's certificate {str(cert)!r} (is it "
            "signed by the server's CA, and still valid?)"
        ), True
    if "resolving" in text or "dns resolution" in text or "domain name not found" in text:
        return f"cannot resolve the host name in {where}", False
    if code == grpc.StatusCode.DEADLINE_EXCEEDED or "timed out" in text:
        return f"no answer from {where} in time (a firewall, or the wrong host?)", False
    return f"{code.name}: {_last_error(details)}", False


def _update_stream(header: pb.UpdateHeader, arrays: list[Any], chunk_size: int) -> Iterator[Any]:
    yield pb.UpdateMessage(header=header)
    for chunk in chunk_messages(arrays, chunk_size):
        yield pb.UpdateMessage(chunk=chunk)
