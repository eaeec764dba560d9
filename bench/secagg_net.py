"""A networked SecAgg+ round against a plain networked FedAvg round, same clients, same model.

    python bench/secagg_net.py [--clients 10] [--params 100000] [--rounds 4] [--tls]

Training is replaced by a trainer that returns the global vector unchanged (``NullTrainer`` of
``net_bandwidth.py``), so a round's time is the transport plus, for SecAgg, the protocol: four
more round trips, key agreement, Shamir sharing, the ChaCha20 masks and the server's unmasking.
Clients are threads of this process (they share the GIL with the server). Both runs happen in
this process one after the other; the ratio is of their median round times (round 1 excluded:
it also waits for the clients to connect).
"""

from __future__ import annotations

import argparse
import tempfile
import threading

import numpy as np

from fedfleet.client import FitInstructions
from fedfleet.data import ArrayDataset
from fedfleet.net import (
    ClientSettings,
    FederatedClient,
    FederatedServer,
    ServerSettings,
    create_test_federation,
)
from fedfleet.privacy.secagg._strategy import SecAggFedAvg
from fedfleet.runs._config import validate_config
from fedfleet.strategies import FedAvg, Strategy
from net_bandwidth import NullTrainer


def one_run(strategy: Strategy, args: argparse.Namespace, certs: str | None) -> dict:
    n = args.clients
    cfg = validate_config(
        {"rounds": args.rounds, "data": {"num_clients": n}, "eval": {"every": 0},
         "strategy": {"clients_per_round": n}}
    )  # fmt: skip
    trainer = NullTrainer(args.params)
    settings = ServerSettings(
        insecure=certs is None, certs_dir=certs, min_clients=n, min_accept=n, poll_wait_s=0.5,
    )  # fmt: skip
    server = FederatedServer.from_config(cfg, settings, trainer=trainer, strategy=strategy)
    port = server.start()
    data = ArrayDataset(np.zeros((10, 1), np.float32), np.zeros(10, np.int64))
    clients = [
        FederatedClient.from_config(
            cfg,
            ClientSettings(server=f"127.0.0.1:{port}", insecure=certs is None, certs_dir=certs),
            cid,
            data=data,
            trainer=trainer,
            strategy=strategy,
        )
        for cid in range(n)
    ]
    for c in clients:
        threading.Thread(target=c.run, daemon=True).start()
    result = server.run()
    server.stop(linger_s=5)
    history = result["history"]
    return {
        "round_s": float(np.median([r["round_time_s"] for r in history[1:]])),
        "bytes": history[-1].get("secagg_bytes_per_client"),
        "included": history[-1].get("secagg_included", n),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--params", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--tls", action="store_true")
    args = ap.parse_args()
    n = args.clients
    certs = str(create_test_federation(tempfile.mkdtemp(), n)) if args.tls else None
    local = FitInstructions(epochs=1, batch_size=10, lr=0.1)
    plain = one_run(FedAvg(local=local, clients_per_round=n), args, certs)
    secure = one_run(SecAggFedAvg(clip_norm=1.0, clients_per_round=n, local=local), args, certs)
    print(
        f"clients {n}, params {args.params:,}, {'TLS' if args.tls else 'plaintext'}, "
        f"median of rounds 2..{args.rounds}"
    )
    print("| round | s / round | ratio | SecAgg KiB sent per client | clients in the sum |")
    print("|---|---:|---:|---:|---:|")
    print(f"| plain FedAvg | {plain['round_s']:.3f} | 1.00 | - | {n} |")
    print(
        f"| SecAgg+ | {secure['round_s']:.3f} | {secure['round_s'] / plain['round_s']:.2f} "
        f"| {secure['bytes'] / 1024:.1f} | {secure['included']:.0f} |"
    )


if __name__ == "__main__":
    main()
