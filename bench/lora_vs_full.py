"""LoRA against full fine-tuning of a pretrained base: uplink bytes, accuracy, seconds per round.

The practitioner's setting at small scale: a base model pretrained centrally on some clients'
data (``split_for_pretraining`` + ``pretrain_base``), then fine-tuned federatedly by the other
clients, who all hold the base file. Four ways to fine-tune it, same data, seed and rounds:

- ``full``: every weight trains and travels (FedAvg of the whole model);
- ``lora-r{r}``: LoRA adapters (peft) on every Linear layer, A and B train and travel, averaged
  separately (so the aggregate is not the mean of the clients' products B_k A_k);
- ``ffa-r{r}``: FFA-LoRA, A frozen at its seeded init, only B trains and travels (exact).

Uplink bytes are the frames a client's update really is (``encode_results`` -> ``to_frame``, what
the process executor ships; gRPC sends the same float32 bytes in chunks). Seconds per round are
medians over rounds, compared as ratios to ``full`` measured in the same run. The product gap is
``||mean_k(B_k A_k) - mean(B) mean(A)||_F / ||mean_k(B_k A_k)||_F`` over each round's clients
(:func:`fedfleet.models.product_gap`), averaged over rounds.

Each variant runs at each learning rate of ``--lrs`` (LoRA's best rate is usually higher than full
fine-tuning's); the table reports each variant's best by final test accuracy.

    python bench/lora_vs_full.py [--rounds 30] [--hidden 512 512] [--lrs 0.05 0.2 0.5]

Writes ``bench/results/lora_vs_full.md`` and prints it.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fedfleet._codec import encode_results, to_frame
from fedfleet.client import EvalResult, FitInstructions, FitResult, TorchTrainer
from fedfleet.data import ArrayDataset, TaskData
from fedfleet.models import (
    LoraFactors,
    adapter_factors,
    from_base,
    pretrain_base,
    product_gap,
    split_for_pretraining,
)
from fedfleet.params import Layout
from fedfleet.runs._build import build_federation, build_strategy, load_task_for
from fedfleet.runs._config import RunConfig, validate_config
from fedfleet.runs._models import model_factory
from fedfleet.sim import Simulation
from fedfleet.strategies import ClientResult

HERE = Path(__file__).resolve().parent


@dataclass
class Recording:
    """The trainer, keeping each fit's adapter factors (LoRA; by the global vector it started
    from, i.e. by round; diverged fits, which the server rejects, left out) and one update's
    frame size."""

    inner: TorchTrainer
    lora: bool
    factors: dict[bytes, list[dict[str, LoraFactors]]] = field(default_factory=dict)
    frame_bytes: int = 0

    @property
    def layout(self) -> Layout:
        return self.inner.layout

    def init_vector(self, seed: int) -> np.ndarray:
        return self.inner.init_vector(seed)

    def fit(
        self, vector: np.ndarray, data: ArrayDataset, instructions: FitInstructions, seed: int
    ) -> FitResult:
        result = self.inner.fit(vector, data, instructions, seed)
        if not self.frame_bytes:
            message = encode_results([ClientResult(result)], with_state=False)
            self.frame_bytes = len(to_frame(message))
        if self.lora and np.isfinite(result.vector).all():
            state = self.layout.unflatten(result.vector)
            round_key = hashlib.sha256(vector.tobytes()).digest()
            self.factors.setdefault(round_key, []).append(adapter_factors(self.inner.model, state))
        return result

    def evaluate(self, vector: np.ndarray, data: ArrayDataset) -> EvalResult:
        return self.inner.evaluate(vector, data)


def run_variant(
    args: argparse.Namespace, base: Path, lr: float, rank: int | None, freeze_a: bool
) -> dict:
    lora = {} if rank is None else {"lora_rank": rank, "lora_alpha": 2 * rank}
    if freeze_a:
        lora["lora_freeze_a"] = True
    cfg = validate_config(
        {
            "seed": args.seed,
            "data": {"name": "digits", "num_clients": args.clients},
            "model": {"name": "mlp", "hidden": args.hidden, "base": str(base), **lora},
            "strategy": {"name": "fedavg", "clients_per_round": args.per_round},
            "client": {"epochs": args.epochs, "batch_size": 16, "lr": lr},
        }
    )
    task = load_task_for(cfg)
    _, fine_tune = split_for_pretraining(build_federation(cfg, task), range(args.pretrain))
    trainer = Recording(TorchTrainer(model_factory(cfg.model, task)), lora=rank is not None)
    strategy = build_strategy(cfg, trainer.inner, fine_tune.num_clients)
    sim = Simulation(trainer, fine_tune, strategy, seed=args.seed, eval_every=1)
    start = time.perf_counter()
    result = sim.run(args.rounds)
    wall = time.perf_counter() - start
    rounds = list(trainer.factors.values())
    gap = statistics.mean(product_gap(r) for r in rounds) if rounds else float("nan")
    return {
        "params": trainer.layout.size,
        "frame": trainer.frame_bytes,
        "acc": statistics.mean(h["test_accuracy"] for h in result.history[-3:]),
        "round_s": statistics.median(h["round_time_s"] for h in result.history),
        "wall": wall,
        "gap": gap,
        "lr": lr,
        "rejected": sum(h["num_rejected"] for h in result.history),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--hidden", type=int, nargs="+", default=[512, 512])
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--pretrain", type=int, default=5, help="clients 0..N-1 pretrain the base")
    p.add_argument("--per-round", type=int, default=5)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--ranks", type=int, nargs="+", default=[4, 8])
    p.add_argument("--lrs", type=float, nargs="+", default=[0.05, 0.2, 0.5])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=HERE / "results" / "lora_vs_full.md")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    cfg = validate_config(
        {
            "seed": args.seed,
            "data": {"name": "digits", "num_clients": args.clients},
            "model": {"name": "mlp", "hidden": args.hidden},
        }
    )
    task = load_task_for(cfg)
    pooled, _ = split_for_pretraining(build_federation(cfg, task), range(args.pretrain))
    with tempfile.TemporaryDirectory() as tmp:
        base = pretrain_base(
            model_factory(cfg.model, task), pooled, Path(tmp) / "base.safetensors", epochs=10
        )
        plain = TorchTrainer(model_factory(cfg.model, task))
        base_acc = plain.evaluate(_vector(cfg, task, base), task.test).accuracy
        variants: list[tuple[str, int | None, bool]] = [("full", None, False)]
        for r in args.ranks:
            variants += [(f"lora-r{r}", r, False), (f"ffa-r{r}", r, True)]
        best: dict[str, dict] = {}
        for name, rank, freeze in variants:
            for lr in args.lrs:
                row = run_variant(args, base, lr, rank, freeze)
                print(f"{name} lr={lr}: {row}", flush=True)
                if name not in best or row["acc"] > best[name]["acc"]:
                    best[name] = row
    full = best["full"]
    lines = [
        f"Digits MLP 64-{'-'.join(map(str, args.hidden))}-10 ({full['params']:,} weights), "
        f"{args.clients} clients (Dirichlet 0.5); base pretrained centrally on clients "
        f"0..{args.pretrain - 1} (test accuracy {base_acc:.4f}), fine-tuned on the other "
        f"{args.clients - args.pretrain}, {args.per_round} a round, {args.rounds} rounds, "
        f"E = {args.epochs}, batch 16, best lr of {args.lrs}.",
        "",
        "| variant | lr | weights sent | uplink bytes / round | x fewer than full | "
        "test acc (last 3) | acc - full | s / round (ratio to full) | product gap |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in best.items():
        up = row["frame"] * args.per_round
        gap = "-" if np.isnan(row["gap"]) else f"{row['gap']:.3g}"
        lines.append(
            f"| {name} | {row['lr']} | {row['params']:,} | {up:,} | "
            f"{full['frame'] / row['frame']:.1f} | {row['acc']:.4f} | "
            f"{row['acc'] - full['acc']:+.4f} | {row['round_s']:.3f} "
            f"({row['round_s'] / full['round_s']:.2f}) | {gap} |"
        )
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


def _vector(cfg: RunConfig, task: TaskData, base: Path) -> np.ndarray:
    """The base file's weights as the plain model's flat vector."""
    module = from_base(model_factory(cfg.model, task), base)()
    return Layout.from_module(module).flatten(module.state_dict())


if __name__ == "__main__":
    main(sys.argv[1:])
