"""Whole-round simulation speed, fedfleet side by side with its peers, measured in one run.

The peers are the scripts of ``../shared/peers/`` (their README defines the workloads and the
measurements): the centralized tight loop over the same sample-gradient steps (``limit_torch``:
1 thread, 2 threads, 2 forked processes), the tutorial-style sequential PyTorch loop
(``plain_torch``), Apple's pfl-research (``pfl_sim``) and Flower's simulation engine
(``flower_sim``), each run with its own virtual environment. fedfleet runs the very same
workload here, in a child process of this script, through its public API: the peers' data
generator, IID partition and model (``common.py``), the cohorts ``common.sample_clients``
picks (the ones ``limit_torch`` and ``plain_torch`` train; pfl and Flower sample their own),
FedAvg with SGD lr 0.01, B=32, E=1, R rounds, then the test evaluation; a
:class:`fedfleet.sim.Simulation` with the trainer and executor
:func:`fedfleet.runs._build.choose_executor` picks (``fedfleet``: what ``fedfleet run`` does,
one lane per core for the MLP), and the same on one lane, one core (``fedfleet_1core``). It
prints the peers' JSON line with
the same ``t0`` (after imports, data and the torch warm-up), ``round_s``, ``startup_s`` and
``total_s``; the final evaluation is timed apart and left out of the last round, as the peers
do.

Workloads:

    a  MLP 784-128-10, N=100 x 600 samples, K=10, R=5
    b  MLP 784-128-10, N=1,000 x 60 samples, K=100, R=3 (many small clients)
    c  FedAvg CNN, N=100, K=10, R=2 (~4 s a round)
    s  Synthetic(1,1) (fedfleet's generator, FedProx's recipe), multinomial logistic regression
       60->10, 1,000 devices (natural partition), K=100, E=20, B=10, lr 0.01, R=3, against
       ``plain_logreg``: the tutorial loop of ``plain_torch.py`` (deepcopy, DataLoader over a
       Subset, state_dict averaging) on the same data and cohorts, written here

Every repeat runs every implementation once (round-robin, so background load hits all alike);
Flower, slow to start, runs ``--flower-repeats`` times (default 1). The table shows medians over
repeats: ``steady_s`` is the median of rounds 2..R (both rounds' mean for R=2, as the peers'
``per_round_s``), ratios are fedfleet's time over the peer's. JSON lines are appended to
``bench/out/peers_side_by_side.jsonl``.

    python bench/peers_side_by_side.py [--workloads a b c s] [--repeats 3] [--impls ...]
    python bench/peers_side_by_side.py --table bench/out/peers_side_by_side.jsonl
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedfleet.strategies import plain_client_fit

HERE = Path(__file__).resolve().parent
PEERS = HERE.parents[1] / "shared" / "peers"
OUT = HERE / "out" / "peers_side_by_side.jsonl"
VENVS = {
    "torch": Path("/tmp/peers-venv-torch/bin/python"),
    "pfl": Path("/tmp/peers-venv-pfl/bin/python"),
    "flwr": Path("/tmp/peers-venv-flwr/bin/python"),
}
WORKLOADS: dict[str, list[str]] = {
    "a": ["-N", "100", "-K", "10", "-R", "5"],
    "b": ["-N", "1000", "-K", "100", "-R", "3"],
    "c": ["-N", "100", "-K", "10", "-R", "2", "--model", "cnn"],
    "s": ["-N", "1000", "-K", "100", "-R", "3", "--local-epochs", "20", "--batch-size", "10"],
}
# label -> (interpreter, script and flags); "self" runs this file's child mode in fedfleet's venv
IMPLS: dict[str, tuple[str, list[str]]] = {
    "limit_torch": ("torch", ["limit_torch.py", "--threads", "1"]),
    "limit_torch_t2": ("torch", ["limit_torch.py", "--threads", "2"]),
    "limit_torch_2proc": ("torch", ["limit_torch.py", "--procs", "2"]),
    "plain_torch": ("torch", ["plain_torch.py"]),
    "pfl_sim": ("pfl", ["pfl_sim.py", "--threads", "1"]),
    "flower_sim": ("flwr", ["flower_sim.py", "--client-cpus", "1"]),
    "fedfleet": ("self", ["--child", "fedfleet"]),
    "fedfleet_1core": ("self", ["--child", "fedfleet", "--lanes", "1"]),
    "plain_logreg": ("self", ["--child", "plain_logreg"]),
}
DEFAULT_IMPLS = {
    "s": ["fedfleet", "plain_logreg"],
}
PEER_IMPLS = [k for k in IMPLS if k != "plain_logreg"]
ONCE = {"flower_sim"}  # slow to start: --flower-repeats runs


# ---------------------------------------------------------------------------- child mode


def _common(peers: Path) -> Any:
    sys.path.insert(0, str(peers))
    import common  # the peers' shared workload definition

    return common


@dataclass(frozen=True)
class PeersCohorts:
    """FedAvg whose cohorts are ``common.sample_clients``'s, so fedfleet trains the clients that
    ``limit_torch`` and ``plain_torch`` train in the same round (rounds count from 0 there)."""

    inner: Any  # FedAvg
    num_clients: int
    clients_per_round: int
    seed: int
    sample: Any  # common.sample_clients

    def init(self, vector: Any) -> Any:
        return self.inner.init(vector)

    def configure_fit(self, rnd: int, vector: Any, state: Any, clients: Any, rng: Any) -> Any:
        chosen = self.sample(self.num_clients, self.clients_per_round, rnd - 1, self.seed)
        return [(int(c), self.inner.local) for c in chosen]

    client_fit = staticmethod(plain_client_fit)  # plain local training: vectorisable

    def aggregate_fit(self, rnd: int, vector: Any, state: Any, updates: Any) -> Any:
        return self.inner.aggregate_fit(rnd, vector, state, updates)


class _TimedEvaluate:
    """The trainer, with the seconds spent in ``evaluate`` counted (the engine evaluates inside
    the last round; the peers evaluate after it)."""

    def __init__(self, trainer: Any) -> None:
        self._trainer = trainer
        self.seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trainer, name)

    def evaluate(self, vector: Any, data: Any) -> Any:
        start = time.perf_counter()
        try:
            return self._trainer.evaluate(vector, data)
        finally:
            self.seconds += time.perf_counter() - start


def _synthetic_task(args: Any) -> Any:
    from fedfleet.data import synthetic

    return synthetic(1.0, 1.0, num_devices=args.num_clients, seed=args.seed)


def child_fedfleet(argv: Sequence[str], peers: Path) -> None:
    common = _common(peers)
    p = common.build_parser("fedfleet")
    p.add_argument("--lanes", type=int, default=None, help="choose_executor's lanes (auto)")
    p.add_argument("--task", choices=["peers", "synthetic"], default="peers")
    p.add_argument("--executor", default="auto", help="RunConfig.executor (default auto)")
    args = p.parse_args(argv)
    import numpy as np

    from fedfleet.client import FitInstructions
    from fedfleet.data import ArrayDataset, TaskData
    from fedfleet.runs import RunConfig

    try:
        from fedfleet.runs._build import choose_executor
    except ModuleNotFoundError:  # a tree from before the private module names (loop_regression)
        from fedfleet.runs.build import choose_executor  # type: ignore[no-redef]
    from fedfleet.sim import Federation, Simulation
    from fedfleet.strategies import FedAvg

    if args.task == "synthetic":
        task = _synthetic_task(args)
        parts: Sequence[Any] = task.natural_train
        name = "logreg"
    else:
        xtr, ytr, xte, yte = common.load_data(args)
        shape: tuple[int, ...] = (784,) if args.model == "mlp" else (1, 28, 28)
        task = TaskData(
            "peers-synthetic",
            ArrayDataset(xtr.reshape(-1, *shape), ytr),
            ArrayDataset(xte.reshape(-1, *shape), yte),
            10,
            shape,
        )
        parts = common.iid_partition(len(xtr), args.num_clients, args.seed)
        name = args.model
    args.model = name
    threads = common.set_threads(max(1, args.threads))
    common.warm_torch()
    rss = common.RssSampler()
    t0 = time.time()

    config = RunConfig.model_validate(
        {
            "seed": args.seed,
            "threads": threads,
            "executor": args.executor,
            "model": {"name": name},
            "client": {"epochs": args.local_epochs, "batch_size": args.batch_size, "lr": args.lr},
        }
    )
    local = FitInstructions(epochs=args.local_epochs, batch_size=args.batch_size, lr=args.lr)
    strategy = PeersCohorts(
        FedAvg(clients_per_round=args.clients_per_round, local=local),
        args.num_clients,
        args.clients_per_round,
        args.seed,
        common.sample_clients,
    )
    try:
        from fedfleet.runs._build import build_trainer
    except ModuleNotFoundError:  # a tree from before the private module names (loop_regression)
        from fedfleet.runs.build import build_trainer  # type: ignore[no-redef]

    positional: list[Any] = [config, build_trainer(config, task), strategy]
    if "task" in inspect.signature(choose_executor).parameters:  # 174a06a's took the task too
        positional.insert(1, task)
    trainer, executor, why = choose_executor(*positional, lanes=args.lanes)
    timed = _TimedEvaluate(trainer)
    sim = Simulation(
        timed,
        Federation(task, parts),
        strategy,
        seed=args.seed,
        eval_every=0,
        executor=executor,
    )
    starts: list[float] = []
    rounds: list[float] = []
    evaluated = [0.0]

    def on_round(record: dict[str, Any]) -> None:
        starts.append(time.time() - record["round_time_s"])
        rounds.append(record["round_time_s"] - (timed.seconds - evaluated[0]))
        evaluated[0] = timed.seconds

    try:
        result = sim.run(args.rounds, on_round=on_round)
    finally:
        close = getattr(executor, "close", None)
        if close is not None:
            close()  # process workers, Ray
    t_end = time.time()
    t_first = starts[0] if starts else t_end
    common.emit(
        "fedfleet",
        args,
        t0,
        rounds,
        t_first,
        result.final.get("test_accuracy", float("nan")),
        rss.stop_mb(),
        t_end=t_end,
        executor=why,
        torch_threads=threads,
        lanes=getattr(trainer, "workers", 1),
        eval_s=round(timed.seconds, 4),
    )
    np.asarray(result.vector)  # keep the result alive until the line is out


def child_plain_logreg(argv: Sequence[str], peers: Path) -> None:
    """``plain_torch.py``'s tutorial loop on the Synthetic(1,1) devices and a linear model."""
    common = _common(peers)
    args = common.build_parser("plain_logreg").parse_args(argv)
    import torch
    from torch.utils.data import DataLoader, Subset, TensorDataset

    task = _synthetic_task(args)
    args.model = "logreg"
    threads = common.set_threads(args.threads)
    common.warm_torch()
    rss = common.RssSampler()
    t0 = time.time()

    torch.manual_seed(args.seed)
    train_ds = TensorDataset(torch.from_numpy(task.train.x), torch.from_numpy(task.train.y))
    client_ds = [Subset(train_ds, p.tolist()) for p in task.natural_train]
    global_model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(60, 10))
    loss_fn = torch.nn.CrossEntropyLoss()
    round_times = []
    t_first = time.time()
    for rnd in range(args.rounds):
        tr = time.time()
        states, weights = [], []
        for cid in common.sample_clients(args.num_clients, args.clients_per_round, rnd, args.seed):
            local = copy.deepcopy(global_model)
            local.train()
            opt = torch.optim.SGD(local.parameters(), lr=args.lr)
            loader = DataLoader(client_ds[cid], batch_size=args.batch_size, shuffle=True)
            for _ in range(args.local_epochs):
                for xb, yb in loader:
                    opt.zero_grad()
                    loss = loss_fn(local(xb), yb)
                    loss.backward()
                    opt.step()
            states.append(local.state_dict())
            weights.append(len(client_ds[cid]))
        total = float(sum(weights))
        avg = {
            k: sum(s[k] * (w / total) for s, w in zip(states, weights, strict=True))
            for k in states[0]
        }
        global_model.load_state_dict(avg)
        round_times.append(time.time() - tr)
    acc = common.evaluate(
        global_model, torch.from_numpy(task.test.x), torch.from_numpy(task.test.y)
    )
    common.emit(
        "plain_logreg", args, t0, round_times, t_first, acc, rss.stop_mb(), torch_threads=threads
    )


