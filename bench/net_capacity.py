"""How many clients one server holds: N lightweight TLS clients complete rounds (issue 14).

The server is a subprocess of this script (``FederatedServer`` on 127.0.0.1, mutual TLS,
logistic regression on digits: 650 parameters, so the model's bytes do not matter); it starts
its first round once all N clients are connected (min_clients = N). The clients are
``--workers`` processes, each an asyncio program holding N / workers grpc.aio secure channels,
one per client with that client's own certificate (its own TCP connection: a local subchannel
pool). Each client registers, long-polls GetTask, and on a TRAIN task reads the model (header
and chunks), uploads it plus a tiny deterministic perturbation (num_samples = what it
registered, num_steps = 1: a valid update), drains the task stream until the server ends it,
and polls again; on DONE it exits.

Measured inside the server process (a sampler thread and the round hook): round times, VmRSS
(peak and when round 1 ends), CPU seconds (user + system, every thread). CPU per client = the
server's CPU over rounds 2..R divided by (R - 1) and by the cohort. The baseline, N = 100 with
its full cohort, runs first in the same invocation; ratios are against it.

    python bench/net_capacity.py                          # N=100 baseline, N=1000 (K=100, 1000)
    python bench/net_capacity.py --clients 1000 --clients-per-round 1000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from _procs import Procs  # bench/_procs.py: the scripts run from this folder

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "net_capacity"

CONFIG = """\
seed = 0
rounds = {rounds}
[data]
name = "digits"
num_clients = {n}
partition = "iid"
[model]
name = "logreg"
[strategy]
clients_per_round = {k}
[client]
epochs = 1
batch_size = 32
lr = 0.1
[eval]
every = 0
"""

NUM_SAMPLES = 10


def vm(field: str, pid: int | str = "self") -> float:
    """A /proc/PID/status field in MiB (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


# ----- the server process ---------------------------------------------------------------------


def serve(args: argparse.Namespace) -> None:
    import logging

    from fedfleet.net import FederatedServer, ServerSettings
    from fedfleet.net._cli import read_config

    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    cfg, _ = read_config(Path(args.config))
    settings = ServerSettings(
        certs_dir=args.certs,
        min_clients=args.clients,
        min_accept=1,
        round_timeout_s=args.round_timeout_s,
    )
    server = FederatedServer.from_config(cfg, settings)
    rss: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.25):
            rss.append(vm("VmRSS"))

    rounds: list[dict[str, Any]] = []
    server.on_aggregate = lambda rnd, updates: rounds.append(
        {"round": rnd, "t": time.perf_counter(), "cpu": cpu_s(), "rss": vm("VmRSS"),
         "updates": len(updates)}
    )  # fmt: skip
    threading.Thread(target=sample, daemon=True).start()
    t_start, cpu_start = time.perf_counter(), cpu_s()
    port = server.start()
    Path(args.port_file + ".tmp").write_text(str(port))
    os.replace(args.port_file + ".tmp", args.port_file)
    try:
        result = server.run()
    finally:
        server.stop(linger_s=10)
        stop.set()
    report = {
        "history": result["history"],
        "rounds": rounds,
        "t_start": t_start,
        "cpu_start": cpu_start,
        "cpu_end": cpu_s(),
        "rss_samples_max": max(rss, default=float("nan")),
        "hwm": vm("VmHWM"),
        "threads": threading.active_count(),
    }
    Path(args.report).write_text(json.dumps(report))


# ----- a worker process: many lightweight clients ---------------------------------------------


