"""Vertical parties as separate processes: a gRPC relay with mutual TLS, and its channel.

The parties of a vertical protocol talk to each other, not to one server, so the deployment is
a relay: one process (run next to the guest or an arbiter: ``fedfleet vertical relay``) that
every party connects to with the deployment's certificates (``fedfleet certs``), and that
forwards each message to the receiver's mailbox. The same party programs that run on
:class:`~fedfleet.vertical.LocalNetwork` run on :class:`RelayChannel` unchanged.

- **Who sends**: a party's name is its certificate's common name; the relay stamps every
  message it forwards with the sender's CN, never with a name the caller claims, so a party can
  only send as itself, and a CN outside the relay's roster is refused (as is a certificate
  the CA did not sign, at the handshake).
- **What travels**: the codec's frames (:func:`fedfleet._codec.to_frame`: a JSON header
  and numeric arrays, no pickle); the receiver decodes and checks them as ``LocalNetwork`` does.
- **Methods** (generic bytes methods of service ``fedfleet.vertical.Relay``, no proto needed
  for three byte strings): ``Send`` (metadata ``fedfleet-to``: the receiver; request: the frame),
  ``Inbox`` (a stream of every message for the caller: ``uint16 len | sender | frame``) and
  ``Done`` (the caller finished; a non-empty request says why it failed, and the relay tells
  everyone, so nobody waits for a dead party until a timeout).

Threat model: the relay sees every frame (it is run by one of the parties, or a party they
all trust to forward, as FATE's rollsite); frames are what the protocols allow each receiver
to see, so run the relay where that is acceptable. Messages sit in the relay's memory until
their receiver reads them; a receiver that disconnects mid-stream may lose what was in flight.
"""

from __future__ import annotations

import logging
import queue
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedfleet._extras import require

for _module in ("grpc", "cryptography"):
    require(_module, extra="deploy", feature="the vertical relay (fedfleet.vertical._net)")

import grpc  # noqa: E402

from fedfleet._codec import Message, from_frame, to_frame  # noqa: E402
from fedfleet.net._certs import read_pem  # noqa: E402
from fedfleet.net._settings import grpc_options  # noqa: E402
from fedfleet.vertical._channel import PartyError  # noqa: E402

__all__ = ["Relay", "RelayChannel", "certificate_name"]

log = logging.getLogger("fedfleet.vertical.relay")

_SERVICE = "fedfleet.vertical.Relay"
_TO = "fedfleet-to"
_RELAY = "!relay"  # the sender of the relay's own notices (no CN can start with "!" here)
_MAX_BYTES = 512 * 1024 * 1024
_FRAME_MAGIC = b"FFC1"


def _pack(sender: str, payload: bytes) -> bytes:
    name = sender.encode()
    return struct.pack("<H", len(name)) + name + payload


def _unpack(item: bytes) -> tuple[str, bytes]:
    (n,) = struct.unpack_from("<H", item)
    return item[2 : 2 + n].decode(), item[2 + n :]


