"""What secure aggregation costs: SecAgg+ for 10, 100 and 1,000 clients and plain SecAgg (the
complete graph) for 10 and 100, each with no dropouts and with 10% of the clients dropping
after sharing keys (stage 3, the case that makes the server rebuild mask keys), on updates of
10,000 coordinates.

Per configuration, one aggregation in one process (``fedfleet.privacy.secagg.run_secagg``):

    client s     CPU seconds in one client's state machine, all four stages (mean, max)
    server s     CPU seconds in the server's state machine (routing, summing, unmasking)
    sent KiB     bytes one client sends, summed over its messages (mean)
    recv KiB     bytes the server sends one client (mean)
    x plain      sent bytes over a plain float32 upload of the same vector

Client figures are means over the clients that took part to the end. Times are thread CPU
time, not wall time, because the machine is shared and busy; the whole run's wall time is in
the JSON lines. Bytes use the messages' compact wire sizes (``nbytes()``); masked coordinates
take ceil(b/8) bytes with b the modulus bits. The load average is printed and stored. JSON
lines go to ``bench/out/secagg_cost.jsonl``.

    python bench/secagg_cost.py [--length 10000] [--quant-range 1048576]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from fedfleet.privacy.secagg import SecAggConfig, draw_dropouts, run_secagg

OUT = Path(__file__).resolve().parent / "out" / "secagg_cost.jsonl"
CONFIGS = [("secagg+", 10), ("secagg+", 100), ("secagg+", 1000), ("secagg", 10), ("secagg", 100)]
DROPS = [0.0, 0.1]


def one(protocol: str, n: int, drop: float, length: int, quant_range: int) -> dict:
    rng = np.random.default_rng([n, int(drop * 100)])
    updates = [rng.normal(0, 0.1, length).astype(np.float32) for _ in range(n)]
    config = SecAggConfig(
        vector_length=length,
        clip_range=1.0,
        quant_range=quant_range,
        neighbours="complete" if protocol == "secagg" else None,
    )
    dropouts = draw_dropouts(list(range(n)), {3: drop}, rng)
    t0 = time.perf_counter()
    run = run_secagg(updates, config, rng=rng, dropouts=dropouts)
    wall = time.perf_counter() - t0
    included = run.result.included
    exact = np.sum([np.clip(updates[i].astype(np.float64), -1, 1) for i in included], axis=0)
    err = float(np.abs(run.result.total - exact).max())
    # per-client costs over the clients that took part to the end (dropouts send less)
    ctimes = np.array([run.client_time_s[c] for c in included])
    sent = np.array([run.sent_bytes[c] for c in included], dtype=np.float64)
    recv = np.array([run.received_bytes[c] for c in included], dtype=np.float64)
    server = run.server
    return {
        "protocol": protocol,
        "clients": n,
        "degree": config.degree(n),
        "threshold": server.threshold,
        "modulus_bits": server.bits,
        "drop_stage3": drop,
        "included": len(included),
        "length": length,
        "client_s_mean": float(ctimes.mean()),
        "client_s_max": float(ctimes.max()),
        "server_s": run.server_time_s,
        "sent_bytes_mean": float(sent.mean()),
        "recv_bytes_mean": float(recv.mean()),
        "plain_bytes": 4 * length,
        "max_abs_error": err,
        "error_bound": len(included) / (2 * quant_range),
        "wall_s": wall,
        "loadavg": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=10_000)
    parser.add_argument("--quant-range", type=int, default=2**20)
    args = parser.parse_args()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    with OUT.open("w") as f:
        for protocol, n in CONFIGS:
            for drop in DROPS:
                row = one(protocol, n, drop, args.length, args.quant_range)
                rows.append(row)
                f.write(json.dumps(row) + "\n")
                f.flush()
    print(
        f"\nSecure aggregation cost, vector length {args.length}, R = {args.quant_range} "
        f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)\n"
    )
    print(
        "| protocol | n | k | t | bits | drop@3 | client s (mean / max) | server s | "
        "sent KiB/client | recv KiB/client | x plain | max err / bound |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['protocol']} | {r['clients']} | {r['degree']} | {r['threshold']} | "
            f"{r['modulus_bits']} | {r['drop_stage3']:.0%} | "
            f"{r['client_s_mean']:.4f} / {r['client_s_max']:.4f} | {r['server_s']:.3f} | "
            f"{r['sent_bytes_mean'] / 1024:.1f} | {r['recv_bytes_mean'] / 1024:.1f} | "
            f"{r['sent_bytes_mean'] / r['plain_bytes']:.2f} | "
            f"{r['max_abs_error']:.1e} / {r['error_bound']:.1e} |"
        )


if __name__ == "__main__":
    main()
