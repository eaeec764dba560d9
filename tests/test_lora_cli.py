"""LoRA from the command line, as a user runs it: pretrain a base file, then `fedfleet run` with
`[model] lora_*` keys fine-tunes it, writing a model file that holds the adapters only."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedfleet.models import pretrain_base, split_for_pretraining
from fedfleet.runs import load_model_vector
from fedfleet.runs._build import build_federation, build_run, load_task_for
from fedfleet.runs._config import load_config, validate_config
from fedfleet.runs._models import model_factory

pytest.importorskip("peft")

BASE_RUN = {
    "seed": 2,
    "data": {"name": "digits", "num_clients": 6},
    "model": {"name": "mlp", "hidden": [32]},
}


def test_cli_fine_tunes_a_pretrained_base_with_ffa_lora_and_saves_only_b(tmp_path):
    cfg = validate_config(BASE_RUN)
    task = load_task_for(cfg)
    pooled, _ = split_for_pretraining(build_federation(cfg, task), [0, 1])
    pretrain_base(model_factory(cfg.model, task), pooled, tmp_path / "base.safetensors", epochs=2)
    args = [
        "--set", "seed=2", "--set", "rounds=3", "--set", "data.num_clients=6",
        "--set", "model.hidden=[32]", "--set", "model.base=base.safetensors",
        "--set", "model.lora_rank=4", "--set", "model.lora_alpha=8",
        "--set", "model.lora_freeze_a=true", "--set", "strategy.clients_per_round=4",
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "fedfleet", "run", *args, "--out", "out"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "sequential (fine-tuning a base model)" in " ".join((proc.stdout + proc.stderr).split())
    saved = load_file(str(tmp_path / "out" / "model.safetensors"))
    # the adapter's name is the digest of the base and settings (lora.adapter_name)
    adapter = sorted(saved)[0].split(".")[-2]
    assert sorted(saved) == [
        f"base_model.model.1.lora_B.{adapter}.weight",
        f"base_model.model.3.lora_B.{adapter}.weight",
    ]
    assert [saved[k].shape for k in sorted(saved)] == [(32, 4), (10, 4)]
    # the same config through the Python API gives the same bits (the base path made absolute)
    resolved = load_config(tmp_path / "out" / "config.toml")
    assert resolved.model.lora_rank == 4 and resolved.model.lora_freeze_a is True
    model = resolved.model.model_copy(update={"base": str(tmp_path / "base.safetensors")})
    pieces = build_run(resolved.model_copy(update={"model": model}))
    layout = pieces.simulation.trainer.layout
    assert sorted(layout.names) == sorted(saved)  # same base bytes, another path: same names
    vector = load_model_vector(tmp_path / "out" / "model.safetensors", layout)
    assert np.array_equal(pieces.simulation.run(3).vector, vector)


def _play(path):
    """A tiny play in tiny Shakespeare's format: four roles, each with its own refrain."""
    lines = {
        "ALICE": "the cat sat on the mat.",
        "BOB": "a rat ran to the barn.",
        "CORA": "the dog dug in the bog.",
        "DAN": "my hen sat in the pen.",
    }
    speeches = [f"{role}:\n{line}\n{line}" for _ in range(8) for role, line in lines.items()]
    path.write_text("\n\n".join(speeches) + "\n")
    return path


def test_cli_fine_tunes_a_transformer_base_on_shakespeare_roles_with_ffa_lora(tmp_path):
    _play(tmp_path / "input.txt")
    base_run = {
        "seed": 3,
        "data": {"name": "shakespeare", "path": str(tmp_path), "window": 8, "min_windows": 32},
        "model": {"name": "transformer", "d_model": 16, "heads": 2, "layers": 1},
    }
    cfg = validate_config(base_run)
    task = load_task_for(cfg)
    assert task.user_ids == ("ALICE", "BOB", "CORA", "DAN")
    pooled, _ = split_for_pretraining(build_federation(cfg, task), [0])
    base = pretrain_base(model_factory(cfg.model, task), pooled, tmp_path / "base.safetensors")
    base_bytes = base.read_bytes()
    args = [
        "--set", "seed=3", "--set", "rounds=2", "--set", "data.name=shakespeare",
        "--set", f"data.path={tmp_path}", "--set", "data.window=8",
        "--set", "data.min_windows=32", "--set", "model.name=transformer",
        "--set", "model.d_model=16", "--set", "model.heads=2", "--set", "model.layers=1",
        "--set", "model.base=base.safetensors", "--set", "model.lora_rank=8",
        "--set", "model.lora_freeze_a=true", "--set", "strategy.clients_per_round=3",
        "--set", "client.epochs=1", "--set", "client.lr=0.05",
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "fedfleet", "run", *args, "--out", "out"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    saved = load_file(str(tmp_path / "out" / "model.safetensors"))
    adapter = sorted(saved)[0].split(".")[-2]
    # only B of every Linear travels and is saved: 8 (rank) columns against each output
    shapes = {
        k.removeprefix("base_model.model.").split(".lora_B.")[0]: v.shape for k, v in saved.items()
    }
    assert shapes == {
        "blocks.0.qkv": (48, 8),
        "blocks.0.proj": (16, 8),
        "blocks.0.fc1": (64, 8),
        "blocks.0.fc2": (16, 8),
        "head": (97, 8),
    }
    assert all(f".lora_B.{adapter}.weight" in k for k in saved)
    assert any(np.abs(v).sum() > 0 for v in saved.values())  # B left zero: it trained
    assert base.read_bytes() == base_bytes  # the base file is read, never written