def certificate_name(cert: str | Path) -> str:
    """The common name of the PEM certificate ``cert``: the party it identifies."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    pem = read_pem(cert, "party certificate")
    names = x509.load_pem_x509_certificate(pem).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise PartyError(f"certificate {str(cert)!r} has no common name (no party name)")
    value = names[0].value
    return value.decode() if isinstance(value, bytes) else value


class Relay:
    """The relay server: forwards frames between the parties of ``roster`` (mutual TLS).

    Args:
        roster: the parties' names, each the CN of its certificate.
        certs_dir: ``ca.pem`` (the CA parties' certificates must be signed by) and
            ``server.pem``/``server.key`` (the relay's own).
        host, port: where to listen (port 0: any free port; :meth:`start` returns it).

    Examples:
        >>> relay = Relay(["guest", "host-0"], certs_dir="certs")  # doctest: +SKIP
        >>> port = relay.start(); relay.wait(timeout=3600); relay.stop()  # doctest: +SKIP
    """

    def __init__(
        self,
        roster: Sequence[str],
        *,
        certs_dir: str | Path,
        host: str = "127.0.0.1",
        port: int = 0,
        max_message_bytes: int = _MAX_BYTES,
    ) -> None:
        if len(set(roster)) != len(roster) or not roster:
            raise PartyError(f"the relay's party names must be distinct, got {list(roster)}")
        self.roster = tuple(roster)
        self.certs_dir = Path(certs_dir)
        self.host, self.port = host, port
        self.max_message_bytes = max_message_bytes
        self._mailboxes: dict[str, queue.Queue[bytes]] = {p: queue.Queue() for p in roster}
        self._done: set[str] = set()
        self._all_done = threading.Event()
        self._lock = threading.Lock()
        self.bytes_sent: dict[str, int] = dict.fromkeys(roster, 0)
        """Frame bytes each party sent through the relay."""
        self.failures: dict[str, str] = {}
        self._server: grpc.Server | None = None

    def start(self) -> int:
        """Listen; returns the port."""
        d = self.certs_dir
        creds = grpc.ssl_server_credentials(
            [(read_pem(d / "server.key", "relay key"), read_pem(d / "server.pem", "relay cert"))],
            root_certificates=read_pem(d / "ca.pem", "CA certificate"),
            require_client_auth=True,
        )
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4 * len(self.roster) + 4),
            options=grpc_options(self.max_message_bytes),
        )
        handler = grpc.method_handlers_generic_handler(
            _SERVICE,
            {
                "Send": grpc.unary_unary_rpc_method_handler(self._send),
                "Inbox": grpc.unary_stream_rpc_method_handler(self._inbox),
                "Done": grpc.unary_unary_rpc_method_handler(self._finish),
            },
        )
        server.add_generic_rpc_handlers((handler,))
        self.port = server.add_secure_port(f"{self.host}:{self.port}", creds)
        if self.port == 0:
            raise PartyError(f"the relay cannot listen on {self.host}:{self.port}")
        server.start()
        self._server = server
        log.info("relay for %s listening on %s:%d", list(self.roster), self.host, self.port)
        return self.port

    def wait(self, timeout: float | None = None) -> bool:
        """Until every party said it is done (True), or ``timeout`` seconds (False)."""
        return self._all_done.wait(timeout)

    def stop(self, grace: float = 5.0) -> None:
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None

    # --- handlers -------------------------------------------------------------------------

    def _caller(self, context: Any) -> str:
        """The caller's party: its certificate's CN, which must be in the roster."""
        cns = context.auth_context().get("x509_common_name") or []
        cn = cns[0].decode(errors="replace") if cns else ""
        if cn not in self._mailboxes:
            log.warning("refused %s: certificate CN %r is not a party", context.peer(), cn)
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"certificate CN {cn[:80]!r} is not a party of this relay {list(self.roster)}",
            )
        return cn

    def _send(self, request: bytes, context: Any) -> bytes:
        sender = self._caller(context)
        to = dict(context.invocation_metadata()).get(_TO, "")
        if to not in self._mailboxes or to == sender:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{sender} sent to {to[:80]!r}, which is not another party of {list(self.roster)}",
            )
        if not request.startswith(_FRAME_MAGIC):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{sender} sent a non-frame message")
        with self._lock:
            self.bytes_sent[sender] += len(request)
        self._mailboxes[to].put(_pack(sender, request))
        return b""

    def _inbox(self, request: bytes, context: Any) -> Iterator[bytes]:
        party = self._caller(context)
        box = self._mailboxes[party]
        while context.is_active():
            try:
                yield box.get(timeout=0.2)
            except queue.Empty:
                continue

    def _finish(self, request: bytes, context: Any) -> bytes:
        party = self._caller(context)
        if request:
            why = request.decode(errors="replace")[:2000]
            self.failures[party] = why
            log.warning("party %s failed: %s", party, why)
            for other, box in self._mailboxes.items():
                if other != party:
                    box.put(_pack(_RELAY, f"{party} failed: {why}".encode()))
        with self._lock:
            self._done.add(party)
            if self._done == set(self.roster):
                self._all_done.set()
        return b""


@dataclass
class _Inbox:
    """The messages that arrived for this party, one queue per sender."""

    queues: dict[str, queue.Queue[bytes]]
    failed: str | None = None


class RelayChannel:
    """A party's :class:`~fedfleet.vertical.Channel` through a :class:`Relay`.

    Args:
        relay: ``host:port`` of the relay.
        certs_dir: holds ``ca.pem`` and the party's ``<party>.pem``/``<party>.key`` (or give
            ``cert``/``key``); the party is the certificate's CN.
        parties: every party's name (to keep one queue per sender).
        server_name: the name the relay's certificate holds, if not the address's host.
    """

    def __init__(
        self,
        relay: str,
        *,
        party: str,
        parties: Sequence[str],
        certs_dir: str | Path,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        server_name: str | None = None,
        timeout_s: float = 600.0,
        max_message_bytes: int = _MAX_BYTES,
    ) -> None:
        d = Path(certs_dir)
        cert_path = Path(cert) if cert is not None else d / f"{party}.pem"
        key_path = Path(key) if key is not None else d / f"{party}.key"
        named = certificate_name(cert_path)
        if named != party:
            raise PartyError(
                f"party {party!r} was given the certificate of {named!r} ({cert_path}); the "
                "relay knows a party by its certificate, so each party needs its own"
            )
        self._party = party
        self.timeout_s = timeout_s
        creds = grpc.ssl_channel_credentials(
            root_certificates=read_pem(d / "ca.pem", "CA certificate"),
            private_key=read_pem(key_path, f"{party}'s key"),
            certificate_chain=read_pem(cert_path, f"{party}'s certificate"),
        )
        options = grpc_options(max_message_bytes)
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        self._channel = grpc.secure_channel(relay, creds, options=options)
        self._send_rpc = self._channel.unary_unary(f"/{_SERVICE}/Send")
        self._done_rpc = self._channel.unary_unary(f"/{_SERVICE}/Done")
        self._inbox = _Inbox({p: queue.Queue() for p in parties if p != party})
        self._stream = self._channel.unary_stream(f"/{_SERVICE}/Inbox")(b"", wait_for_ready=True)
        self._reader = threading.Thread(target=self._read, name=f"inbox-{party}", daemon=True)
        self._reader.start()
        self.bytes_sent = 0

    @property
    def party(self) -> str:
        return self._party

    def _read(self) -> None:
        try:
            for item in self._stream:
                sender, payload = _unpack(item)
                if sender == _RELAY:
                    self._inbox.failed = payload.decode(errors="replace")
                elif sender in self._inbox.queues:
                    self._inbox.queues[sender].put(payload)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.CANCELLED:
                self._inbox.failed = f"the relay's stream ended: {err.code().name}: {err.details()}"

    def send(self, to: str, message: Message) -> None:
        frame = to_frame(message)
        try:
            self._send_rpc(
                frame, metadata=((_TO, to),), timeout=self.timeout_s, wait_for_ready=True
            )
        except grpc.RpcError as err:
            raise PartyError(
                f"{self._party} could not send {message.kind!r} to {to}: "
                f"{err.code().name}: {err.details()}"
            ) from None
        self.bytes_sent += len(frame)

    def recv(self, sender: str, kind: str, timeout: float | None = None) -> Message:
        if sender not in self._inbox.queues:
            raise PartyError(f"{self._party} waits for unknown party {sender!r}")
        wait = self.timeout_s if timeout is None else timeout
        deadline = time.monotonic() + wait
        while True:
            try:
                frame = self._inbox.queues[sender].get(timeout=0.2)
                break
            except queue.Empty:
                if self._inbox.failed is not None:
                    raise PartyError(
                        f"{self._party} stopped waiting for {kind!r}: {self._inbox.failed}"
                    ) from None
                if time.monotonic() > deadline:
                    raise PartyError(
                        f"{self._party} waited {wait:g} s for {kind!r} from {sender}, which "
                        "sent nothing"
                    ) from None
        message = from_frame(frame, source=f"{sender} -> {self._party}")
        if message.kind != kind:
            raise PartyError(
                f"{self._party} expected {kind!r} from {sender} but got {message.kind!r}"
            )
        return message

    def close(self, failure: str | None = None) -> None:
        """Tell the relay this party is done (or failed, and why), then disconnect."""
        try:
            wait = min(30.0, self.timeout_s)  # a channel that never connected waits no longer
            self._done_rpc((failure or "").encode(), timeout=wait, wait_for_ready=True)
        except grpc.RpcError as err:
            log.warning("%s could not tell the relay it is done: %s", self._party, err.code())
        finally:
            self._stream.cancel()
            self._channel.close()
