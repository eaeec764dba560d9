"""Round-loop regression check: fedfleet's whole-round speed on the peers' workloads, this tree
against an older commit's tree, alternating in one run.

Each run is the fedfleet child of ``bench/peers_side_by_side.py`` (``child_fedfleet``: the
peers' data, IID partition, model and cohorts through ``Simulation`` with the executor
``choose_executor`` picks, i.e. what ``fedfleet run`` does) in a fresh process whose
``PYTHONPATH`` is ``<tree>/src``; the child checks that ``fedfleet.__file__`` lies under that
tree (and prints it) before it runs. The child code is this tree's bench script for both trees,
so both trees run the same workload through the same public API (``Simulation``, ``FedAvg``,
``build_trainer``, ``choose_executor``). Runs go round-robin per workload (old, new, old, new,
...), so background load hits both alike.

Per workload it prints the median over runs of each run's steady round time
(``peers_side_by_side.steady``: the median of rounds 2..R, i.e. round 2 alone for c's R=2;
the evaluation after the last round is left out, as there), the ratio new/old of
those medians, the median of the paired ratios (run i of new over run i of old) and whether
the ratio is within 5% (new <= 1.05 x old). JSON lines (one per run) are appended to
``bench/out/loop_regression.jsonl``.

    git worktree add ../base174 174a06a
    python bench/loop_regression.py --old ../base174 [--workloads b a c s]
        [--repeats 3] [--repeats-slow 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
NEW = HERE.parent
SIDE = HERE / "peers_side_by_side.py"
OUT = HERE / "out" / "loop_regression.jsonl"
BOUND = 1.05


def child(tree: Path, peers: Path, rest: list[str]) -> None:
    """Run ``peers_side_by_side.child_fedfleet`` with fedfleet imported from ``tree/src``."""
    import fedfleet

    where = Path(fedfleet.__file__).resolve()
    src = (tree / "src").resolve()
    print(f"fedfleet.__file__ = {where}", flush=True)
    if not where.is_relative_to(src):
        raise SystemExit(f"fedfleet was imported from {where}, not from {src}")
    sys.path.insert(0, str(HERE))
    import peers_side_by_side as side  # imports fedfleet.strategies._base: already this tree's

    side.child_fedfleet(rest, peers)


def git_rev(tree: Path) -> str:
    out = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "-C", str(tree), "status", "--porcelain", "--", "src"],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() + ("+dirty src" if dirty.stdout.strip() else "")


def run_one(tree: Path, workload: str, peers: Path, timeout: float) -> dict[str, Any] | None:
    sys.path.insert(0, str(HERE))
    import peers_side_by_side as side

    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(tree)]
    cmd += ["--peers-dir", str(peers), *side.WORKLOADS[workload], "--label", "fedfleet"]
    if workload == "s":
        cmd += ["--task", "synthetic"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(tree / "src")}
    try:
        proc = subprocess.run(
            cmd, cwd=peers, capture_output=True, text=True, timeout=timeout, env=env
        )
    except subprocess.TimeoutExpired:
        print(f"!!! {tree} ({workload}) timed out after {timeout:.0f} s", file=sys.stderr)
        return None
    lines = [x for x in proc.stdout.splitlines() if x.startswith('{"impl"')]
    where = [x for x in proc.stdout.splitlines() if x.startswith("fedfleet.__file__")]
    if proc.returncode or not lines:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-8:])
        print(f"!!! {tree} ({workload}) failed (rc={proc.returncode}):\n{tail}", file=sys.stderr)
        return None
    rec: dict[str, Any] = json.loads(lines[-1])
    rec["fedfleet_file"] = where[0].split("=", 1)[1].strip() if where else None
    print(f"    {where[0] if where else 'fedfleet.__file__ not printed'}", flush=True)
    return rec


def table(recs: list[dict[str, Any]]) -> str:
    sys.path.insert(0, str(HERE))
    from peers_side_by_side import steady

    out = [
        "| workload | runs old / new | old steady s (median; runs) | new steady s (median; runs) "
        "| new / old | paired ratios (median; range) | within 5% |",
        "|---|---|---|---|---|---|---|",
    ]
    for workload in dict.fromkeys(r["workload"] for r in recs):
        by: dict[str, list[float]] = {"old": [], "new": []}
        for r in recs:
            if r["workload"] == workload:
                by[r["tree_role"]].append(steady(r))
        if not by["old"] or not by["new"]:
            continue
        old, new = statistics.median(by["old"]), statistics.median(by["new"])
        pairs = [n / o for o, n in zip(by["old"], by["new"], strict=False)]
        ratio = new / old
        ok = "yes" if ratio <= BOUND else f"no ({(ratio - 1) * 100:+.1f}%)"
        out.append(
            f"| {workload} | {len(by['old'])} / {len(by['new'])} | {old:.4g} "
            f"({', '.join(f'{x:.4g}' for x in by['old'])}) | {new:.4g} "
            f"({', '.join(f'{x:.4g}' for x in by['new'])}) | {ratio:.3f} | "
            f"{statistics.median(pairs):.3f}; {min(pairs):.3f}-{max(pairs):.3f} | {ok} |"
        )
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--peers-dir", type=Path, default=HERE.parents[1] / "shared" / "peers")
    p.add_argument("--old", type=Path, default=HERE.parents[1] / "base174", help="the old tree")
    p.add_argument("--new", type=Path, default=NEW, help="the new tree (default: this one)")
    p.add_argument("--workloads", nargs="+", default=["b", "a", "c", "s"])
    p.add_argument("--repeats", type=int, default=3, help="runs of each tree for a and b")
    p.add_argument("--repeats-slow", type=int, default=2, help="runs of each tree for c and s")
    p.add_argument("--timeout", type=float, default=1500, help="seconds per run")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--table", type=Path, help="only print the tables (one a session) of a file")
    args, rest = p.parse_known_args()
    if args.child is not None:
        child(args.child, args.peers_dir, rest)
        return 0
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.table:
        lines = args.table.read_text().splitlines()
        every = [json.loads(x) for x in lines if x.startswith("{")]
        for session in dict.fromkeys(r["session"] for r in every):
            ones = [r for r in every if r["session"] == session]
            revs = {r["tree_role"]: r["rev"] for r in ones}
            print(f"\n{session}: old = {revs.get('old')}, new = {revs.get('new')}")
            print(table(ones))
        return 0
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    revs = {role: git_rev(tree) for role, tree in trees.items()}
    session = time.strftime("%Y-%m-%dT%H:%M:%S")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(f"old: {trees['old']} ({revs['old']})\nnew: {trees['new']} ({revs['new']})")
    print(f"load average at start: {os.getloadavg()}", flush=True)
    recs: list[dict[str, Any]] = []
    for workload in args.workloads:
        repeats = args.repeats_slow if workload in ("c", "s") else args.repeats
        for rep in range(repeats):
            for role in ("old", "new"):
                load = os.getloadavg()[0]
                print(
                    f">>> ({workload}) [{rep + 1}/{repeats}] {role} (load {load:.2f})", flush=True
                )
                rec = run_one(trees[role], workload, args.peers_dir, args.timeout)
                if rec is None:
                    continue
                rec.update(
                    workload=workload,
                    session=session,
                    repeat=rep,
                    tree_role=role,
                    tree=str(trees[role]),
                    rev=revs[role],
                    loadavg_1m_before=load,
                )
                recs.append(rec)
                with args.out.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
                print(
                    f"    total {rec['total_s']:.3f} s, rounds {rec['round_s']}, "
                    f"acc {rec['test_acc']}",
                    flush=True,
                )
    print(f"\nload average at end: {os.getloadavg()}")
    print(f"old = {revs['old']}, new = {revs['new']}\n")
    print(table(recs))
    print(f"\nJSON lines appended to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
