"""An authenticated but hostile client against a live TLS server on 127.0.0.1.

The server and two honest clients run in this process (threads), each client with its own
certificate; the hostile client holds client 2's certificate and attacks over its own channel.
Every test waits on the run finishing (a thread exit) with a generous limit; none measures time.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from conftest import wait_for, write_config
from fedfleet._proto import fedfleet_pb2 as pb
from fedfleet._proto import fedfleet_pb2_grpc as pb_grpc
from fedfleet.errors import UpdateRejected
from fedfleet.net import ClientSettings, FederatedClient
from fedfleet.net._checkpoint import CHECKPOINT_NAME
from fedfleet.net._cli import read_config
from fedfleet.net._server import FederatedServer, ServerSettings, grpc_options
from fedfleet.net._wire import PROTOCOL_VERSION
from fedfleet.params import Layout
from fedfleet.strategies import ClientUpdate
from fedfleet.validation import validate_update

HOSTILE = 2


class Federation:
    """A TLS server running ``rounds`` rounds and honest clients 0 and 1, all in threads."""

    def __init__(
        self, tmp: Path, certs: Path, rounds: int = 3, hidden: int = 32, **settings: Any
    ) -> None:
        cfg, _ = read_config(write_config(tmp / "run.toml", rounds=rounds, hidden=hidden))
        self.certs = certs
        defaults: dict[str, Any] = {
            "certs_dir": str(certs), "min_clients": 2, "min_accept": 1, "round_timeout_s": 120.0,
            "heartbeat_timeout_s": 1.0, "run_dir": str(tmp / "run"),
        }  # fmt: skip
        self.server = FederatedServer.from_config(cfg, ServerSettings(**{**defaults, **settings}))
        self.port = self.server.start()
        self.result: dict[str, Any] = {}
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._serve, daemon=True)]
        for cid in (0, 1):
            client = FederatedClient.from_config(
                cfg,
                ClientSettings(server=f"127.0.0.1:{self.port}", certs_dir=str(certs)),
                cid,
            )
            self.threads.append(threading.Thread(target=self._guard(client.run), daemon=True))

    def _guard(self, fn: Any) -> Any:
        def run() -> None:
            try:
                fn()
            except BaseException as e:
                self.errors.append(e)

        return run

    def _serve(self) -> None:
        try:
            self.result = self.server.run()
        except BaseException as e:
            self.errors.append(e)
        finally:
            self.server.stop()

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self, timeout: float = 300.0) -> None:
        for t in self.threads:
            t.join(timeout)
            assert not t.is_alive(), f"the federation did not finish within {timeout} s"
        assert not self.errors, self.errors

    def hostile_channel(self) -> grpc.Channel:
        c = self.certs
        creds = grpc.ssl_channel_credentials(
            (c / "ca.pem").read_bytes(),
            (c / f"client-{HOSTILE}.key").read_bytes(),
            (c / f"client-{HOSTILE}.pem").read_bytes(),
        )
        return grpc.secure_channel(f"127.0.0.1:{self.port}", creds, options=grpc_options(8 << 20))

    def register_hostile(self, stub: pb_grpc.FedFleetStub) -> None:
        reply = stub.Register(
            pb.RegisterRequest(
                layout_fingerprint=self.server.fingerprint,
                num_samples=10,
                protocol_version=PROTOCOL_VERSION,
            )
        )
        assert reply.ok, reply.message


@pytest.fixture
def federation(tmp_path: Path, certs_dir: Path) -> Iterator[Federation]:
    fed = Federation(tmp_path, certs_dir, upload_idle_timeout_s=2.0)
    yield fed
    fed.server.stop(linger_s=0)


def _silent(release: threading.Event) -> Iterator[pb.UpdateMessage]:
    """An upload stream that sends nothing until ``release`` is set."""
    release.wait()
    return
    yield


def test_stalled_upload_streams_do_not_stop_honest_rounds(tmp_path, certs_dir):
    """40 upload streams that never send a byte (more than the old server's 32 threads): the
    first holds the client's one upload slot, the other 39 are refused at once, and the
    federation finishes every round while the first is still stalled."""
    fed = Federation(tmp_path, certs_dir, upload_idle_timeout_s=600.0)
    channel = fed.hostile_channel()
    stub = pb_grpc.FedFleetStub(channel)
    fed.register_hostile(stub)
    release = threading.Event()

    try:
        first = stub.SubmitUpdate.future(_silent(release))
        wait_for(lambda: HOSTILE in fed.server._uploads_open, 120, "the first stream's slot")
        more = [stub.SubmitUpdate.future(_silent(release)) for _ in range(39)]
        for call in more:
            with pytest.raises(grpc.RpcError) as err:
                call.result(timeout=120)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "already has an upload stream open" in err.value.details()
        fed.start()
        fed.join()
        assert [r["round"] for r in fed.result["history"]] == [1, 2, 3]
        # it stayed open (no thread held) until the server shut down at the end of the run
        with pytest.raises(grpc.RpcError) as err:
            first.result(timeout=120)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        release.set()
        fed.server.stop(linger_s=0)
        channel.close()


def test_an_upload_that_sends_nothing_is_cut_after_the_idle_timeout(federation):
    channel = federation.hostile_channel()
    stub = pb_grpc.FedFleetStub(channel)
    federation.register_hostile(stub)
    release = threading.Event()

    try:
        reply = stub.SubmitUpdate.future(_silent(release)).result(timeout=120)
        assert not reply.accepted
        assert "sent nothing for 2 s (upload_idle_timeout_s)" in reply.reason, reply.reason
        assert HOSTILE not in federation.server._uploads_open  # the slot is free again
    finally:
        release.set()
        channel.close()


def test_flood_of_refused_uploads_keeps_the_log_and_checkpoint_bounded(federation):
    """1,000 refused uploads, each with a 100 KB layout fingerprint and array name: every
    refusal is counted, only the last ``max_rejections_kept`` are kept, reasons are clipped,
    and the checkpoint stays small (it held every refusal before)."""
    channel = federation.hostile_channel()
    stub = pb_grpc.FedFleetStub(channel)
    federation.register_hostile(stub)
    huge = "x" * 100_000
    reply = {"kind": "results", "body": {"results": []},
             "arrays": [{"name": huge, "shape": [5], "dtype": "<f4"}]}  # fmt: skip
    header = pb.UpdateHeader(
        round=1, task_id=huge, layout_fingerprint=huge, reply=json.dumps(reply).encode()
    )
    replies = [stub.SubmitUpdate(iter([pb.UpdateMessage(header=header)])) for _ in range(1000)]
    assert not any(r.accepted for r in replies)
    assert all(len(r.reason) < 1000 for r in replies)
    federation.start()
    federation.join()
    server = federation.server
    assert len(server.rejected) >= 1000
    assert server.rejected.by_client[HOSTILE] >= 1000
    kept = list(server.rejected)
    assert len(kept) == server.settings.max_rejections_kept
    assert all(len(r.reason) <= 500 and r.client_id == HOSTILE for r in kept)
    size = (Path(server.settings.run_dir) / CHECKPOINT_NAME).stat().st_size
    model_bytes = 4 * server.layout.size
    assert size < model_bytes + 200_000, f"checkpoint is {size} bytes"
    channel.close()


def _hostile_alone(tmp_path: Path, certs_dir: Path) -> tuple[Federation, Any, Any]:
    """A federation whose only client is the hostile one, with a model (~1.3 MB in 64 KiB
    chunks) larger than an HTTP/2 flow-control window: a task it does not read pauses the
    server's send."""
    fed = Federation(
        tmp_path,
        certs_dir,
        rounds=1,
        hidden=5000,
        min_clients=1,
        rejoin_grace_s=1.0,
        chunk_size=1 << 16,
    )
    channel = fed.hostile_channel()
    stub = pb_grpc.FedFleetStub(channel)
    fed.register_hostile(stub)
    fed.threads[0].start()  # the server's round loop only
    return fed, channel, stub


async def _open_tasks() -> int:
    """Coroutines alive on the server's event loop (one per open call, and a few of its own)."""
    return len(asyncio.all_tasks())


def test_unread_task_streams_do_not_pile_up(tmp_path, certs_dir):
    """A selected client that opens GetTask after GetTask and reads none: each newer call ends
    the older one, even while the older is paused sending the model, so one client holds one
    call (before, each held a model-sized chunk: 100 calls took the server from 363 to 1,612 MB)."""
    fed, channel, stub = _hostile_alone(tmp_path, certs_dir)
    try:
        calls = [stub.GetTask(pb.TaskRequest())]  # asks for work: the round opens for it
        wait_for(lambda: fed.server._round is not None, 120, "the round to open")
        wait_for(lambda: HOSTILE in fed.server._round.tasks, 120, "its task")
        before = fed.server._loop.run(_open_tasks())
        for _ in range(19):
            calls.append(stub.GetTask(pb.TaskRequest()))
            wait_for(
                lambda: fed.server._clients[HOSTILE].polls >= len(calls), 120, "the newest call"
            )
        # the server holds one call of this client, not 20 (the slack is for the loop's own
        # short-lived tasks, which come and go with the round)
        wait_for(
            lambda: fed.server._loop.run(_open_tasks()) <= before + 5,
            300,
            "superseded calls to end",
        )
        header = next(calls[-1]).header
        assert header.kind == pb.TaskHeader.TRAIN
    finally:
        fed.server.stop(linger_s=0)
        channel.close()


def test_a_client_that_hangs_up_while_downloading_its_task_is_left_out(tmp_path, certs_dir):
    """Hanging up in the middle of the model's download counts as hanging up: the round stops
    waiting after rejoin_grace_s (not round_timeout_s) and the client is not connected."""
    fed, channel, stub = _hostile_alone(tmp_path, certs_dir)
    try:
        call = stub.GetTask(pb.TaskRequest())
        header = next(call).header
        assert header.kind == pb.TaskHeader.TRAIN
        call.cancel()  # the rest of the model is still unsent
        wait_for(lambda: fed.server._clients[HOSTILE].gone, 120, "the hang-up to be noticed")
        with fed.server._cond:
            assert HOSTILE not in fed.server._connected()
    finally:
        fed.server.stop(linger_s=0)
        channel.close()


def test_a_client_that_registers_but_never_asks_for_work_is_never_sampled(tmp_path, certs_dir):
    """Registering alone does not make a client eligible: one that never polls would hold
    every round that samples it until the deadline. Each round trains both honest clients."""
    fed = Federation(tmp_path, certs_dir, rounds=4, heartbeat_timeout_s=60.0)
    channel = fed.hostile_channel()
    fed.register_hostile(pb_grpc.FedFleetStub(channel))
    fed.start()
    fed.join()
    assert [r["num_clients"] for r in fed.result["history"]] == [2, 2, 2, 2]
    channel.close()


def test_a_second_poll_of_the_same_client_ends_the_first(federation):
    """GetTask calls do not pile up per client: a newer one ends the older with WAIT."""
    channel = federation.hostile_channel()
    stub = pb_grpc.FedFleetStub(channel)
    federation.register_hostile(stub)
    first = stub.GetTask(pb.TaskRequest())
    second = stub.GetTask(pb.TaskRequest())
    header = next(first).header
    assert header.kind == pb.TaskHeader.WAIT
    second.cancel()
    channel.close()


def test_oversized_update_is_refused_naming_client_and_norm(tmp_path, certs_dir):
    """strategy.max_update_norm: honest updates larger than the bound are refused, naming the
    client and the norm, and never reach aggregation (the server retries the round)."""
    fed = Federation(tmp_path, certs_dir, rounds=1)
    fed.server.max_update_norm = 1e-9
    seen: list[Any] = []
    fed.server.on_aggregate = lambda rnd, updates: seen.append(updates)
    fed.start()
    try:
        wait_for(lambda: len(fed.server.rejected) >= 2, 300, "two refused updates")
    finally:
        fed.server.stop(linger_s=10)
    refused = list(fed.server.rejected)[:2]  # later ones may race the stop
    assert {r.client_id for r in refused} == {0, 1}
    for r in refused:
        assert "L2 norm" in r.reason and "max_update_norm" in r.reason, r.reason
        norm = float(r.reason.split("L2 norm ")[1].split(",")[0])
        assert norm > 1e-9
    assert not seen


def test_validation_bounds_the_update_norm():
    layout = Layout.from_shapes({"w": (4,)})
    update = ClientUpdate(7, np.full(4, 2.0, np.float32), 10, 1)  # L2 norm 4
    validate_update(update, layout, 3, {7}, max_norm=4.5)
    with pytest.raises(UpdateRejected, match=r"client 7 rejected: delta has L2 norm 4, above"):
        validate_update(update, layout, 3, {7}, max_norm=3.0)


def test_rejection_reasons_are_clipped():
    rej = UpdateRejected(3, 1, "layout " + "x" * 1_000_000)
    assert len(rej.reason) <= 500 and "more chars" in rej.reason
    assert len(str(rej)) < 600


def test_deployed_dp_noise_is_unpredictable_unless_a_test_asks_by_name(tmp_path):
    """A deployed server and client draw DP noise from the OS CSPRNG by default; seeded noise
    (regenerable from the config.toml written beside the model) is refused, and only the
    name that says it is for tests gets it."""
    from fedfleet.errors import FedfleetError

    base = write_config(tmp_path / "run.toml", rounds=1).read_text()
    dp = base.replace("clients_per_round = 2", 'clients_per_round = 2\nname = "dpfedavg"')
    dp += "[privacy]\nnoise_multiplier = 1.0\n"
    settings = ServerSettings(insecure=True)
    for noise, expect in [(None, "secure"), ("secure", "secure"),
                          ("seeded-testing-only", "seeded-testing-only")]:  # fmt: skip
        text = dp if noise is None else dp + f'noise = "{noise}"\n'
        cfg, _ = read_config(_write(tmp_path / "dp.toml", text))
        assert FederatedServer.from_config(cfg, settings).config.privacy.noise == expect
        client = FederatedClient.from_config(
            cfg, ClientSettings(server="127.0.0.1:1", insecure=True), 0
        )
        assert client.config.privacy.noise == expect
    cfg, _ = read_config(_write(tmp_path / "dp.toml", dp + 'noise = "seeded"\n'))
    with pytest.raises(FedfleetError, match="seeded-testing-only"):
        FederatedServer.from_config(cfg, settings)
    with pytest.raises(FedfleetError, match="OS CSPRNG"):
        FederatedClient.from_config(cfg, ClientSettings(server="127.0.0.1:1", insecure=True), 0)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
