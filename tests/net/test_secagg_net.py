"""SecAgg over the network: real server and client processes on 127.0.0.1 under mutual TLS,
checked against SecAggFedAvg in simulation; a client killed mid-protocol; malformed messages."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import grpc
import numpy as np
import pytest

from conftest import HERE, final_vector, read_task, simulate, start_server, wait_for
from fedfleet._proto import fedfleet_pb2 as pb
from fedfleet._proto import fedfleet_pb2_grpc as pb_grpc
from fedfleet._proto import secagg_pb2 as spb
from fedfleet._proto import secagg_pb2_grpc as spb_grpc
from fedfleet.net import create_test_federation
from fedfleet.net._cli import read_config
from fedfleet.net._server import grpc_options
from fedfleet.net._wire import PROTOCOL_VERSION
from fedfleet.runs._build import build_federation, build_strategy, build_trainer, load_task_for
from fedfleet.sim import client_seed
from fedfleet.strategies import ClientUpdate

SECAGG_TOML = """\
seed = 5
rounds = {rounds}
[data]
num_clients = {clients}
[model]
hidden = [16]
[strategy]
name = "secagg"
clients_per_round = {clients}
[privacy]
clip_norm = 0.5
{dp}
[client]
epochs = 1
batch_size = 32
lr = 0.1
"""
SERVER_DEPLOY = "[deploy]\nheartbeat_timeout_s = 5.0\npoll_wait_s = 0.5\n"


@pytest.fixture(scope="module")
def certs5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_test_federation(tmp_path_factory.mktemp("certs"), 5)


def _config(path: Path, clients: int, rounds: int, dp: bool = False) -> Path:
    noise = 'noise_multiplier = 0.3\nnoise = "seeded-testing-only"' if dp else ""
    path.write_text(SECAGG_TOML.format(rounds=rounds, clients=clients, dp=noise))
    path.with_name("server.toml").write_text(path.read_text() + SERVER_DEPLOY)
    return path


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _server(procs, config, certs, timeout: float, min_clients: int) -> tuple[int, Path]:
    run_dir = procs.tmp / "run"
    port = start_server(
        procs, config.with_name("server.toml"), "--certs-dir", str(certs), "--out", str(run_dir),
        "--min-clients", str(min_clients), "--round-timeout", str(timeout),
    )  # fmt: skip
    return port, run_dir


def _client(procs, config, certs, port, cid):
    return procs.cli(
        f"client{cid}", "client", "--server", f"127.0.0.1:{port}", "--config", str(config),
        "--client-id", str(cid), "--certs-dir", str(certs),
    )  # fmt: skip


def test_tls_secagg_with_central_dp_matches_simulation_bit_for_bit(procs, certs5):
    config = _config(procs.tmp / "run.toml", clients=4, rounds=2, dp=True)
    port, run_dir = _server(procs, config, certs5, timeout=60, min_clients=4)
    clients = [_client(procs, config, certs5, port, c) for c in range(4)]
    reference = simulate(config)
    assert procs.wait(procs.procs[0], 300) == 0, procs.log("server")
    for p in clients:
        assert procs.wait(p, 300) == 0, procs.log(p.name)
    got = final_vector(run_dir, config)
    assert np.array_equal(got, reference), f"max diff {np.abs(got - reference).max()}"
    records = _metrics(run_dir)
    assert [r["secagg_included"] for r in records] == [4.0, 4.0]
    assert all(r["dp_noise_std"] == pytest.approx(0.15) for r in records)
    assert "unmasked the sum of clients [0, 1, 2, 3]" in procs.log("server")


def _expected_model(config: Path, own: dict[int, np.ndarray]) -> np.ndarray:
    """Round 1's model from SecAggFedAvg in simulation over the given clients: those in ``own``
    with the delta given there, the others (``own[c] is None``) training as their process does."""
    cfg, _ = read_config(config)
    task = load_task_for(cfg)
    fed = build_federation(cfg, task)
    trainer = build_trainer(cfg, task)
    strategy = build_strategy(cfg, trainer, fed.num_clients)
    w = trainer.init_vector(cfg.seed)
    updates = []
    for cid, delta in sorted(own.items()):
        if delta is None:
            fit = strategy.client_fit(
                trainer, w, fed.train_data(cid), strategy.local, client_seed(cfg.seed, 1, cid), None
            ).fit
            delta = fit.vector - w
        updates.append(ClientUpdate(cid, delta, 1, 1))
    new, _, metrics = strategy.aggregate_fit(1, w, strategy.init(w), updates)
    assert metrics["secagg_included"] == len(own)
    return new


def _refused(words: str, call, request, code=grpc.StatusCode.INVALID_ARGUMENT) -> None:
    """The RPC fails with ``code`` and a message containing ``words``."""
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=30)
    assert info.value.code() == code, info.value.details()
    assert words in info.value.details(), info.value.details()


def test_killed_client_and_malformed_messages_leave_an_exact_sum(procs, certs5):
    """Five clients: 0-2 are client processes; 3 is SIGKILLed halfway through uploading its
    masked input (after sharing its keys), so the survivors' shares of its mask key must remove
    its pairwise masks; 4 is this test, which sends a malformed message at every stage (each
    refused with its reason, the server unharmed) before the right one. The result must be
    exactly SecAggFedAvg's over 0, 1, 2 and 4 in simulation."""
    from fedfleet.net.secure import _secagg_wire as wire
    from fedfleet.privacy.secagg import SecAggClient

    config = _config(procs.tmp / "run.toml", clients=5, rounds=1)
    port, run_dir = _server(procs, config, certs5, timeout=60, min_clients=5)
    marker = procs.tmp / "stalled"
    victim = procs.start(
        "victim", str(HERE / "secagg_worker.py"), str(config), f"127.0.0.1:{port}", "3",
        str(certs5), str(marker),
    )  # fmt: skip
    clients = [_client(procs, config, certs5, port, c) for c in range(3)]
    cfg, _ = read_config(config)
    layout = build_trainer(cfg, load_task_for(cfg)).layout
    creds = grpc.ssl_channel_credentials(
        (certs5 / "ca.pem").read_bytes(),
        (certs5 / "client-4.key").read_bytes(),
        (certs5 / "client-4.pem").read_bytes(),
    )
    channel = grpc.secure_channel(f"127.0.0.1:{port}", creds, options=grpc_options(4 << 20))
    fed, sec = pb_grpc.FedFleetStub(channel), spb_grpc.SecureAggregationStub(channel)
    # claims to be client 0: under mutual TLS the certificate decides, so it registers as 4
    reply = fed.Register(
        pb.RegisterRequest(
            client_id=0,
            layout_fingerprint=layout.fingerprint,
            num_samples=50,
            protocol_version=PROTOCOL_VERSION,
        )
    )
    assert reply.ok and reply.client_id == 4
    header = None
    while header is None or header.kind != pb.TaskHeader.TRAIN:
        header, _, _task_stream = read_task(fed, 4, layout.size, timeout=120)  # kept open
    ref = spb.RoundRef(client_id=4, round=header.round, task_id=header.task_id)

    stale = spb.RoundRef(client_id=4, round=header.round, task_id="0" * 32)
    _refused("stale or replayed", sec.GetSetup, stale)
    other_round = spb.RoundRef(client_id=4, round=7, task_id=header.task_id)
    no_round = "no secure aggregation open for client 4 in round 7"
    _refused(no_round, sec.GetSetup, other_round, grpc.StatusCode.FAILED_PRECONDITION)
    setup = wire.setup_from_pb(4, header.round, sec.GetSetup(ref, timeout=30))
    assert setup.neighbours == (0, 1, 2, 3) and setup.vector_length == layout.size
    machine = SecAggClient(4)
    adv = machine.advertise_keys(setup)

    # stage 1: a 31-byte key, then the real keys, then the real keys replayed
    short = spb.AdvertiseKeysRequest(ref=ref, enc_public=adv.enc_public[:31], mask_public=b"k" * 32)
    _refused("enc_public is 31 bytes, expected 32", sec.AdvertiseKeys, short)
    good = spb.AdvertiseKeysRequest(ref=ref, enc_public=adv.enc_public, mask_public=adv.mask_public)
    keys = sec.AdvertiseKeys(good, timeout=60)
    _refused("client 4 already sent its public keys (replayed)", sec.AdvertiseKeys, good)
    shares = machine.share_keys(wire.public_keys_from_pb(4, keys))

    # stage 2: a share bundle addressed to client 99, who is not in the round
    bad = dict(shares.ciphertexts)
    bad[99] = bad.pop(2)
    _refused(
        "client 4 sent shares for [0, 1, 3, 99], expected one for each neighbour",
        sec.ShareKeys,
        spb.ShareKeysRequest(ref=ref, ciphertexts=wire.ciphertexts_to_pb(bad)),
    )
    request = spb.ShareKeysRequest(ref=ref, ciphertexts=wire.ciphertexts_to_pb(shares.ciphertexts))
    forwarded = sec.ShareKeys(request, timeout=60)

    # client 3 has its shares too; it stalls in its upload and is killed there
    wait_for(marker.exists, 300, "client 3 to start uploading", (victim, procs.procs[0]))
    victim.send_signal(signal.SIGKILL)

    # stage 3: a masked input one coordinate short
    delta = np.full(layout.size, 1e-3, np.float32)
    masked = machine.masked_input(wire.forwarded_from_pb(4, forwarded, 4), delta).masked
    _refused(
        f"declared a masked input of {layout.size - 1} coordinates",
        sec.SubmitMasked,
        wire.masked_chunks(ref, masked[:-1], 1 << 16),
    )
    survivors = sec.SubmitMasked(wire.masked_chunks(ref, masked, 1 << 16), timeout=60)
    assert list(survivors.survivors) == [0, 1, 2, 4]
    response = machine.unmask(wire.unmask_request_from_pb(4, survivors))
    assert set(response.key_shares) == {3}

    # stage 4: would make the server hold a mask-key share of a client whose input is in the sum
    unmask = spb.UnmaskRequest(
        ref=ref,
        self_mask_shares=wire.shares_to_pb(response.self_mask_shares),
        key_shares=wire.shares_to_pb({**response.key_shares, 0: 12345}),
    )
    _refused("mask-key share of client 0, which did not drop", sec.Unmask, unmask)
    unmask.ClearField("key_shares")
    unmask.key_shares.extend(wire.shares_to_pb(response.key_shares))
    assert not sec.Unmask(unmask, timeout=30).status.aborted
    channel.close()

    assert procs.wait(procs.procs[0], 300) == 0, procs.log("server")
    for p in clients:
        assert procs.wait(p, 300) == 0, procs.log(p.name)
    log = procs.log("server")
    assert log.count("update from client 4 rejected") == 7, log
    assert "client 3's masked input broke off" in log
    assert "no masked input from clients [3]" in log
    assert "clients [3] dropped out of the secure sum" in log
    record = _metrics(run_dir)[0]
    assert record["secagg_included"] == 4.0 and record["secagg_aborted"] == 0.0
    got = final_vector(run_dir, config)
    expected = _expected_model(config, {0: None, 1: None, 2: None, 4: delta})
    assert np.array_equal(got, expected), f"max diff {np.abs(got - expected).max()}"