# ---------------------------------------------------------------------------- driver


def run_one(label: str, workload: str, peers: Path, timeout: float) -> dict[str, Any] | None:
    venv, flags = IMPLS[label]
    if venv == "self":
        cmd = [sys.executable, str(Path(__file__).resolve()), "--peers-dir", str(peers), *flags]
        if workload == "s" and label != "plain_logreg":
            cmd += ["--task", "synthetic"]
    else:
        cmd = [str(VENVS[venv]), *flags]
    cmd += [*WORKLOADS[workload], "--label", label]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        proc = subprocess.run(
            cmd, cwd=peers, capture_output=True, text=True, timeout=timeout, env=env
        )
    except subprocess.TimeoutExpired:
        print(f"!!! {label} ({workload}) timed out after {timeout:.0f} s", file=sys.stderr)
        return None
    lines = [x for x in proc.stdout.splitlines() if x.startswith('{"impl"')]
    if proc.returncode or not lines:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-8:])
        print(f"!!! {label} ({workload}) failed (rc={proc.returncode}):\n{tail}", file=sys.stderr)
        return None
    rec: dict[str, Any] = json.loads(lines[-1])
    return rec


def steady(rec: dict[str, Any]) -> float:
    rounds = rec["round_s"][1:] or rec["round_s"]
    return float(statistics.median(rounds))


