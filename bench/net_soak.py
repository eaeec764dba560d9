"""Soak the gRPC server under an authenticated but hostile client, next to a calm run (issue 14).

One TLS server on 127.0.0.1 (a subprocess of this script, so its RSS is its own: VmRSS from
/proc/PID/status) serves a long run to ``--clients`` honest ``fedfleet client`` processes (MLP
64-16-10 on digits). The run goes through two phases of the same server:

* calm: the honest clients alone, for ``--calm-s`` seconds;
* hostile: a client process with its own valid certificate (client id ``--clients``) attacks
  until it has ``--refused`` refused uploads, concurrently:
  (a) waves of ``--stalled`` SubmitUpdate streams that never send a byte, re-opened
      ``--stall-gap`` s after the server cuts them (``upload_idle_timeout_s`` = ``--idle-s``);
  (b) ``--oversized`` uploads whose layout_fingerprint, tensor name and task id are MBs long,
      and Register calls with a multi-MB fingerprint;
  (c) a flood of small uploads for tasks it was never given.
  Its Register is refused (wrong layout), so it is never selected for a round: what is measured
  is what it costs the server to refuse it, not a participant that never answers.

Printed: honest rounds a second in each phase and the ratio, server RSS at the start, middle
and end of each phase, the checkpoint's size at the end of each, refusals as counted by the
hostile client and by the server (its checkpointed rejection log). Benchmarks only print.

    python bench/net_soak.py                       # defaults: a few minutes on 2 cores
    python bench/net_soak.py --refused 20000 --clients 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _procs import Procs  # bench/_procs.py: the scripts run from this folder

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "net_soak"

CONFIG = """\
seed = 0
rounds = 1000000
[data]
name = "digits"
num_clients = {num_clients}
partition = "iid"
[model]
name = "mlp"
hidden = [16]
[strategy]
clients_per_round = {honest}
[client]
epochs = 1
batch_size = 32
lr = 0.1
[eval]
every = 0
"""


def _reply_header(name: str) -> bytes:
    """An upload's codec header declaring one vector of 1,306 floats named ``name`` (the codec's
    "results" message; the upload is refused before its body is read)."""
    body = {"results": [{"vector": 0, "num_samples": 10, "num_steps": 1, "metrics": {},
                         "extras": {}, "state": None}]}  # fmt: skip
    spec = {"name": name, "dtype": "<f4", "shape": [1306]}
    return json.dumps({"kind": "results", "body": body, "arrays": [spec]}).encode()


# ----- the server process ---------------------------------------------------------------------


def serve(args: argparse.Namespace) -> None:
    import logging

    from fedfleet.net import FederatedServer, ServerSettings
    from fedfleet.net._cli import read_config

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    cfg, _ = read_config(Path(args.config))
    settings = ServerSettings(
        certs_dir=args.certs,
        run_dir=args.run_dir,
        min_clients=args.clients,
        min_accept=1,
        round_timeout_s=60.0,
        upload_idle_timeout_s=args.idle_s,
    )
    server = FederatedServer.from_config(cfg, settings)
    port = server.start()
    Path(args.port_file + ".tmp").write_text(str(port))
    os.replace(args.port_file + ".tmp", args.port_file)
    try:
        server.run()
    finally:
        server.stop(linger_s=0)


# ----- the hostile client process -------------------------------------------------------------


async def hostile(args: argparse.Namespace) -> None:
    import grpc

    from fedfleet._proto import fedfleet_pb2 as pb
    from fedfleet._proto import fedfleet_pb2_grpc as pb_grpc
    from fedfleet.net._server import grpc_options
    from fedfleet.net._wire import PROTOCOL_VERSION

    certs = Path(args.certs)
    cid = args.clients
    creds = grpc.ssl_channel_credentials(
        (certs / "ca.pem").read_bytes(),
        (certs / f"client-{cid}.key").read_bytes(),
        (certs / f"client-{cid}.pem").read_bytes(),
    )

    def channel() -> grpc.aio.Channel:
        return grpc.aio.secure_channel(
            f"127.0.0.1:{args.port}", creds, options=grpc_options(16 << 20)
        )

    counts = {
        "content_refused": 0,  # UpdateReply(accepted=False): went through the rejection log
        "slot_refused": 0,  # RESOURCE_EXHAUSTED: a second upload stream of this client
        "stalled_cut": 0,  # a stalled stream the server closed after upload_idle_timeout_s
        "oversized_sent": 0,
        "register_refused": 0,
        "other_errors": 0,
        "accepted": 0,
    }
    stop = asyncio.Event()
    mb = "x" * (args.oversize_mb << 20)

    async def upload(stub: Any, header: Any) -> None:
        try:
            reply = await stub.SubmitUpdate(iter([pb.UpdateMessage(header=header)]), timeout=60)
        except grpc.aio.AioRpcError as err:
            key = "slot_refused" if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else None
            counts[key or "other_errors"] += 1
            if key is None and counts["other_errors"] <= 5:
                print(f"hostile: {err.code().name}: {err.details()[:200]}", file=sys.stderr)
            return
        counts["accepted" if reply.accepted else "content_refused"] += 1

    def refused() -> int:
        return counts["content_refused"]

    async def flood(stub: Any) -> None:
        header = pb.UpdateHeader(
            round=1,
            task_id="0" * 32,
            layout_fingerprint="not-the-layout",
            reply=_reply_header("vector"),
        )
        while refused() < args.refused and not stop.is_set():
            before = counts["slot_refused"]
            await upload(stub, header)
            if counts["slot_refused"] > before:
                await asyncio.sleep(0.005)  # the slot is held by a stalled stream

    async def oversized(stub: Any) -> None:
        header = pb.UpdateHeader(
            round=1,
            task_id=mb[: 1 << 20],
            layout_fingerprint=mb,
            reply=_reply_header(mb),
        )
        for i in range(args.oversized):
            if stop.is_set():
                return
            if i % 10 == 0:
                reply = await stub.Register(
                    pb.RegisterRequest(
                        layout_fingerprint=mb, num_samples=10, protocol_version=PROTOCOL_VERSION
                    ),
                    timeout=60,
                )
                counts["register_refused"] += not reply.ok
            await upload(stub, header)
            counts["oversized_sent"] += 1
            await asyncio.sleep(0.2)

    async def stalled_wave(stub: Any) -> None:
        never = asyncio.Event()

        async def silent() -> Any:
            await never.wait()
            yield pb.UpdateMessage()

        async def one() -> None:
            try:
                reply = await stub.SubmitUpdate(silent(), timeout=120)
            except grpc.aio.AioRpcError as err:
                key = "slot_refused" if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else None
                counts[key or "other_errors"] += 1
                return
            if "sent nothing" in reply.reason:
                counts["stalled_cut"] += 1
            counts["accepted" if reply.accepted else "content_refused"] += 1

        while refused() < args.refused and not stop.is_set():
            await asyncio.gather(*(one() for _ in range(args.stalled)))
            await asyncio.sleep(args.stall_gap)

    chans = [channel() for _ in range(3)]
    stubs = [pb_grpc.FedFleetStub(c) for c in chans]
    t0 = time.monotonic()

    async def progress() -> None:
        while not stop.is_set():
            Path(args.progress).write_text(json.dumps({**counts, "t": time.monotonic() - t0}))
            await asyncio.sleep(1.0)

    async def deadline() -> None:
        await asyncio.sleep(args.hostile_max_s)
        stop.set()

    tasks = [asyncio.create_task(progress()), asyncio.create_task(deadline())]
    try:
        await asyncio.gather(flood(stubs[0]), oversized(stubs[1]), stalled_wave(stubs[2]))
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        counts["t"] = time.monotonic() - t0  # type: ignore[assignment]
        Path(args.progress).write_text(json.dumps(counts))
        for c in chans:
            await c.close()


# ----- the driver -----------------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


ROUND_RE = re.compile(rb"round (\d+): \d+ updates")


def rounds_done(log: Path) -> int:
    found = ROUND_RE.findall(log.read_bytes())
    return int(found[-1]) if found else 0


def ckpt_info(run_dir: Path) -> tuple[int, int, int]:
    """(checkpoint bytes, refusals in the server's checkpointed rejection log, that log's
    bytes as JSON)."""
    from fedfleet.net._checkpoint import CHECKPOINT_NAME, load_checkpoint

    size = (run_dir / CHECKPOINT_NAME).stat().st_size
    for _ in range(5):  # the server may be replacing it right now
        try:
            rej = load_checkpoint(run_dir).server.get("rejected", {})
            total = int(rej.get("total", 0)) if isinstance(rej, dict) else len(rej)
            return size, total, len(json.dumps(rej))
        except Exception:
            time.sleep(0.05)
    return size, -1, -1


def phase(
    name: str, server: subprocess.Popen, log: Path, run_dir: Path, until: Any, max_s: float
) -> dict[str, Any]:
    """Sample the server while ``until()`` is false (at most ``max_s``)."""
    t0, r0 = time.monotonic(), rounds_done(log)
    samples = [(0.0, rss_mib(server.pid))]
    while time.monotonic() - t0 < max_s and not until(time.monotonic() - t0):
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode} during {name}")
        time.sleep(0.5)
        samples.append((time.monotonic() - t0, rss_mib(server.pid)))
    dt, r1 = time.monotonic() - t0, rounds_done(log)
    size, rejected, log_bytes = ckpt_info(run_dir)
    mid = min(samples, key=lambda s: abs(s[0] - dt / 2))[1]
    return {
        "phase": name,
        "seconds": dt,
        "rounds": r1 - r0,
        "rounds_per_s": (r1 - r0) / dt,
        "rss_start": samples[0][1],
        "rss_mid": mid,
        "rss_end": samples[-1][1],
        "rss_max": max(s[1] for s in samples),
        "ckpt_bytes": size,
        "server_refusals": rejected,
        "log_bytes": log_bytes,
        "last_round": r1,
    }


def main(args: argparse.Namespace) -> None:
    from fedfleet.net import create_test_federation
    from fedfleet.net._cli import read_config
    from fedfleet.runs._build import build_trainer, load_task_for

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    certs = create_test_federation(out / "certs", args.clients + 1)
    config = out / "run.toml"
    config.write_text(CONFIG.format(num_clients=args.clients + 1, honest=args.clients))
    cfg, _ = read_config(config)
    layout = build_trainer(cfg, load_task_for(cfg)).layout
    run_dir = out / "run"
    if run_dir.exists():
        for f in run_dir.iterdir():
            f.unlink()
    port_file = out / "port"
    port_file.unlink(missing_ok=True)
    progress = out / "hostile.json"
    progress.unlink(missing_ok=True)
    me = str(Path(__file__).resolve())
    procs = Procs(out)
    try:
        server = procs.start(
            "server", me, "--role", "server", "--config", str(config), "--certs", str(certs),
            "--run-dir", str(run_dir), "--port-file", str(port_file),
            "--clients", str(args.clients), "--idle-s", str(args.idle_s),
        )  # fmt: skip
        end = time.monotonic() + 60
        while not port_file.exists():
            if server.poll() is not None or time.monotonic() > end:
                raise SystemExit(f"the server did not start; see {out / 'server.log'}")
            time.sleep(0.1)
        port = port_file.read_text()
        for cid in range(args.clients):
            procs.start(
                f"client-{cid}", "-m", "fedfleet.net", "client", "--server", f"127.0.0.1:{port}",
                "--config", str(config), "--client-id", str(cid), "--certs-dir", str(certs),
                "--quiet",
            )  # fmt: skip
        log = out / "server.log"
        end = time.monotonic() + 120
        while rounds_done(log) < 3:  # warm-up: every client connected, imports done
            if server.poll() is not None or time.monotonic() > end:
                raise SystemExit(f"no rounds after 120 s; see {out / 'server.log'}")
            time.sleep(0.2)
        calm = phase("calm", server, log, run_dir, lambda t: False, args.calm_s)
        print(f"calm: {calm['rounds']} rounds in {calm['seconds']:.1f} s", flush=True)
        bad = procs.start(
            "hostile", me, "--role", "hostile", "--certs", str(certs), "--port", port,
            "--clients", str(args.clients), "--refused", str(args.refused),
            "--stalled", str(args.stalled), "--stall-gap", str(args.stall_gap),
            "--oversized", str(args.oversized), "--oversize-mb", str(args.oversize_mb),
            "--progress", str(progress), "--hostile-max-s", str(args.hostile_max_s),
        )  # fmt: skip
        end = time.monotonic() + 60
        while not progress.exists():  # the phase starts when the attack does (after imports)
            if bad.poll() is not None or time.monotonic() > end:
                raise SystemExit(f"the hostile client did not start; see {out / 'hostile.log'}")
            time.sleep(0.05)
        hot = phase(
            "hostile", server, log, run_dir, lambda t: bad.poll() is not None, args.hostile_max_s
        )
        counts = json.loads(progress.read_text()) if progress.exists() else {}
        print(f"hostile: {hot['rounds']} rounds in {hot['seconds']:.1f} s; {counts}", flush=True)
    finally:
        procs.kill_all()

    rows = [calm, hot]
    print()
    print(
        f"net_soak: {args.clients} honest clients (MLP 64-16-10, digits, {layout.size} params), "
        f"TLS on 127.0.0.1, upload_idle_timeout_s={args.idle_s:g}, server in its own process"
    )
    print()
    print(
        "| phase | seconds | honest rounds | rounds/s | vs calm | server RSS MiB "
        "start / mid / end (max) | checkpoint bytes at end | of which rejection log | "
        "refusals counted by the server |"
    )
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['phase']} | {r['seconds']:.1f} | {r['rounds']} | {r['rounds_per_s']:.2f} | "
            f"{r['rounds_per_s'] / calm['rounds_per_s']:.2f}x | {r['rss_start']:.1f} / "
            f"{r['rss_mid']:.1f} / {r['rss_end']:.1f} ({r['rss_max']:.1f}) | "
            f"{r['ckpt_bytes']:,} (round {r['last_round']}) | {r['log_bytes']:,} | "
            f"{r['server_refusals']:,} |"
        )
    print()
    print(
        "hostile client: "
        f"{counts.get('content_refused', 0):,} uploads refused with a reason, "
        f"{counts.get('slot_refused', 0):,} refused RESOURCE_EXHAUSTED (second upload stream), "
        f"{counts.get('stalled_cut', 0):,} stalled streams cut after {args.idle_s:g} s, "
        f"{counts.get('oversized_sent', 0):,} uploads with {args.oversize_mb} MiB fields, "
        f"{counts.get('register_refused', 0):,} Register calls with a {args.oversize_mb} MiB "
        f"fingerprint refused, {counts.get('accepted', 0)} accepted, "
        f"{counts.get('other_errors', 0)} other errors"
    )
    ratio = calm["rounds_per_s"] / max(hot["rounds_per_s"], 1e-9)
    print(
        f"honest throughput: calm / hostile = {ratio:.2f}x (target <= 2x); "
        f"RSS during the hostile phase {hot['rss_start']:.1f} -> {hot['rss_end']:.1f} MiB"
    )
    with (out / "results.jsonl").open("a") as f:
        for r in rows:
            f.write(json.dumps({**r, "args": vars(args), "hostile": counts}) + "\n")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--role", choices=["main", "server", "hostile"], default="main")
    p.add_argument("--clients", type=int, default=3, help="honest clients")
    p.add_argument("--calm-s", type=float, default=40.0, help="length of the calm phase")
    p.add_argument("--refused", type=int, default=10_000, help="refused uploads to provoke")
    p.add_argument("--stalled", type=int, default=60, help="stalled upload streams per wave")
    p.add_argument("--stall-gap", type=float, default=5.0, help="seconds between stalled waves")
    p.add_argument("--oversized", type=int, default=100, help="uploads with multi-MB fields")
    p.add_argument("--oversize-mb", type=int, default=3, help="MiB per oversized field")
    p.add_argument("--idle-s", type=float, default=5.0, help="upload_idle_timeout_s")
    p.add_argument("--hostile-max-s", type=float, default=300.0, help="cap on the hostile phase")
    p.add_argument("--out", default=str(OUT))
    # internal (the server and hostile processes)
    p.add_argument("--config")
    p.add_argument("--certs")
    p.add_argument("--run-dir")
    p.add_argument("--port-file")
    p.add_argument("--port")
    p.add_argument("--progress")
    return p.parse_args()


if __name__ == "__main__":
    a = parse()
    if a.role == "server":
        serve(a)
    elif a.role == "hostile":
        asyncio.run(hostile(a))
    else:
        main(a)
