"""The wire protocol's version, checked when a client registers: a client of another protocol
(or one from before versions were sent) is refused with FAILED_PRECONDITION and a message that
names both versions and the side to upgrade; the client stops with that message. Real sockets
on 127.0.0.1: raw gRPC stubs, a CLI client process, a server that answers as old ones did."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import numpy as np
import pytest

import fedfleet as ff
from conftest import write_config
from fedfleet._proto import fedfleet_pb2 as pb
from fedfleet._proto import fedfleet_pb2_grpc as pb_grpc
from fedfleet.net import ClientSettings, FederatedClient, FederatedServer, ServerSettings
from fedfleet.net._cli import read_config
from fedfleet.net._client import ClientRefused
from fedfleet.net._wire import PROTOCOL_VERSION

OLD_CLIENT = "client speaks protocol 1, server 2; upgrade fedfleet on the client"


def _trainer() -> ff.NumpyLogisticRegression:
    return ff.NumpyLogisticRegression((4,), 2)


@pytest.fixture
def server() -> Iterator[FederatedServer]:
    settings = ServerSettings(insecure=True, poll_wait_s=0.2)
    s = FederatedServer(_trainer(), ff.FedAvg(clients_per_round=1), settings)
    s.start()
    try:
        yield s
    finally:
        s.stop(linger_s=0)


def _register(stub: pb_grpc.FedFleetStub, fingerprint: str, **version: int) -> Any:
    request = pb.RegisterRequest(
        client_id=0, layout_fingerprint=fingerprint, num_samples=10, **version
    )
    return stub.Register(request, timeout=60)


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        ({}, OLD_CLIENT + " (the client sent no protocol version"),
        ({"protocol_version": 1}, OLD_CLIENT),
        (
            {"protocol_version": 3},
            "client speaks protocol 3, server 2; upgrade fedfleet on the server",
        ),
    ],
    ids=["missing", "older", "newer"],
)
def test_server_refuses_another_protocol_with_failed_precondition(server, caplog, sent, expected):
    """The refusal is FAILED_PRECONDITION naming both versions, logged with the client id; the
    refused client is not registered (it may not ask for tasks). The same client registering
    with the server's version is accepted and told the server's version."""
    caplog.set_level(logging.WARNING, logger="fedfleet.net.server")
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.FedFleetStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            _register(stub, server.fingerprint, **sent)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert refused.value.details().startswith(expected), refused.value.details()
        assert f"refused client 0: {expected}" in caplog.text
        with pytest.raises(grpc.RpcError) as unregistered:
            next(stub.GetTask(pb.TaskRequest(client_id=0), timeout=60))
        assert unregistered.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "register before GetTask" in unregistered.value.details()

        reply = _register(stub, server.fingerprint, protocol_version=PROTOCOL_VERSION)
        assert reply.ok and reply.protocol_version == PROTOCOL_VERSION


# a `fedfleet client` whose fedfleet speaks protocol 1 (the CLI, with the version turned back)
OLD_CLI = (
    "import sys, fedfleet.net._client as c; c.PROTOCOL_VERSION = 1; "
    "from fedfleet.net._cli import app; sys.argv[0] = 'fedfleet-net'; app()"
)


def test_old_cli_client_exits_with_the_servers_reason(procs):
    """A ``fedfleet client`` speaking protocol 1 against this server stops at once (no retry
    loop) with exit status 2 and the server's message on stderr."""
    config = write_config(procs.tmp / "run.toml", rounds=1, hidden=8)
    cfg, _ = read_config(config)
    srv = FederatedServer.from_config(cfg, ServerSettings(insecure=True, poll_wait_s=0.2))
    port = srv.start()
    try:
        client = procs.start(
            "client", "-c", OLD_CLI, "client", "--server", f"127.0.0.1:{port}",
            "--config", str(config), "--client-id", "0", "--insecure",
        )  # fmt: skip
        assert procs.wait(client, 300) == 2, procs.log("client")
    finally:
        srv.stop(linger_s=0)
    log = procs.log("client")
    assert "FAILED_PRECONDITION" in log and OLD_CLIENT in log, log
    assert "retrying" not in log, log


class _Protocol1Server(pb_grpc.FedFleetServicer):
    """Registers anyone, as servers from before protocol versions did (no version sent)."""

    def Register(self, request: pb.RegisterRequest, context: Any) -> pb.RegisterReply:
        return pb.RegisterReply(
            ok=True, client_id=request.client_id, layout_fingerprint=request.layout_fingerprint
        )


def test_client_refuses_a_server_from_before_versions():
    """A server that registers the client but names no version speaks protocol 1: the client
    stops before asking for a task, saying to upgrade the server."""
    old = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_FedFleetServicer_to_server(_Protocol1Server(), old)
    port = old.add_insecure_port("127.0.0.1:0")
    old.start()
    try:
        data = ff.data.ArrayDataset(np.zeros((10, 4), np.float32), np.zeros(10, np.int64))
        client = FederatedClient(
            _trainer(),
            ff.FedAvg(clients_per_round=1),
            ClientSettings(server=f"127.0.0.1:{port}", insecure=True, give_up_after_s=60),
            client_id=0,
            data=data,
        )
        with pytest.raises(ClientRefused) as refused:
            client.run()
    finally:
        old.stop(None)
    assert "client speaks protocol 2, server 1; upgrade fedfleet on the server" in str(
        refused.value
    )
    assert "the server sent no protocol version" in str(refused.value)
    assert client.rounds_done == []
