"""Local training speed of the language models on CPU: bf16 autocast, torch.compile, vmap cohort.

For the character LSTM and the causal transformer, each against the plain float32 eager loop
(``TorchTrainer``, Adam, batch B, ``--steps`` steps on real Shakespeare windows) measured in the
same run, one torch thread:

- ``bf16``: ``TorchTrainer(precision="bf16")``: seconds per step (ratio to fp32) and the
  held-out loss after the same steps (difference to fp32); "n/a" where the CPU has no kernel;
- ``compile``: the trainer's module under ``torch.compile``: the first fit (compiling) and the
  steady-state seconds per step of a second fit, and after how many steps the compile time is
  paid back (never, where steady-state is not faster);
- ``vmap``: K clients' steps as one ``torch.func.vmap(grad(...))`` over stacked weights against
  K sequential ``grad`` calls (the transformer; vmap has no rule for the fused LSTM kernel).

Windows are fixed-length (``TokenWindows``: every sample is ``window`` tokens, no padding), so
batching needs no padding or packing: there is nothing to strip.

    python bench/lm_cpu_speed.py [--steps 20] [--batch 16] [--no-compile]

Writes ``bench/results/lm_cpu_speed.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import fedfleet as ff
from fedfleet.data import ArrayDataset, Subset
from fedfleet.data._text import VOCAB_SIZE, shakespeare
from fedfleet.errors import ConfigError
from fedfleet.models import causal_transformer, char_lstm

HERE = Path(__file__).resolve().parent
DEFAULT_DIR = HERE.parents[1] / "shared" / "data" / "shakespeare"


def _fit(
    trainer: ff.TorchTrainer, data: ArrayDataset, test: ArrayDataset, args: argparse.Namespace
) -> tuple[float, float]:
    """Seconds per step (the fastest of ``args.repeats`` fits, after one warm-up fit) and
    held-out loss after ``args.steps`` steps from the seed-0 weights."""
    local = ff.FitInstructions(epochs=1, batch_size=args.batch, lr=3e-3, max_steps=args.steps)
    start = trainer.init_vector(0)
    trainer.fit(start, data, local, seed=1)  # warm-up: oneDNN primitives, allocator
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        fit = trainer.fit(start, data, local, seed=1)
        times.append((time.perf_counter() - t0) / fit.num_steps)
    return min(times), trainer.evaluate(fit.vector, test).loss


def _compiled(
    trainer: ff.TorchTrainer, data: ArrayDataset, test: ArrayDataset, args: argparse.Namespace
) -> tuple[float, float, float]:
    """Seconds of the first (compiling) fit, then :func:`_fit`'s numbers."""
    local = ff.FitInstructions(epochs=1, batch_size=args.batch, lr=3e-3, max_steps=args.steps)
    t0 = time.perf_counter()
    trainer.fit(trainer.init_vector(0), data, local, seed=1)
    first = time.perf_counter() - t0
    step_s, loss = _fit(trainer, data, test, args)
    return first, step_s, loss


def _vmap(build: Callable[[], nn.Module], data: ArrayDataset, args: argparse.Namespace) -> dict:
    """K clients' gradient steps: one vmap over stacked weights vs K sequential calls."""
    from torch.func import functional_call, grad, stack_module_state, vmap

    models = []
    for k in range(args.cohort):
        torch.manual_seed(k)
        models.append(build())
    params, _ = stack_module_state(models)
    template = models[0]

    def loss(p: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(template, p, (x,)), y)

    x = torch.as_tensor(data.x[: args.cohort * args.batch]).reshape(args.cohort, args.batch, -1)
    y = torch.as_tensor(data.y[: args.cohort * args.batch]).reshape(args.cohort, args.batch)
    stepped = vmap(grad(loss))
    reps = max(1, args.steps // 4)

    def timed(fn: Callable[[], object]) -> float:
        fn()  # warm-up
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t0) / reps

    def sequential() -> None:
        for k in range(args.cohort):
            grad(loss)({n: v[k] for n, v in params.items()}, x[k], y[k])

    try:
        vmapped = timed(lambda: stepped(params, x, y))
    except Exception as e:
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}
    seq = timed(sequential)
    return {"cohort": args.cohort, "sequential_s": seq, "vmap_s": vmapped, "speedup": seq / vmapped}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DIR)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--cohort", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2, help="timed fits (the fastest counts)")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--out", type=Path, default=HERE / "results" / "lm_cpu_speed.json")
    args = p.parse_args(argv)
    if not (args.data / "input.txt").exists():
        print(f"tiny Shakespeare not found in {args.data}; pass --data", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    task = shakespeare(args.data, test_stride=400)
    rng = np.random.default_rng(0)
    data = Subset(task.train, rng.choice(len(task.train), args.steps * args.batch, replace=False))
    test = Subset(task.test, np.arange(min(512, len(task.test))))
    models: dict[str, Callable[[], nn.Module]] = {
        "char-lstm 256": lambda: char_lstm(VOCAB_SIZE),
        "transformer d128 L2": lambda: causal_transformer(VOCAB_SIZE, 80, 128, 2, 4),
    }
    results: dict[str, dict] = {}
    for name, build in models.items():
        row: dict = {}
        fp32_s, fp32_loss = _fit(ff.TorchTrainer(build, optimizer="adam"), data, test, args)
        row["fp32"] = {"step_s": fp32_s, "loss": fp32_loss}
        try:
            bf16 = ff.TorchTrainer(build, optimizer="adam", precision="bf16")
            s, loss = _fit(bf16, data, test, args)
            row["bf16"] = {
                "step_s": s,
                "ratio": s / fp32_s,
                "loss": loss,
                "dloss": loss - fp32_loss,
            }
        except ConfigError as e:
            row["bf16"] = {"error": str(e)[:160]}
        if not args.no_compile:
            trainer = ff.TorchTrainer(build, optimizer="adam")
            trainer.model = torch.compile(trainer.model)  # type: ignore[assignment]
            first, steady, loss = _compiled(trainer, data, test, args)
            compile_s = first - steady * args.steps
            gain = fp32_s - steady
            row["compile"] = {
                "compile_s": compile_s,
                "step_s": steady,
                "ratio": steady / fp32_s,
                "dloss": loss - fp32_loss,
                "break_even_steps": compile_s / gain if gain > 0 else None,
            }
        if "transformer" in name:
            row["vmap"] = _vmap(build, data, args)
        results[name] = row
        print(name, json.dumps(row), file=sys.stderr, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"steps": args.steps, "batch": args.batch, **results}) + "\n")
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