async def worker(args: argparse.Namespace) -> None:
    import grpc
    import numpy as np

    from fedfleet._proto import fedfleet_pb2 as pb
    from fedfleet._proto import fedfleet_pb2_grpc as pb_grpc
    from fedfleet.client import FitResult
    from fedfleet.net._server import grpc_options
    from fedfleet.net._wire import (
        PROTOCOL_VERSION,
        chunk_messages,
        instructions_from_header,
        receiver,
        reply_to_header,
    )
    from fedfleet.strategies import ClientResult

    certs = Path(args.certs)
    ca = (certs / "ca.pem").read_bytes()
    options = [*grpc_options(8 << 20), ("grpc.use_local_subchannel_pool", 1)]
    stats = {"rounds": 0, "refused": 0, "errors": 0}

    async def one(cid: int) -> None:
        creds = grpc.ssl_channel_credentials(
            ca,
            (certs / f"client-{cid}.key").read_bytes(),
            (certs / f"client-{cid}.pem").read_bytes(),
        )
        async with grpc.aio.secure_channel(args.server, creds, options=options) as ch:
            stub = pb_grpc.FedFleetStub(ch)
            for attempt in range(20):
                try:
                    reply = await stub.Register(
                        pb.RegisterRequest(
                            layout_fingerprint=args.fingerprint,
                            num_samples=NUM_SAMPLES,
                            protocol_version=PROTOCOL_VERSION,
                        ),
                        timeout=60,
                    )
                    break
                except grpc.aio.AioRpcError:
                    if attempt == 19:
                        raise
                    await asyncio.sleep(0.5 + 0.1 * attempt)
            if not reply.ok:
                raise RuntimeError(f"client {cid} refused: {reply.message}")
            rng = np.random.default_rng(cid)
            while True:
                call = stub.GetTask(pb.TaskRequest())
                it = call.__aiter__()
                first = await anext(it, None)
                if first is None:
                    continue
                h = first.header
                if h.kind == pb.TaskHeader.WAIT:
                    continue
                if h.kind == pb.TaskHeader.DONE:
                    return
                rx = receiver(h.job, f"round {h.round} task", kind="jobs", size=args.size)
                while not rx.complete:
                    chunk = (await anext(it)).chunk
                    rx.add(chunk.tensor, chunk.offset, chunk.data)
                vector, _ = instructions_from_header(rx.head, rx.finish().arrays)
                trained = vector + np.float32(1e-3) * rng.standard_normal(args.size, np.float32)
                header = pb.UpdateHeader(
                    round=h.round, task_id=h.task_id, layout_fingerprint=args.fingerprint
                )
                fit = FitResult(trained, NUM_SAMPLES, 1, {})
                arrays = reply_to_header(ClientResult(fit), header)
                msgs = [pb.UpdateMessage(header=header)]
                msgs += [pb.UpdateMessage(chunk=c) for c in chunk_messages(arrays, 4 << 20)]
                reply = await stub.SubmitUpdate(iter(msgs), timeout=120)
                if reply.accepted:
                    stats["rounds"] += 1
                else:
                    stats["refused"] += 1
                    if stats["refused"] <= 3:
                        print(f"client {cid}: refused: {reply.reason}", file=sys.stderr)
                async for _ in it:  # the server ends the task's stream once it has the answer
                    pass

    async def guarded(cid: int) -> None:
        try:
            await one(cid)
        except Exception as err:
            stats["errors"] += 1
            if stats["errors"] <= 5:
                print(f"client {cid}: {type(err).__name__}: {err}", file=sys.stderr)

    ids = range(args.first, args.first + args.count)
    await asyncio.gather(*(guarded(c) for c in ids))
    print(json.dumps({**stats, "cpu_s": cpu_s(), "rss_mib": vm("VmHWM")}), flush=True)


# ----- the driver -----------------------------------------------------------------------------


def certs_for(out: Path, n: int) -> tuple[Path, float]:
    """A CA, server and ``n`` client certificates, cached under ``out`` (git-ignored)."""
    from fedfleet.net import create_test_federation

    d = out / f"certs-{n}"
    if (d / f"client-{n - 1}.pem").exists():
        return d, 0.0
    t0 = time.perf_counter()
    create_test_federation(d, n)
    return d, time.perf_counter() - t0


