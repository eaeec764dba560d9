"""How the server listens and paces rounds (:class:`ServerSettings`) and the gRPC channel
options server and client share (:func:`grpc_options`). Below both ``server`` and ``client``, so
neither imports the other; :mod:`fedfleet.net._server` re-exports both names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedfleet.errors import FedfleetError

__all__ = ["RunSpec", "ServerSettings", "grpc_options"]


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
    """A client with no call open whose last call ended this long ago counts as disconnected
    (one that hangs up counts as disconnected at once)."""
    poll_wait_s: float = 20.0
    """How long a GetTask long poll waits for a task before answering WAIT (a waiting poll
    holds no thread, so a long wait costs nothing but makes fewer calls)."""
    chunk_size: int = 4 << 20
    """Bytes of array data per stream message (4 MiB: fewer, larger messages measured faster
    than 1 MiB for a 10M-parameter model; bench/README.md)."""
    max_message_bytes: int = 8 << 20
    """gRPC's per-message limit, both directions (chunks must fit in it)."""
    certs_dir: str | None = None
    """Directory with ca.pem, server.pem, server.key (and revoked.txt) for mutual TLS."""
    revoked_path: str | None = None
    """File of revoked client CNs or ids, one a line; default certs_dir/revoked.txt."""
    insecure: bool = False
    """Serve plaintext without authentication (testing only; logs a warning)."""
    run_dir: str | None = None
    """Where the per-round checkpoint and metrics go (None = no checkpoints)."""
    max_concurrent_rpcs: int = 100_000
    """Calls served at once before new ones are refused (RESOURCE_EXHAUSTED). Calls are
    coroutines, not threads: each connected client holds one or two."""
    rejoin_grace_s: float = 15.0
    """A selected client that hangs up before answering has this long to call back (a
    restarted client picks its task up again) before the round stops waiting for it."""
    upload_idle_timeout_s: float = 30.0
    """An upload stream that sends nothing for this long is closed and refused."""
    max_rejections_kept: int = 100
    """Refusals kept in full (in memory and the checkpoint); older ones are only counted."""

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
        if self.upload_idle_timeout_s <= 0 or self.max_concurrent_rpcs < 1:
            raise FedfleetError("upload_idle_timeout_s and max_concurrent_rpcs must be positive")


def grpc_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """What one federated run is, besides its trainer and strategy: the seed every draw derives
    from, how many rounds, and its evaluation. ``FederatedServer.from_config`` fills it from a
    run config; a program that builds its own trainer and strategy gives it directly."""

    seed: int = 0
    rounds: int = 1
    """Rounds (FedBuff: server versions) by default."""
    test_data: Any = None
    """The server's test split (an ``ArrayDataset``) for centralized evaluation (None: none)."""
    eval_every: int = 1
    """Centralized evaluation every k rounds and after the last (0: only after the last)."""
    federated_every: int = 0
    """Federated evaluation on the clients' held-out splits every k rounds (0: never)."""
    max_update_norm: float | None = None
    """Refuse uploads whose delta has a larger L2 norm (None: no bound)."""

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.eval_every < 0 or self.federated_every < 0:
            raise FedfleetError(
                f"RunSpec: rounds must be >= 1 and eval_every, federated_every >= 0; got "
                f"rounds={self.rounds}, eval_every={self.eval_every}, "
                f"federated_every={self.federated_every}"
            )
