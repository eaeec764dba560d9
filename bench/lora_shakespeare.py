"""LoRA against full fine-tuning of the causal transformer on Shakespeare roles.

Issue 17's benchmark: a base transformer pretrained centrally on the first ``--pretrain-share`` of
the speaking roles (the earlier plays), then fine-tuned federatedly by the other roles (later
plays: a real shift of vocabulary and style), who all hold the base file. Variants, with the same
data, seed, rounds and local work (K clients a round, ``tau`` Adam steps of batch B each):

- ``full``: every weight trains and travels;
- ``lora-r{r}``: LoRA (peft) on the blocks' ``qkv``, ``proj``, ``fc1``, ``fc2`` linears, A and B
  travel and are averaged separately;
- ``ffa-r{r}``: FFA-LoRA on the same linears, A frozen, only B trains and travels (exact mean);
- ``lora-attn-r{r}`` / ``ffa-attn-r{r}``: the same on the attention projections only.

Uplink bytes are a client's real update frame (``encode_results`` -> ``to_frame``, see
``bench/lora_vs_full.py``) times K. Seconds per round are medians over rounds, with ratios to
``full`` from the same run. Accuracy and perplexity are next-character, on every
``--test-stride``-th held-out window of the fine-tuning roles (never seen by the base); the
base's own numbers there are the row ``base``. Each variant runs at each rate of its grid
(``--lrs-full``, ``--lrs-lora``) and the table keeps its best.

    python bench/lora_shakespeare.py [--d-model 128] [--layers 2] [--rounds 8]

Writes ``bench/results/lora_shakespeare.md`` and prints it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import fedfleet as ff
from fedfleet.data import Subset
from fedfleet.data._text import VOCAB_SIZE, shakespeare
from fedfleet.models import (
    LoraSpec,
    causal_transformer,
    from_base,
    lora_factory,
    pretrain_base,
    product_gap,
    split_for_pretraining,
)
from lora_vs_full import Recording

HERE = Path(__file__).resolve().parent
DEFAULT_DIR = HERE.parents[1] / "shared" / "data" / "shakespeare"
BLOCK = ("qkv", "proj", "fc1", "fc2")
ATTENTION = ("qkv", "proj")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DIR)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--window", type=int, default=80)
    p.add_argument("--pretrain-share", type=float, default=0.5)
    p.add_argument("--pretrain-steps", type=int, default=400)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--clients", type=int, default=5, help="K clients a round")
    p.add_argument("--tau", type=int, default=10, help="local Adam steps a client and round")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--lrs-full", type=float, nargs="+", default=[1e-3, 3e-3])
    p.add_argument("--lrs-lora", type=float, nargs="+", default=[3e-3, 1e-2])
    p.add_argument("--test-stride", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=HERE / "results" / "lora_shakespeare.md")
    args = p.parse_args(argv)
    if not (args.data / "input.txt").exists():
        print(f"tiny Shakespeare not found in {args.data}; pass --data", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    per_client = args.tau * args.batch
    task = shakespeare(
        args.data,
        window=args.window,
        test_stride=args.test_stride,
        min_windows=int(np.ceil(per_client / 0.8)) + 1,
    )
    fed = ff.Federation(task, task.natural_train, task.natural_test, test_from_task_test=True)
    n_pre = int(args.pretrain_share * fed.num_clients)
    pooled, fine = split_for_pretraining(fed, range(n_pre))
    fine_test = task.test.subset(np.concatenate(task.natural_test[n_pre:]))

    def build() -> torch.nn.Module:
        return causal_transformer(VOCAB_SIZE, args.window, args.d_model, args.layers, args.heads)

    rng = np.random.default_rng(args.seed)
    pre_data = Subset(pooled, rng.choice(len(pooled), args.pretrain_steps * args.batch))
    print(
        f"{fed.num_clients} roles: {n_pre} pretrain ({len(pooled)} windows, "
        f"{len(pre_data)} used), {fine.num_clients} fine-tune; {len(fine_test)} test windows",
        file=sys.stderr,
        flush=True,
    )
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        base = pretrain_base(
            build, pre_data, Path(tmp) / "base.safetensors", epochs=1, lr=3e-3,
            batch_size=args.batch, optimizer="adam", seed=args.seed,
        )  # fmt: skip
        pre_s = time.perf_counter() - t0
        full_factory = from_base(build, base, seed=args.seed)
        plain = ff.TorchTrainer(full_factory, optimizer="adam")
        ev = plain.evaluate(plain.init_vector(args.seed), fine_test)
        rows["base"] = {"acc": ev.accuracy, "ppl": float(np.exp(ev.loss)), "params": 0}
        variants: list[tuple[str, LoraSpec | None]] = [("full", None)]
        for name, targets in (("", BLOCK), ("-attn", ATTENTION)):
            for kind, freeze in (("lora", False), ("ffa", True)):
                spec = LoraSpec(
                    rank=args.rank, alpha=2 * args.rank, targets=targets, freeze_a=freeze,
                    seed=args.seed, base=base,
                )  # fmt: skip
                variants.append((f"{kind}{name}-r{args.rank}", spec))
        for name, spec in variants:
            factory = full_factory if spec is None else lora_factory(build, spec)
            for lr in args.lrs_full if spec is None else args.lrs_lora:
                row = _run(args, factory, spec is not None, fine, fine_test, lr)
                print(f"{name} lr={lr}: {row}", file=sys.stderr, flush=True)
                if name not in rows or row["acc"] > rows[name]["acc"]:
                    rows[name] = row
    text = _table(args, fed.num_clients, n_pre, len(fine_test), pre_s, rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


def _run(
    args: argparse.Namespace,
    factory,
    lora: bool,
    fine: ff.Federation,
    test: Subset,
    lr: float,
) -> dict:
    trainer = Recording(ff.TorchTrainer(factory, optimizer="adam"), lora=lora)
    local = ff.FitInstructions(epochs=1, batch_size=args.batch, lr=lr, max_steps=args.tau)
    strategy = ff.FedAvg(clients_per_round=args.clients, local=local)
    sim = ff.Simulation(trainer, fine, strategy, seed=args.seed, eval_every=args.rounds)
    result = sim.run(args.rounds)
    ev = trainer.evaluate(result.vector, test)
    rounds = list(trainer.factors.values())
    return {
        "params": trainer.layout.size,
        "frame": trainer.frame_bytes,
        "acc": ev.accuracy,
        "ppl": float(np.exp(ev.loss)),
        "round_s": statistics.median(h["round_time_s"] for h in result.history),
        "gap": statistics.mean(product_gap(r) for r in rounds) if rounds else float("nan"),
        "lr": lr,
    }


def _table(
    args: argparse.Namespace, roles: int, n_pre: int, n_test: int, pre_s: float, rows: dict
) -> str:
    full = rows["full"]
    lines = [
        f"Causal transformer d_model {args.d_model}, {args.layers} blocks, {args.heads} heads, "
        f"context {args.window} ({full['params']:,} weights); {roles} roles: base pretrained "
        f"centrally on the first {n_pre} ({args.pretrain_steps} Adam steps of {args.batch}, "
        f"{pre_s:.0f} s), fine-tuned federatedly by the other {roles - n_pre}, {args.clients} "
        f"a round, {args.rounds} rounds, {args.tau} Adam steps of {args.batch} each; LoRA rank "
        f"{args.rank}, alpha {2 * args.rank}; best lr of {args.lrs_full} (full) / "
        f"{args.lrs_lora} (LoRA); test: {n_test} held-out windows of the fine-tuning roles.",
        "",
        "| variant | lr | weights sent | uplink bytes / round | x fewer than full | "
        "next-char acc | acc - full | perplexity | s / round (ratio to full) | product gap |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        if name == "base":
            lines.append(
                f"| base (no fine-tuning) | - | - | - | - | {row['acc']:.4f} | "
                f"{row['acc'] - full['acc']:+.4f} | {row['ppl']:.2f} | - | - |"
            )
            continue
        up = row["frame"] * args.clients
        gap = "-" if np.isnan(row["gap"]) else f"{row['gap']:.3g}"
        lines.append(
            f"| {name} | {row['lr']} | {row['params']:,} | {up:,} | "
            f"{full['frame'] / row['frame']:.1f} | {row['acc']:.4f} | "
            f"{row['acc'] - full['acc']:+.4f} | {row['ppl']:.2f} | {row['round_s']:.2f} "
            f"({row['round_s'] / full['round_s']:.2f}) | {gap} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