def run_one(args: argparse.Namespace, n: int, k: int, out: Path) -> dict[str, Any]:
    from fedfleet.net._cli import read_config
    from fedfleet.runs._build import build_trainer, load_task_for

    certs, keygen_s = certs_for(out, n)
    tag = f"n{n}-k{k}"
    config = out / f"{tag}.toml"
    config.write_text(CONFIG.format(n=n, k=k, rounds=args.rounds))
    cfg, _ = read_config(config)
    layout = build_trainer(cfg, load_task_for(cfg)).layout
    port_file, report = out / f"{tag}.port", out / f"{tag}.json"
    port_file.unlink(missing_ok=True)
    report.unlink(missing_ok=True)
    me = str(Path(__file__).resolve())
    procs = Procs(out)
    t0 = time.perf_counter()
    try:
        server = procs.start(
            f"{tag}-server", me, "--role", "server", "--config", str(config),
            "--certs", str(certs), "--clients", str(n), "--port-file", str(port_file),
            "--report", str(report), "--round-timeout-s", str(args.round_timeout_s),
        )  # fmt: skip
        end = time.monotonic() + 60
        while not port_file.exists():
            if server.poll() is not None or time.monotonic() > end:
                raise SystemExit(f"the server did not start; see {out}/{tag}-server.log")
            time.sleep(0.1)
        address = f"127.0.0.1:{port_file.read_text()}"
        per = -(-n // args.workers)
        workers = []
        for w in range(args.workers):
            if w * per >= n:
                break
            argv = [
                "--role", "worker", "--certs", str(certs), "--server", address,
                "--first", str(w * per), "--count", str(min(per, n - w * per)),
                "--fingerprint", layout.fingerprint, "--size", str(layout.size),
            ]  # fmt: skip
            workers.append(procs.start(f"{tag}-worker{w}", me, *argv))
        try:
            server.wait(args.timeout_s)
        except subprocess.TimeoutExpired:
            raise SystemExit(
                f"N={n} K={k}: the run did not finish in {args.timeout_s} s; see {out}/{tag}-*.log"
            ) from None
        for w in workers:
            try:
                w.wait(30)
            except subprocess.TimeoutExpired:
                pass
    finally:
        procs.kill_all()
    wall = time.perf_counter() - t0
    if not report.exists():
        raise SystemExit(f"N={n} K={k}: no report; see {out}/{tag}-server.log")
    r = json.loads(report.read_text())
    wstats = []
    for w in range(len(workers)):
        lines = (out / f"{tag}-worker{w}.log").read_text().strip().splitlines()
        try:
            wstats.append(json.loads(lines[-1]))
        except (IndexError, json.JSONDecodeError):
            wstats.append({"rounds": 0, "refused": 0, "errors": -1, "cpu_s": 0.0})
    times = [h["round_time_s"] for h in r["history"]]
    rounds = r["rounds"]
    cpu_rounds = rounds[-1]["cpu"] - rounds[0]["cpu"] if len(rounds) > 1 else float("nan")
    row = {
        "n": n,
        "k": k,
        "rounds": len(times),
        "updates": [h["num_clients"] for h in r["history"]],
        "round1_s": times[0],
        "median_s": statistics.median(times[1:] if len(times) > 1 else times),
        "rss_round1": rounds[0]["rss"],
        "rss_peak": max(r["hwm"], r["rss_samples_max"]),
        "cpu_total": r["cpu_end"] - r["cpu_start"],
        "cpu_connect": rounds[0]["cpu"] - r["cpu_start"],
        # rounds 2..R: (R - 1) rounds between the hook of round 1 and that of round R
        "cpu_ms_per_client_round": 1e3 * cpu_rounds / max(1, len(rounds) - 1) / k,
        "client_cpu_s": sum(w.get("cpu_s", 0.0) for w in wstats),
        "client_errors": sum(w.get("errors", 0) for w in wstats),
        "client_refused": sum(w.get("refused", 0) for w in wstats),
        "keygen_s": keygen_s,
        "wall_s": wall,
    }
    print(
        f"N={n} K={k}: {row['rounds']} rounds, median {row['median_s']:.3f} s, peak RSS "
        f"{row['rss_peak']:.0f} MiB, wall {wall:.0f} s (certificates: {keygen_s:.1f} s)",
        flush=True,
    )
    return row


def main(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [(args.baseline, args.baseline)]
    runs += [(args.clients, min(k, args.clients)) for k in args.clients_per_round]
    rows = [run_one(args, n, k, out) for n, k in runs]
    base = rows[0]
    print()
    print(
        f"net_capacity: logreg on digits (650 parameters), mutual TLS on 127.0.0.1, "
        f"{args.rounds} rounds, clients in {args.workers} asyncio processes, server in its own"
    )
    print()
    print(
        "| clients N | cohort K | round 1 s (incl. all N connecting) | "
        "median round s (2..R) | vs base | "
        "server RSS MiB after round 1 / peak | vs base | server CPU s total | "
        "server CPU ms per client per round | vs base | client errors |"
    )
    print("|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['n']:,} | {r['k']:,} | {r['round1_s']:.2f} | "
            f"{r['median_s']:.3f} | {r['median_s'] / base['median_s']:.2f}x | "
            f"{r['rss_round1']:.0f} / {r['rss_peak']:.0f} | "
            f"{r['rss_peak'] / base['rss_peak']:.2f}x | {r['cpu_total']:.1f} | "
            f"{r['cpu_ms_per_client_round']:.2f} | "
            f"{r['cpu_ms_per_client_round'] / base['cpu_ms_per_client_round']:.2f}x | "
            f"{r['client_errors']} |"
        )
    print()
    for r in rows:
        print(
            f"N={r['n']} K={r['k']}: updates per round {r['updates']}, server CPU while "
            f"{r['n']} clients connected and round 1 ran {r['cpu_connect']:.1f} s, clients' CPU "
            f"{r['client_cpu_s']:.1f} s, refused {r['client_refused']}, wall {r['wall_s']:.0f} s"
        )
    with (out / "results.jsonl").open("a") as f:
        for r in rows:
            f.write(json.dumps({**r, "args": vars(args)}) + "\n")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--role", choices=["main", "server", "worker"], default="main")
    p.add_argument("--clients", type=int, default=1000, help="N, concurrent clients")
    p.add_argument("--baseline", type=int, default=100, help="N of the baseline run (K = N)")
    p.add_argument(
        "--clients-per-round",
        type=int,
        nargs="+",
        default=[100, 1000],
        help="cohorts K to run with N clients (one server run each)",
    )
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--workers", type=int, default=4, help="client processes")
    p.add_argument("--round-timeout-s", type=float, default=120.0)
    p.add_argument("--timeout-s", type=float, default=400.0, help="cap on one server run")
    p.add_argument("--out", default=str(OUT))
    # internal
    p.add_argument("--config")
    p.add_argument("--certs")
    p.add_argument("--port-file")
    p.add_argument("--report")
    p.add_argument("--server")
    p.add_argument("--first", type=int)
    p.add_argument("--count", type=int)
    p.add_argument("--fingerprint")
    p.add_argument("--size", type=int)
    return p.parse_args()


if __name__ == "__main__":
    a = parse()
    if a.role == "server":
        serve(a)
    elif a.role == "worker":
        asyncio.run(worker(a))
    else:
        main(a)
