"""The server's lifecycle: listening (the gRPC server on its own event-loop thread, mutual TLS
unless ``insecure``), finishing a run (every waiting call hears DONE, with the reason if it
failed), and stopping (once connected clients heard it, or ``linger_s``)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import grpc

from fedfleet._proto import fedfleet_pb2_grpc as pb_grpc
from fedfleet.errors import FedfleetError
from fedfleet.net._certs import read_pem
from fedfleet.net._hooks import SecureRounds
from fedfleet.net._registration import _Registration
from fedfleet.net._settings import grpc_options

__all__ = ["_Lifecycle"]

log = logging.getLogger("fedfleet.net.server")


class _Lifecycle(_Registration):
    """``start``, ``stop`` and ``_finish`` of ``FederatedServer`` (mixed into it)."""

    secure: SecureRounds | None
    _server: grpc.aio.Server | None
    _stopping: threading.Lock
    port: int

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
