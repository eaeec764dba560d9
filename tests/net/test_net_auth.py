"""Mutual TLS: who gets in and who is refused, against a live TLS server process."""

from __future__ import annotations

from dataclasses import replace

import grpc
import pytest

from conftest import start_server, wait_for, write_config
from fedfleet._proto import fedfleet_pb2 as pb
from fedfleet._proto import fedfleet_pb2_grpc as pb_grpc
from fedfleet.data import ArrayDataset
from fedfleet.errors import FedfleetError
from fedfleet.net import ServerSettings
from fedfleet.net._certs import create_test_federation, issue_certificate
from fedfleet.net._cli import read_config
from fedfleet.net._client import ClientRefused, ClientSettings, FederatedClient
from fedfleet.runs._build import build_strategy, build_trainer, load_task_for


@pytest.fixture
def tls_server(procs, certs_dir):
    """A TLS server that never starts a round, with a test-local revocation list."""
    config = write_config(procs.tmp / "run.toml")
    revoked = procs.tmp / "revoked.txt"
    revoked.write_text("# revoked ids\nclient-3\n")
    config.write_text(config.read_text() + f'[deploy]\nrevoked_path = "{revoked}"\n')
    port = start_server(procs, config, "--certs-dir", str(certs_dir), "--min-clients", "99")
    cfg, _ = read_config(config)
    task = load_task_for(cfg)
    trainer = build_trainer(cfg, task)
    data = ArrayDataset(task.train.x[:50], task.train.y[:50])
    strategy = build_strategy(cfg, trainer, 3)

    def make_client(cid: int, trainer=trainer, **settings) -> FederatedClient:
        s = ClientSettings(server=f"127.0.0.1:{port}", rpc_timeout_s=10, **settings)
        return FederatedClient.from_config(
            cfg, s, cid, data=data, trainer=trainer, strategy=strategy
        )

    return port, make_client, cfg, task


def test_client_with_valid_certificate_registers(tls_server, certs_dir, procs):
    _, make_client, _, _ = tls_server
    make_client(0, certs_dir=str(certs_dir)).register_once()
    wait_for(lambda: "client 0 registered" in procs.log("server"), 10, "the server log")


def test_revoked_client_is_refused_and_named_in_the_log(tls_server, certs_dir, procs):
    _, make_client, _, _ = tls_server
    with pytest.raises(ClientRefused, match="revoked"):
        make_client(3, certs_dir=str(certs_dir)).register_once()
    wait_for(lambda: "refused revoked client 3" in procs.log("server"), 10, "the server log")


def test_certificate_for_an_unknown_name_is_refused(tls_server, certs_dir, procs, tmp_path):
    _, make_client, _, _ = tls_server
    cert, key = issue_certificate(certs_dir, "mallory", out_dir=tmp_path)
    client = make_client(0, ca=str(certs_dir / "ca.pem"), cert=str(cert), key=str(key))
    with pytest.raises(ClientRefused, match="mallory"):
        client.register_once()
    wait_for(lambda: "'mallory' names no client" in procs.log("server"), 10, "the server log")


def test_certificate_from_another_ca_is_refused(tls_server, certs_dir, tmp_path):
    _, make_client, _, _ = tls_server
    other = create_test_federation(tmp_path / "other", 1)
    client = make_client(
        0,
        ca=str(certs_dir / "ca.pem"),
        cert=str(other / "client-0.pem"),
        key=str(other / "client-0.key"),
    )
    with pytest.raises(grpc.RpcError) as err:
        client.register_once()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_without_certificate_is_refused(tls_server, certs_dir):
    port, *_ = tls_server
    creds = grpc.ssl_channel_credentials(root_certificates=(certs_dir / "ca.pem").read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{port}", creds) as channel:
        stub = pb_grpc.FedFleetStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Register(pb.RegisterRequest(client_id=0, num_samples=1), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_plaintext_client_against_tls_server_is_refused_and_gives_up(tls_server):
    _, make_client, _, _ = tls_server
    client = make_client(0, insecure=True, give_up_after_s=1.0, backoff_initial_s=0.1)
    with pytest.raises(grpc.RpcError):
        client.register_once()
    with pytest.raises(FedfleetError, match="giving up"):
        client.run()


def test_client_with_another_model_is_refused_with_the_reason(tls_server, certs_dir):
    _, make_client, cfg, task = tls_server
    other_cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"hidden": (16,)})})
    other = build_trainer(other_cfg, task)
    with pytest.raises(ClientRefused, match=r"layout .* server.s model config"):
        make_client(1, trainer=other, certs_dir=str(certs_dir)).register_once()


def test_server_needs_certificates_or_an_explicit_insecure_flag():
    with pytest.raises(FedfleetError, match="insecure"):
        ServerSettings()
    assert replace(ServerSettings(insecure=True), port=5).port == 5


def test_a_stream_without_its_header_is_refused_naming_the_certified_client(
    tls_server, certs_dir, procs
):
    _, make_client, _, _ = tls_server
    with make_client(2, certs_dir=str(certs_dir))._channel() as channel:
        stub = pb_grpc.FedFleetStub(channel)
        chunk = pb.UpdateMessage(chunk=pb.Chunk(tensor=0, offset=0, data=b"\0" * 8))
        reply = stub.SubmitUpdate(iter([chunk]), timeout=10)
    assert not reply.accepted
    assert reply.reason == "SubmitUpdate from client 2: the stream must start with a header"
    wait_for(lambda: "refused SubmitUpdate from client 2" in procs.log("server"), 10, "the log")
