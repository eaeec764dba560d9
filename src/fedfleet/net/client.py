"""The federated client: registers, polls for tasks, trains with the strategy's client side.

Only outgoing calls. For each TRAIN task the client downloads the global model (and any strategy
payload) in chunks, runs ``strategy.client_fit(trainer, vector, data, instructions, seed, state)``
with the seed the server sent (``client_seed(seed, rnd, cid)``, as in simulation), uploads the
trained vector in chunks, and keeps its new private state only if the server accepted the update.
When the connection drops it reconnects with exponential backoff and registers again.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from fedfleet.client.protocol import Trainer
from fedfleet.client.state_store import ClientStateStore, MemoryStateStore
from fedfleet.data.base import ArrayDataset
from fedfleet.errors import FedfleetError
from fedfleet.net import fedfleet_pb2 as pb
from fedfleet.net import fedfleet_pb2_grpc as pb_grpc
from fedfleet.net.server import grpc_options, instructions_from_header
from fedfleet.net.wire import TensorReceiver, chunk_messages, tensor_infos
from fedfleet.runs.build import build_federation, build_strategy, build_trainer, load_task_for
from fedfleet.runs.config import RunConfig
from fedfleet.strategies.base import Strategy

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
    chunk_size: int = 1 << 20
    max_message_bytes: int = 4 << 20
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 10.0
    give_up_after_s: float | None = None
    """Stop reconnecting after this long without reaching the server (None = never)."""
    rpc_timeout_s: float = 600.0


class FederatedClient:
    """One client process of a federation.

    ``data`` defaults to partition ``client_id`` of the config's federation, the same split the
    simulation uses, so a network run can be checked against ``Simulation`` bit for bit.
    """

    def __init__(
        self,
        config: RunConfig,
        settings: ClientSettings,
        client_id: int,
        *,
        data: ArrayDataset | None = None,
        trainer: Trainer | None = None,
        strategy: Strategy | None = None,
        states: ClientStateStore | None = None,
    ) -> None:
        self.config, self.settings, self.client_id = config, settings, client_id
        if data is None or trainer is None or strategy is None:
            task = load_task_for(config)
            federation = build_federation(config, task)
            data = data if data is not None else federation.train_data(client_id)
            trainer = trainer or build_trainer(config, task)
            strategy = strategy or build_strategy(config, trainer, federation.num_clients)
        self.data, self.trainer, self.strategy = data, trainer, strategy
        self.states = states if states is not None else MemoryStateStore()
        self.rounds_done: list[int] = []
        if settings.insecure:
            log.warning(
                "connecting WITHOUT TLS (--insecure): traffic is readable and unauthenticated"
            )

    def _channel(self) -> grpc.Channel:
        s = self.settings
        options = grpc_options(s.max_message_bytes)
        if s.insecure:
            return grpc.insecure_channel(s.server, options=options)
        d = Path(s.certs_dir) if s.certs_dir else None

        def read(given: str | None, default: str) -> bytes:
            if given is not None:
                return Path(given).read_bytes()
            if d is None:
                raise FedfleetError(f"no {default}: pass certs_dir or the file itself, or insecure")
            return (d / default).read_bytes()

        creds = grpc.ssl_channel_credentials(
            root_certificates=read(s.ca, "ca.pem"),
            private_key=read(s.key, f"client-{self.client_id}.key"),
            certificate_chain=read(s.cert, f"client-{self.client_id}.pem"),
        )
        if s.server_name:
            options.append(("grpc.ssl_target_name_override", s.server_name))
        return grpc.secure_channel(s.server, creds, options=options)

    def run(self) -> list[int]:
        """Take part until the server says DONE; returns the rounds this client trained in."""
        s = self.settings
        delay = s.backoff_initial_s
        lost_since: float | None = None
        while True:
            try:
                with self._channel() as channel:
                    stub = pb_grpc.FedFleetStub(channel)
                    self._register(stub)
                    delay, lost_since = s.backoff_initial_s, None
                    if self._serve(stub):
                        return self.rounds_done
            except grpc.RpcError as err:
                code = err.code()
                if code not in _RETRYABLE:
                    raise self._refused(err) from None
                now = time.monotonic()
                lost_since = lost_since or now
                if s.give_up_after_s is not None and now - lost_since > s.give_up_after_s:
                    raise FedfleetError(
                        f"client {self.client_id}: no server at {s.server} for "
                        f"{now - lost_since:.0f} s ({code.name}); giving up"
                    ) from None
                log.info("client %d: %s; reconnecting in %.1f s", self.client_id, code.name, delay)
                time.sleep(delay * (0.5 + random.random()))  # jitter: clients don't stampede
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
            ),
            timeout=self.settings.rpc_timeout_s,
        )
        if not reply.ok:
            raise ClientRefused(f"server refused client {self.client_id}: {reply.message}")
        log.info("client %d registered", self.client_id)

    def _serve(self, stub: pb_grpc.FedFleetStub) -> bool:
        """Poll and train until DONE (True); RpcErrors propagate to the reconnect loop."""
        layout = self.trainer.layout
        while True:
            stream = stub.GetTask(
                pb.TaskRequest(client_id=self.client_id), timeout=self.settings.rpc_timeout_s
            )
            first = next(stream, None)
            if first is None or first.WhichOneof("body") != "header":
                continue
            h = first.header
            if h.kind == pb.TaskHeader.DONE:
                log.info("client %d: the server finished the run", self.client_id)
                return True
            if h.kind == pb.TaskHeader.WAIT:
                continue
            receiver = TensorReceiver(h.tensors, layout.size)
            for msg in stream:
                receiver.add(msg.chunk)
            arrays = receiver.finish()
            vector = arrays.pop("vector")
            instructions = instructions_from_header(h, arrays)
            result = self.strategy.client_fit(
                self.trainer,
                vector,
                self.data,
                instructions,
                int(h.seed),
                self.states.get(self.client_id),
            )
            fit = result.fit
            uploads = {"vector": np.asarray(fit.vector, dtype=np.float32), **dict(result.extras)}
            header = pb.UpdateHeader(
                client_id=self.client_id,
                round=h.round,
                task_id=h.task_id,
                layout_fingerprint=layout.fingerprint,
                num_samples=int(fit.num_samples),
                num_steps=int(fit.num_steps),
                metrics={k: float(v) for k, v in fit.metrics.items()},
                tensors=tensor_infos(uploads),
            )
            reply = stub.SubmitUpdate(
                _update_stream(header, list(uploads.values()), self.settings.chunk_size),
                timeout=self.settings.rpc_timeout_s,
            )
            if reply.accepted:
                self.rounds_done.append(int(h.round))
                if result.state is not None:
                    self.states.put(self.client_id, result.state)
            else:
                log.warning(
                    "client %d: round %d update rejected: %s", self.client_id, h.round, reply.reason
                )


def _update_stream(header: pb.UpdateHeader, arrays: list[Any], chunk_size: int) -> Iterator[Any]:
    yield pb.UpdateMessage(header=header)
    for chunk in chunk_messages(arrays, chunk_size):
        yield pb.UpdateMessage(chunk=chunk)
