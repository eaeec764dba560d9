"""Network-layer cost of one round: 20 clients, a 10M-parameter model, loopback gRPC.

    python bench/net_bandwidth.py [--clients 20] [--params 10000000] [--rounds 3] [--tls]
        [--client-procs N] [--chunk-size BYTES]

Training is replaced by a trainer that returns the global vector unchanged, so a round's time is
the network layer alone: long-poll, chunked broadcast to every client, chunked upload, decoding
and validate_update, aggregation. The server runs in this process; the clients run in
``--client-procs`` separate processes (default: one per client), so they do not share the
server's GIL. The reference is the time to push the same bytes (download + upload for every
client) through one loopback TCP socket, measured in the same run. Bytes on the wire are the
serialized protobuf messages plus gRPC's 5-byte message prefix (HTTP/2 and TLS framing not
counted) against the raw float32 bytes. Clients and server share this machine's cores.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from fedfleet._proto import fedfleet_pb2 as pb
from fedfleet.client import EvalResult, FitInstructions, FitResult
from fedfleet.data import ArrayDataset
from fedfleet.net import (
    ClientSettings,
    FederatedClient,
    FederatedServer,
    ServerSettings,
    create_test_federation,
)
from fedfleet.net._wire import chunk_messages
from fedfleet.params import Layout
from fedfleet.runs._config import validate_config
from fedfleet.strategies import FedAvg


class NullTrainer:
    """Returns the global vector unchanged: isolates the network layer."""

    def __init__(self, size: int) -> None:
        self._layout = Layout.from_shapes({"w": (size,)})

    @property
    def layout(self) -> Layout:
        return self._layout

    def init_vector(self, seed: int) -> np.ndarray:
        return np.random.default_rng(seed).standard_normal(self._layout.size, dtype=np.float32)

    def fit(self, vector, data, instructions, seed) -> FitResult:
        return FitResult(vector.copy(), len(data), 1, {})

    def evaluate(self, vector, data) -> EvalResult:
        return EvalResult(0.0, 0.0, len(data))


def socket_copy_seconds(nbytes: int, times: int) -> float:
    """Seconds to send ``nbytes`` ``times`` times through a loopback TCP socket."""
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    payload = np.random.default_rng(0).bytes(nbytes)

    def sink() -> None:
        conn, _ = srv.accept()
        buf = bytearray(1 << 20)
        left = nbytes * times
        while left:
            left -= conn.recv_into(buf)
        conn.sendall(b"k")
        conn.close()

    t = threading.Thread(target=sink)
    t.start()
    c = socket.create_connection(("127.0.0.1", port))
    t0 = time.perf_counter()
    for _ in range(times):
        c.sendall(payload)
    c.recv(1)
    dt = time.perf_counter() - t0
    c.close()
    t.join()
    srv.close()
    return dt


def _settings(args: argparse.Namespace, certs: str | None) -> dict:
    return {
        "insecure": certs is None,
        "certs_dir": certs,
        "chunk_size": args.chunk_size,
        "max_message_bytes": max(4 << 20, args.chunk_size + (1 << 20)),
    }


def _config(args: argparse.Namespace):
    return validate_config(
        {"rounds": args.rounds, "data": {"num_clients": args.clients}, "eval": {"every": 0},
         "strategy": {"clients_per_round": args.clients}}
    )  # fmt: skip


def worker(args: argparse.Namespace) -> None:
    """Client processes' side: run clients ``--ids`` (threads) until the server says DONE."""
    n, certs = args.clients, args.certs or None
    trainer = NullTrainer(args.params)
    strategy = FedAvg(local=FitInstructions(epochs=1, batch_size=10, lr=0.1), clients_per_round=n)
    data = ArrayDataset(np.zeros((10, 1), np.float32), np.zeros(10, np.int64))
    cfg = _config(args)
    clients = [
        FederatedClient.from_config(
            cfg,
            ClientSettings(server=args.server, **_settings(args, certs)),
            int(cid),
            data=data,
            trainer=trainer,
            strategy=strategy,
        )
        for cid in args.ids.split(",")
    ]
    threads = [threading.Thread(target=c.run) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--params", type=int, default=10_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--chunk-size", type=int, default=None)
    ap.add_argument("--client-procs", type=int, default=None)
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--server", help=argparse.SUPPRESS)
    ap.add_argument("--ids", help=argparse.SUPPRESS)
    ap.add_argument("--certs", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.chunk_size is None:
        args.chunk_size = ServerSettings(insecure=True).chunk_size
    if args.worker:
        worker(args)
        return
    n, size = args.clients, args.params
    cfg = _config(args)
    local = FitInstructions(epochs=1, batch_size=10, lr=0.1)
    certs = str(create_test_federation(tempfile.mkdtemp(), n)) if args.tls else None
    trainer = NullTrainer(size)
    settings = ServerSettings(
        min_clients=n, min_accept=n, poll_wait_s=0.5, **_settings(args, certs)
    )
    server = FederatedServer.from_config(
        cfg, settings, trainer=trainer, strategy=FedAvg(local=local, clients_per_round=n)
    )
    port = server.start()
    procs = args.client_procs or n
    groups = [",".join(str(c) for c in range(n)[i::procs]) for i in range(procs)]
    common = [sys.executable, __file__, "--worker", "--server", f"127.0.0.1:{port}",
              "--clients", str(n), "--params", str(size), "--rounds", str(args.rounds),
              "--chunk-size", str(args.chunk_size), "--certs", certs or ""]  # fmt: skip
    workers = [subprocess.Popen([*common, "--ids", g]) for g in groups if g]
    try:
        result = server.run()
        server.stop(linger_s=10)
    finally:
        for w in workers:
            try:
                w.wait(30)
            except subprocess.TimeoutExpired:
                w.kill()
    # round 1 also waits for the clients to start and connect
    times = [r["round_time_s"] for r in result["history"]][1:] or [
        result["history"][0]["round_time_s"]
    ]
    raw = size * 4
    msgs = [
        pb.TaskMessage(chunk=c) for c in chunk_messages([trainer.init_vector(0)], args.chunk_size)
    ]
    wire = sum(m.ByteSize() + 5 for m in msgs)
    copy_s = socket_copy_seconds(raw, 2 * n)
    print(f"clients {n} in {len(workers)} processes, params {size:,} ({raw / 2**20:.1f} MiB), "
          f"chunk {args.chunk_size}, {'TLS' if args.tls else 'plaintext'}")  # fmt: skip
    print("| measure | value |")
    print("|---|---|")
    print(f"| network-layer time per round (median of {len(times)}) | {np.median(times):.2f} s |")
    print(
        f"| same bytes ({2 * n} x {raw / 2**20:.0f} MiB) through one loopback socket "
        f"| {copy_s:.2f} s |"
    )
    print(f"| ratio | {np.median(times) / copy_s:.1f}x |")
    print(f"| bytes on the wire per model transfer / raw float32 bytes | {wire / raw:.5f} |")


if __name__ == "__main__":
    main()