def _median(recs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in recs))


def summarize(recs: list[dict[str, Any]]) -> str:
    """Markdown: per workload, medians per implementation and fedfleet's ratios and targets."""
    out = []
    for workload in dict.fromkeys(r["workload"] for r in recs):
        impls: dict[str, list[dict[str, Any]]] = {}
        for r in recs:
            if r["workload"] == workload:
                impls.setdefault(r["impl"], []).append(r)
        loads = [x for r in recs if r["workload"] == workload for x in r["loadavg_1m_start_end"]]
        first = next(iter(impls.values()))[0]
        out.append(
            f"\n#### ({workload}) {first['model']}, N={first['num_clients']}, "
            f"K={first['clients_per_round']}, R={first['rounds']}  "
            f"(load average 1 min during the runs: {min(loads):.2f}-{max(loads):.2f})\n"
        )
        out.append(
            "| impl | runs | total_s | steady_s | round1_s | startup_s | test_acc | peak_rss_mb "
            "| round_s (median run) |"
        )
        out.append("|---|---|---|---|---|---|---|---|---|")
        med: dict[str, tuple[float, float]] = {}
        for name, rs in impls.items():
            tot, sd = _median(rs, "total_s"), float(statistics.median(steady(r) for r in rs))
            med[name] = (tot, sd)
            r1 = float(statistics.median(r["round_s"][0] for r in rs))
            typical = sorted(rs, key=lambda r: r["total_s"])[len(rs) // 2]["round_s"]
            out.append(
                f"| {name} | {len(rs)} | {tot:.3f} | {sd:.4f} | {r1:.3f} | "
                f"{_median(rs, 'startup_s'):.3f} | {_median(rs, 'test_acc'):.4f} | "
                f"{_median(rs, 'peak_rss_mb'):.0f} | {' '.join(f'{x:.3g}' for x in typical)} |"
            )
        out.append("")
        out += _ratios(workload, med)
        out += _targets(workload, med)
    return "\n".join(out)


# workload -> (text, peer, "steady" or "total", upper bound on fedfleet time / peer time)
TARGETS: dict[str, list[tuple[str, str, str, float]]] = {
    "a": [("<= 0.8x the 1-process limit, steady", "limit", "steady", 0.8)],
    "b": [
        ("<= 0.75x the 1-process limit, steady", "limit", "steady", 0.75),
        (">= 2x faster than pfl-research, steady", "pfl_sim", "steady", 1 / 2),
        (">= 30x faster than Flower, steady", "flower_sim", "steady", 1 / 30),
        (
            ">= 50x faster than Flower, total (start-up included)",
            "flower_sim",
            "total",
            1 / 50,
        ),
    ],
    "c": [("<= 0.9x the 2-thread limit, steady", "limit_torch_t2", "steady", 0.9)],
    "s": [(">= 20x faster than the plain loop, steady", "plain_logreg", "steady", 1 / 20)],
}


def _targets(workload: str, med: dict[str, tuple[float, float]]) -> list[str]:
    lines = [
        "",
        "| target | fedfleet variant | fedfleet / peer | bound | met |",
        "|---|---|---|---|---|",
    ]
    limits = [n for n in ("limit_torch", "limit_torch_t2") if n in med]
    for text, peer, kind, bound in TARGETS.get(workload, []):
        if peer == "limit":
            peer = min(limits, key=lambda n: med[n][1]) if limits else ""
        if peer not in med:
            continue
        for variant in ("fedfleet", "fedfleet_1core"):
            if variant not in med:
                continue
            i = 1 if kind == "steady" else 0
            ratio = med[variant][i] / med[peer][i]
            met = "yes" if ratio <= bound else f"no (by {ratio / bound:.2f}x)"
            lines.append(f"| {text} | {variant} | {ratio:.3f} | {bound:.3f} | {met} |")
    return lines


def _ratios(workload: str, med: dict[str, tuple[float, float]]) -> list[str]:
    limits = [n for n in ("limit_torch", "limit_torch_t2") if n in med]
    lines = ["| fedfleet variant | vs | steady ratio | total ratio |", "|---|---|---|---|"]
    refs: list[tuple[str, str]] = []
    if limits:
        best = min(limits, key=lambda n: med[n][1])
        refs.append((f"limit, 1 process ({best})", best))
    for name in ("limit_torch_t2", "limit_torch_2proc", "plain_torch", "plain_logreg"):
        if name in med:
            refs.append((name, name))
    refs += [(n, n) for n in ("pfl_sim", "flower_sim") if n in med]
    for variant in ("fedfleet", "fedfleet_1core"):
        if variant not in med:
            continue
        tot, sd = med[variant]
        for text, ref in refs:
            rt, rs = med[ref]
            lines.append(
                f"| {variant} | {text} | {sd / rs:.3f}x ({rs / sd:.1f}x faster) | "
                f"{tot / rt:.3f}x ({rt / tot:.1f}x faster) |"
            )
    return lines


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().split()[1]
        gib = f"{int(mem) / 2**20:.0f} GiB"
    except OSError:
        gib = "?"
    import torch

    return (
        f"{os.cpu_count()} CPUs ({cpu}), {gib} RAM, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, torch {torch.__version__} (fedfleet's venv)"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", choices=["fedfleet", "plain_logreg"], help=argparse.SUPPRESS)
    p.add_argument("--peers-dir", type=Path, default=PEERS)
    p.add_argument("--workloads", nargs="+", default=["b", "a", "c", "s"], choices=WORKLOADS)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--repeats-slow", type=int, default=1, help="repeats for workloads c and s")
    p.add_argument("--flower-repeats", type=int, default=1)
    p.add_argument("--impls", nargs="+", default=None, choices=sorted(IMPLS))
    p.add_argument("--timeout", type=float, default=300, help="seconds per run")
    p.add_argument("--timeout-slow", type=float, default=1500, help="per run of workload s")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--table", type=Path, help="only print the table of a JSON-lines file")
    args, rest = p.parse_known_args()
    if args.child == "fedfleet":
        child_fedfleet(rest, args.peers_dir)
        return 0
    if args.child == "plain_logreg":
        child_plain_logreg(rest, args.peers_dir)
        return 0
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.table:
        lines = args.table.read_text().splitlines()
        print(summarize([json.loads(x) for x in lines if x.startswith("{")]))
        return 0
    missing = [str(v) for v in VENVS.values() if not v.exists()]
    if missing:
        print(f"missing peer venvs (see {args.peers_dir}/setup_venvs.sh): {missing}")
    session = time.strftime("%Y-%m-%dT%H:%M:%S")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    recs: list[dict[str, Any]] = []
    print(f"machine: {machine()}\nload average at start: {os.getloadavg()}", flush=True)
    for workload in args.workloads:
        names = args.impls or DEFAULT_IMPLS.get(workload, PEER_IMPLS)
        names = [n for n in names if workload == "s" or n != "plain_logreg"]
        repeats = args.repeats_slow if workload in ("c", "s") else args.repeats
        for rep in range(repeats):
            for label in names:
                if label in ONCE and rep >= args.flower_repeats:
                    continue
                load = os.getloadavg()[0]
                print(
                    f">>> ({workload}) [{rep + 1}/{repeats}] {label} (load {load:.2f})", flush=True
                )
                limit = args.timeout_slow if workload == "s" else args.timeout
                rec = run_one(label, workload, args.peers_dir, limit)
                if rec is None:
                    continue
                rec.update(workload=workload, session=session, repeat=rep)
                recs.append(rec)
                with args.out.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
                print(
                    f"    total {rec['total_s']:.3f} s, rounds {rec['round_s']}, "
                    f"acc {rec['test_acc']}",
                    flush=True,
                )
    print(f"\nmachine: {machine()}")
    print(f"load average at end: {os.getloadavg()}")
    print(summarize(recs))
    print(f"\nJSON lines appended to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
